import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { chmod, mkdtemp, readdir, readFile, readlink, rm } from 'node:fs/promises';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { isAgentIdError } from '../common/errors.js';
import { closePidfd, pidfdIsAlive, readPeerCredentials, type PeerCredentials } from './peercred.js';
import { asUser, clientArgv, ensureTestUser, firstLine, type TestUser, killAll } from './testing.js';

const [major = 0, minor = 0] = release().split('.').map((n) => parseInt(n, 10));
const kernelHasPeerPidfd = major > 6 || (major === 6 && minor >= 5);

interface Accepted {
  socket: net.Socket;
  creds?: PeerCredentials;
  error?: unknown;
}

let dir: string;
let server: net.Server;
let socketPath: string;
let waiting: ((a: Accepted) => void)[] = [];
const children: ChildProcess[] = [];
const pidfds: number[] = [];
let user: TestUser;

beforeAll(async () => {
  user = ensureTestUser('agentid-test-u1');
  dir = await mkdtemp(join(tmpdir(), 'agentid-peercred-'));
  await chmod(dir, 0o755); // the unprivileged test user must reach the socket
  socketPath = join(dir, 's.sock');
  server = net.createServer((socket) => {
    const accepted: Accepted = { socket };
    try {
      accepted.creds = readPeerCredentials(socket);
    } catch (err) {
      accepted.error = err;
    }
    waiting.shift()?.(accepted);
  });
  server.listen(socketPath);
  await once(server, 'listening');
  await chmod(socketPath, 0o666);
});

afterEach(async () => {
  await killAll(children);
  for (const fd of pidfds.splice(0)) closePidfd(fd);
});

afterAll(async () => {
  server.close();
  await rm(dir, { recursive: true, force: true });
});

function nextConnection(): Promise<Accepted> {
  return new Promise((r) => waiting.push(r));
}

async function connectFrom(argv: string[]): Promise<{ child: ChildProcess; accepted: Accepted }> {
  const [command, ...args] = argv as [string, ...string[]];
  const accepted = nextConnection();
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  expect(await firstLine(child)).toBe('connected');
  return { child, accepted: await accepted };
}


/** How many pidfds this process holds open. */
async function openPidfdCount(): Promise<number> {
  let n = 0;
  for (const fd of await readdir('/proc/self/fd')) {
    if ((await readlink(`/proc/self/fd/${fd}`).catch(() => '')) === 'anon_inode:[pidfd]') n++;
  }
  return n;
}

describe('readPeerCredentials', () => {
  it('reports the connecting process: pid, uid 0 and gid 0 for a root child', async () => {
    const { child, accepted } = await connectFrom(clientArgv(socketPath));
    expect(accepted.error).toBeUndefined();
    expect(accepted.creds).toMatchObject({ pid: child.pid, uid: 0, gid: 0 });
  });

  it('reports the uid and gid the kernel gave an unprivileged client (setpriv)', async () => {
    const { command, args } = asUser(user, clientArgv(socketPath));
    const { child, accepted } = await connectFrom([command, ...args]);
    expect(user.uid).not.toBe(0);
    // setpriv execs node in place, so the connecting process is the spawned PID.
    expect(accepted.creds).toMatchObject({ pid: child.pid, uid: user.uid, gid: user.gid });
  });

  it.skipIf(!kernelHasPeerPidfd)('opens, on demand, a pidfd for exactly the peer that stops being alive when it exits', async () => {
    const { child, accepted } = await connectFrom(clientArgv(socketPath));
    const pidfd = accepted.creds?.openPidfd?.();
    expect(pidfd).toBeTypeOf('number');
    pidfds.push(pidfd!);
    expect(await readlink(`/proc/self/fd/${pidfd}`)).toBe('anon_inode:[pidfd]');
    expect(await readFile(`/proc/self/fdinfo/${pidfd}`, 'utf8')).toMatch(new RegExp(`^Pid:\\s+${child.pid}$`, 'm'));
    expect(pidfdIsAlive(pidfd!)).toBe(true);

    child.kill('SIGKILL');
    await once(child, 'exit');
    expect(pidfdIsAlive(pidfd!)).toBe(false);

    pidfds.splice(pidfds.indexOf(pidfd!), 1);
    closePidfd(pidfd);
    await expect(readlink(`/proc/self/fd/${pidfd}`)).rejects.toThrow();
  });

  it.skipIf(!kernelHasPeerPidfd)('opens no pidfd at accept, and refuses to open one once the socket is closed', async () => {
    const pidfdsBefore = await openPidfdCount();
    const { accepted } = await connectFrom(clientArgv(socketPath));
    // The connection holds its socket and nothing else: no pidfd until someone attests.
    expect(await openPidfdCount()).toBe(pidfdsBefore);
    accepted.socket.destroy();
    expect(() => accepted.creds!.openPidfd!()).toThrow(/no open file descriptor/);
  });

  it.skipIf(!kernelHasPeerPidfd)('keeps a live peer alive while signals interrupt poll() (the CPU profiler\'s SIGPROF: EINTR)', async () => {
    const script = join(import.meta.dirname, '..', '..', 'test', 'support', 'pidfd-under-profiler.ts');
    const profDir = mkdtempSync(join(tmpdir(), 'agentid-prof-'));
    try {
      const out = await new Promise<string>((resolve, reject) => {
        const child = spawn(process.execPath, ['--cpu-prof', '--cpu-prof-interval', '1', '--cpu-prof-dir', profDir, '--import', 'tsx', script, '1000'], { stdio: ['ignore', 'pipe', 'inherit'] });
        let stdout = '';
        child.stdout!.on('data', (d) => (stdout += d));
        child.on('exit', (code) => (code === 0 ? resolve(stdout) : reject(new Error(`exit ${code}`))));
      });
      const result = JSON.parse(out.trim()) as { calls: number; notAlive: number };
      expect(result.calls).toBeGreaterThan(10_000);
      expect(result.notAlive).toBe(0);
    } finally {
      rmSync(profDir, { recursive: true, force: true });
    }
  });

  it('treats a closed or invalid pidfd as not alive', () => {
    expect(pidfdIsAlive(-1)).toBe(false);
    expect(pidfdIsAlive(1_000_000)).toBe(false);
  });

  it('refuses a TCP socket: the kernel has no peer process to report', async () => {
    const tcp = net.createServer();
    tcp.listen(0, '127.0.0.1');
    await once(tcp, 'listening');
    const port = (tcp.address() as net.AddressInfo).port;
    const accepted = new Promise<net.Socket>((r) => tcp.once('connection', r));
    const client = net.connect(port, '127.0.0.1');
    const socket = await accepted;
    try {
      let caught: unknown;
      try {
        readPeerCredentials(socket);
      } catch (err) {
        caught = err;
      }
      expect(isAgentIdError(caught, 'unavailable')).toBe(true);
      expect((caught as Error).message).toMatch(/no peer process/);
    } finally {
      client.destroy();
      socket.destroy();
      tcp.close();
    }
  });

  it('refuses a socket that is already destroyed', async () => {
    const { accepted } = await connectFrom(clientArgv(socketPath));
    accepted.socket.destroy();
    expect(() => readPeerCredentials(accepted.socket)).toThrow(/no open file descriptor/);
  });
});
