/**
 * A real server process on a small tmpfs (the test runs as root): refusals cannot fill the disk,
 * issuance pauses below the free-space reserve and resumes by itself, a completely full disk is
 * survived, and a torn audit line left by a kill does not stop the next start.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync, statfsSync, writeSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { asUser, ensureTestUser, type TestUser } from '../src/attest/testing.js';
import { AdminClient } from '../src/cli/admin-client.js';
import { REPO, runCli, spawnCli } from './support/cli.js';

const td = 'disk.example';
const CALLS = join(import.meta.dirname, 'support', 'workload-calls.ts');
const MiB = 1024 * 1024;
const RESERVE = 4 * MiB;

const mnt = mkdtempSync(join(tmpdir(), 'agentid-tmpfs-'));
const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=24m,mode=0755', 'tmpfs', mnt]).status === 0;

const freeBytes = () => {
  const s = statfsSync(mnt);
  return s.bavail * s.bsize;
};

/** Fills the tmpfs until `leave` bytes are free (0: until ENOSPC). */
function fill(file: string, leave: number): void {
  const fd = openSync(file, 'a');
  const chunk = Buffer.alloc(64 * 1024, 0x61);
  try {
    for (;;) {
      const room = freeBytes() - leave;
      if (leave > 0 && room <= 0) break;
      try {
        writeSync(fd, chunk, 0, leave > 0 ? Math.min(chunk.length, room) : chunk.length);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === 'ENOSPC') break;
        throw err;
      }
    }
  } finally {
    closeSync(fd);
  }
}

function calls(argv: string[], user?: TestUser): Promise<{ codes: Record<string, number>; lastMessage: string }> {
  const full = [process.execPath, '--import', 'tsx', CALLS, ...argv];
  const { command, args } = user ? asUser(user, full) : { command: full[0]!, args: full.slice(1) };
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('exit', () => {
      try {
        resolve(JSON.parse(out.trim()));
      } catch {
        reject(new Error(`client failed: ${out} ${err}`));
      }
    });
  });
}

async function waitFor(check: () => boolean | Promise<boolean>, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe.skipIf(!mounted)('a full disk (tmpfs, real server process)', () => {
  const dataDir = join(mnt, 'data');
  const configFile = join(mnt, 'agentid.yaml');
  const socket = join(dataDir, 'workload.sock');
  const auditFile = join(dataDir, 'audit.log');
  const filler = join(mnt, 'filler');
  let server: ChildProcess | undefined;
  let serverLog = '';
  let stranger: TestUser;

  const start = async () => {
    serverLog = '';
    const child = spawnCli(['server', '--config', configFile, '--log-level', 'warn']);
    child.stderr!.on('data', (d) => (serverLog += d));
    child.stdout!.on('data', (d) => (serverLog += d));
    server = child;
    // server.pid is written once everything listens (a killed server's stale one names another pid).
    const pidFile = join(dataDir, 'server.pid');
    await waitFor(() => existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() === String(child.pid), 20_000, `the server to start: ${serverLog}`);
  };
  const stop = async (signal: NodeJS.Signals) => {
    const child = server!;
    server = undefined;
    if (child.exitCode !== null) return child.exitCode;
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    child.kill(signal);
    return exited;
  };
  const refusalLines = (uid: number) =>
    readFileSync(auditFile, 'utf8')
      .split('\n')
      .filter((l) => l.includes('"attestation.refused"'))
      .map((l) => JSON.parse(l))
      .filter((r) => r.uid === uid);

  beforeAll(async () => {
    stranger = ensureTestUser('agentid-test-flood');
    mkdirSync(dataDir, { mode: 0o711 });
    writeFileSync(configFile, [
      `trust_domain: ${td}`, `data_dir: ${dataDir}`,
      'admin:', '  admin_uids: [0]',
      'audit:', `  reserve_bytes: ${RESERVE}`, '  refusal_interval: 1s',
    ].join('\n'));
    await start();
    const admin = new AdminClient(join(dataDir, 'admin.sock'));
    try {
      await admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/root`, selectors: ['unix:uid:0'] } });
    } finally {
      admin.close();
    }
  });
  afterAll(async () => {
    if (server) await stop('SIGKILL');
    spawnSync('umount', [mnt]);
    rmSync(mnt, { recursive: true, force: true });
  });

  it('aggregates a flood of refusals from one uid into a few counted lines', async () => {
    const began = Date.now();
    const flood = await calls([socket, 'x509', '600'], stranger);
    const seconds = Math.ceil((Date.now() - began) / 1000);
    expect(flood.codes).toEqual({ permission_denied: 600 });
    // The first refusal at once, the rest summed per interval: a handful of lines for 600 refusals.
    await waitFor(() => refusalLines(stranger.uid).reduce((n, r) => n + (r.count ?? 1), 0) === 600, 10_000, 'the summary line');
    const lines = refusalLines(stranger.uid);
    // At most one line per 1 s interval (+ the first, + the interval still open), whatever the rate.
    expect(lines.length).toBeLessThanOrEqual(seconds + 3);
    expect(lines.length).toBeLessThan(200);
    expect(lines[0].count).toBeUndefined();
    expect(lines.slice(1).every((r) => r.count > 0)).toBe(true);
  });

  it('pauses issuance below the reserve with a clear error and resumes by itself when space returns', async () => {
    expect((await calls([socket, 'jwt', '1', 'https://before.example'])).codes).toEqual({ ok: 1 });
    fill(filler, RESERVE / 2);
    const paused = await calls([socket, 'jwt', '1', 'https://paused.example']);
    // (the client library reports RESOURCE_EXHAUSTED as retryable: unavailable)
    expect(paused.lastMessage).toMatch(/RESOURCE_EXHAUSTED: issuance paused: .* below the reserve of 4194304 bytes/);

    // Completely full: writes fail, the server keeps running and keeps its files whole.
    fill(filler, 0);
    expect((await calls([socket, 'x509', '50'], stranger)).codes).toEqual({ permission_denied: 50 });
    const admin = new AdminClient(join(dataDir, 'admin.sock'));
    try {
      await expect(admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/while-full`, selectors: ['unix:uid:12345'] } })).rejects.toBeDefined();
    } finally {
      admin.close();
    }
    expect(server!.exitCode).toBeNull();

    rmSync(filler);
    await waitFor(async () => (await calls([socket, 'jwt', '1', 'https://after.example'])).codes.ok === 1, 10_000, 'issuance to resume');
    expect(server!.exitCode).toBeNull();
    const verify = await runCli(['audit', 'verify', '--data-dir', dataDir]);
    expect(verify.code, verify.stdout + verify.stderr).toBe(0);
  });

  it('repairs a torn last audit line at the next start, on the record', async () => {
    await stop('SIGKILL');
    appendFileSync(auditFile, '{"seq":99999,"time":"2026-');
    await start();
    expect(server!.exitCode).toBeNull();
    const restarted = await calls([socket, 'jwt', '1', 'https://restarted.example']);
    expect(restarted.codes, restarted.lastMessage + serverLog).toEqual({ ok: 1 });
    expect(await stop('SIGTERM')).toBe(0);
    const verify = await runCli(['audit', 'verify', '--data-dir', dataDir]);
    expect(verify.code, verify.stdout + verify.stderr).toBe(0);
    const repaired = readFileSync(auditFile, 'utf8').split('\n').filter((l) => l.includes('"audit.repaired"')).map((l) => JSON.parse(l));
    expect(repaired).toEqual([expect.objectContaining({ removed_bytes: Buffer.byteLength('{"seq":99999,"time":"2026-') })]);
  });
});
