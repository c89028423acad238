import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { AdminClient } from '../../src/cli/admin-client.js';

export const REPO = join(import.meta.dirname, '..', '..');
export const CLI = join(REPO, 'src', 'cli', 'main.ts');

/** argv to run the agentid CLI from source. */
export const cliArgv = (...args: string[]) => [process.execPath, '--import', 'tsx', CLI, ...args];

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function runCli(args: string[], opts: { env?: NodeJS.ProcessEnv; wrap?: (argv: string[]) => { command: string; args: string[] } } = {}): Promise<CliResult> {
  const argv = cliArgv(...args);
  const { command, args: a } = opts.wrap ? opts.wrap(argv) : { command: argv[0]!, args: argv.slice(1) };
  return new Promise((resolve) => {
    const child = spawn(command, a, { cwd: REPO, env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('exit', (code) => resolve({ code: code ?? 128, stdout, stderr }));
  });
}

export function spawnCli(args: string[], env: NodeJS.ProcessEnv = {}): ChildProcess {
  const argv = cliArgv(...args);
  return spawn(argv[0]!, argv.slice(1), { cwd: REPO, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
}

/**
 * `agentid server --config FILE` as a child process (added to `children`), once it has written its
 * pid file in `dataDir` (its sockets are up); `output()` is what it printed so far.
 */
export async function startServerProcess(configFile: string, dataDir: string, children: ChildProcess[]): Promise<{ child: ChildProcess; admin: AdminClient; output: () => string }> {
  const child = spawnCli(['server', '--config', configFile]);
  children.push(child);
  let output = '';
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
  const pidFile = join(dataDir, 'server.pid');
  for (let i = 0; ; i++) {
    if (existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() === String(child.pid)) break;
    if (child.exitCode !== null || i > 1200) throw new Error(`server did not start: ${output}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return { child, admin: new AdminClient(join(dataDir, 'admin.sock')), output: () => output };
}
