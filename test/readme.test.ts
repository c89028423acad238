/**
 * The README's quick start, run as written: the shell blocks under "Quick start", "Per-task
 * identities" and "Offline tools" are extracted from README.md and fed line by line to one bash
 * session, against a fresh directory. Two things differ from a user's terminal, neither in the
 * commands: `/tmp/` becomes this test's own temporary directory (so runs never collide), and
 * `npx agentid` runs the CLI from source (a PATH shim), so the test needs no build. `npm ci` is
 * skipped (the test suite runs after it). Long-running commands are handled as a user would: the
 * server runs in the background as written, `svid watch` is stopped after its first line.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO } from './support/cli.js';
import { makeTempDir } from './support/server.js';

const SECTIONS = [/^## Quick start/, /^### Per-task identities/, /^### Offline tools/];

/** Shell commands of the tested sections, continuation lines joined, comments kept (bash ignores them). */
export function quickStartCommands(readme: string): string[] {
  const commands: string[] = [];
  let inSection = false;
  let inBlock = false;
  let pending = '';
  for (const line of readme.split('\n')) {
    if (!inBlock && /^#{2,3} /.test(line)) inSection = SECTIONS.some((s) => s.test(line));
    if (inSection && line === '```sh') {
      inBlock = true;
      continue;
    }
    if (inBlock && line === '```') {
      inBlock = false;
      continue;
    }
    if (!inBlock || line.trim() === '' || /^\s*#/.test(line)) continue;
    if (line.endsWith('\\')) {
      pending += `${line.slice(0, -1)} `;
      continue;
    }
    commands.push(`${pending}${line}`.trim());
    pending = '';
  }
  return commands;
}

const readme = readFileSync(join(REPO, 'README.md'), 'utf8');
const commands = quickStartCommands(readme);
let tmp: string;
let bash: ChildProcessWithoutNullStreams;
let out = '';
let err = '';
const results: { command: string; code: number; stdout: string; stderr: string }[] = [];

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const childrenOf = (pid: number): number[] => {
  try {
    return execFileSync('pgrep', ['-P', String(pid)], { encoding: 'utf8' }).trim().split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
};
const cmdline = (pid: number) => {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
  } catch {
    return '';
  }
};

/** Runs one command in the session; resolves with its exit status and output. */
async function run(command: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const marker = `__readme_rc_${results.length}=`;
  const outStart = out.length;
  const errStart = err.length;
  bash.stdin.write(`${command}\necho "${marker}$?"\n`);
  if (/ svid watch /.test(` ${command} `)) {
    // Watch until the first line, then stop it as Ctrl-C would.
    for (let i = 0; i < 600 && !out.slice(outStart).includes('\n'); i++) await sleep(50);
    const watch = childrenOf(bash.pid!).find((p) => cmdline(p).includes('svid watch'));
    if (watch) process.kill(watch, 'SIGINT');
  }
  for (let i = 0; i < 1200 && !out.slice(outStart).includes(marker); i++) await sleep(50);
  const text = out.slice(outStart);
  const at = text.indexOf(marker);
  if (at < 0) throw new Error(`no result for: ${command}\n${err.slice(errStart)}`);
  const code = Number(/^\d+/.exec(text.slice(at + marker.length))?.[0]);
  return { code, stdout: text.slice(0, at), stderr: err.slice(errStart) };
}

beforeAll(async () => {
  tmp = makeTempDir('agentid-readme-');
  chmodSync(tmp, 0o700);
  // `npx agentid ...` runs the CLI from source; any other npx use goes to the real one.
  const bin = join(tmp, 'bin');
  mkdirSync(bin);
  const realNpx = execFileSync('sh', ['-c', 'command -v npx'], { encoding: 'utf8' }).trim();
  writeFileSync(join(bin, 'npx'), `#!/bin/sh\nif [ "$1" = agentid ]; then shift; exec "${process.execPath}" --import tsx "${join(REPO, 'src', 'cli', 'main.ts')}" "$@"; fi\nexec "${realNpx}" "$@"\n`, { mode: 0o755 });
  const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${bin}:${process.env.PATH}` };
  for (const name of Object.keys(env)) if (name.startsWith('AGENTID_') || name === 'SPIFFE_ENDPOINT_SOCKET') delete env[name];
  bash = spawn('bash', ['--norc', '--noprofile'], { cwd: REPO, env, stdio: ['pipe', 'pipe', 'pipe'] });
  bash.stdout.on('data', (d) => (out += d));
  bash.stderr.on('data', (d) => (err += d));
  for (const command of commands) {
    if (command === 'npm ci') continue;
    const local = command.replaceAll('/tmp/', `${tmp}/`);
    results.push({ command, ...(await run(local)) });
  }
}, 240_000);

afterAll(async () => {
  // The background jobs the README started (the server, `sleep 600`), then the shell.
  for (const pid of bash ? childrenOf(bash.pid!) : []) process.kill(pid, 'SIGTERM');
  await sleep(500);
  bash?.stdin.end();
  bash?.kill('SIGKILL');
  execFileSync('rm', ['-rf', tmp]);
});

describe('README quick start, as written', () => {
  it('extracts the commands of the three sections, one per line, no placeholders', () => {
    expect(commands.length).toBeGreaterThan(15);
    for (const c of commands) {
      expect(c, c).not.toMatch(/ \| task |pem\|jwks|\[--|<[a-z-]+>|\bDIR\b| D /);
    }
  });

  it('every command exits 0', () => {
    const failed = results.filter((r) => r.code !== 0).map((r) => `${r.command}\n  exit ${r.code}: ${r.stderr.trim()}`);
    expect(failed).toEqual([]);
  });

  it('the commands did what the README says', () => {
    const output = (prefix: string) => results.find((r) => r.command.startsWith(prefix))!;
    expect(output('npx agentid entry create').stdout.trim()).toMatch(/^\S+$/);
    expect(output('openssl verify').stdout).toMatch(/: OK/);
    expect(readdirSync(join(tmp, 'svid')).sort()).toEqual(['bundle.pem', 'crl.pem', 'svid.key', 'svid.pem']);
    expect(output('npx agentid run').stdout).toContain('spiffe://example.org/agent/coder/task/t-42');
    expect(output('npx agentid svid watch').stdout).toContain('spiffe://example.org/agent/builder');
    expect(output('npx agentid revocations list').stdout).toContain('spiffe://example.org/agent/coder/task/t-43');
    expect(output('npx agentid audit verify').stdout).toMatch(/^ok: \d+ records/);
    expect(output('npx agentid audit show').stdout).toContain('revocation.added');
    expect(JSON.parse(output('npx agentid bundle show --data-dir /tmp/agentid --format spiffe').stdout).spiffe_sequence).toBeGreaterThan(0);
  });
});
