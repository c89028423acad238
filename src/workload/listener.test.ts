import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { chmod, lstat, mkdtemp, readdir, readFile, readlink, rm, stat, symlink, unlink, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { isAgentIdError } from '../common/errors.js';
import { silentLogger } from '../common/logger.js';
import { closePidfd, type PeerCredentials } from '../attest/peercred.js';
import { asUser, clientArgv, ensureTestUser, firstLine, type TestUser, killAll } from '../attest/testing.js';
import { listenUnixWithPeerCreds, type UnixListener } from './listener.js';

const [major = 0, minor = 0] = release().split('.').map((n) => parseInt(n, 10));
const kernelHasPeerPidfd = major > 6 || (major === 6 && minor >= 5);

let dir: string;
let user: TestUser;
const children: ChildProcess[] = [];
const listeners: UnixListener[] = [];
let counter = 0;

beforeAll(async () => {
  user = ensureTestUser('agentid-test-u1');
  dir = await mkdtemp(join(tmpdir(), 'agentid-listen-'));
  await chmod(dir, 0o755);
});

afterEach(async () => {
  await killAll(children);
  for (const l of listeners.splice(0)) await l.close();
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function freshPath(name = 's.sock'): string {
  return join(dir, `t${++counter}`, name);
}

interface Conn {
  socket: net.Socket;
  creds: PeerCredentials;
}

async function listen(path: string, mode = 0o666, onConnection?: (c: Conn) => void): Promise<UnixListener> {
  const l = await listenUnixWithPeerCreds(path, {
    mode,
    logger: silentLogger(),
    onConnection: (socket, creds) => onConnection?.({ socket, creds }),
  });
  listeners.push(l);
  return l;
}

/** A listener whose connections are queued for the test to take with next(). */
async function collecting(path: string, mode: number): Promise<{ listener: UnixListener; next: () => Promise<Conn> }> {
  const queued: Conn[] = [];
  const waiting: ((c: Conn) => void)[] = [];
  const listener = await listen(path, mode, (c) => {
    const w = waiting.shift();
    if (w) w(c);
    else queued.push(c);
  });
  const next = () => {
    const c = queued.shift();
    return c ? Promise.resolve(c) : new Promise<Conn>((r) => waiting.push(r));
  };
  return { listener, next };
}

function client(path: string, as?: TestUser): ChildProcess {
  const argv = clientArgv(path);
  const { command, args } = as ? asUser(as, argv) : { command: argv[0]!, args: argv.slice(1) };
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  return child;
}


/** How many pidfds this process holds open. */
async function openPidfdCount(): Promise<number> {
  let n = 0;
  for (const fd of await readdir('/proc/self/fd')) {
    if ((await readlink(`/proc/self/fd/${fd}`).catch(() => '')) === 'anon_inode:[pidfd]') n++;
  }
  return n;
}

describe('listenUnixWithPeerCreds', () => {
  it('creates the directory, sets the mode, and hands each connection its kernel credentials', async () => {
    const path = freshPath();
    const { listener, next } = await collecting(path, 0o666);
    expect(listener.path).toBe(path);
    expect((await lstat(path)).isSocket()).toBe(true);
    expect((await stat(path)).mode & 0o777).toBe(0o666);
    // No temporary bind directory is left behind.
    expect((await readdir(join(path, '..'))).filter((n) => n.startsWith('.agentid-'))).toEqual([]);

    const conn = next();
    const c = client(path, user);
    expect(await firstLine(c)).toBe('connected');
    expect((await conn).creds).toMatchObject({ pid: c.pid, uid: user.uid, gid: user.gid });
  });

  it('an 0600 socket refuses an unprivileged client; 0666 admits it', async () => {
    const admin = freshPath('admin.sock');
    await listen(admin, 0o600);
    expect((await stat(admin)).mode & 0o777).toBe(0o600);
    expect(await firstLine(client(admin, user))).toBe('error:EACCES');
    expect(await firstLine(client(admin))).toBe('connected'); // root

    const open = freshPath('open.sock');
    await listen(open, 0o666);
    expect(await firstLine(client(open, user))).toBe('connected');
  });

  it('replaces a stale socket left by a crashed server', async () => {
    const path = freshPath();
    await listen(join(path, '..', 'placeholder.sock')); // creates the directory
    const crashed = spawn(process.execPath, ['-e', "require('net').createServer().listen(process.argv[1], () => process.kill(process.pid, 'SIGKILL'))", path]);
    await once(crashed, 'exit');
    expect((await lstat(path)).isSocket()).toBe(true);

    const { next } = await collecting(path, 0o666);
    const c = client(path);
    expect(await firstLine(c)).toBe('connected');
    expect((await next()).creds.pid).toBe(c.pid);
  });

  it('refuses to take over a socket a running server answers on, and leaves it working', async () => {
    const path = freshPath();
    const first = await listen(path);
    const err = await listen(path).catch((e: unknown) => e);
    expect(isAgentIdError(err, 'failed_precondition')).toBe(true);
    expect((err as Error).message).toBe(`socket ${path} is in use by a running server`);
    expect(await firstLine(client(first.path))).toBe('connected');
  });

  it.each([
    { fixture: 'regular-file-at-path', make: (p: string) => writeFile(p, 'precious') },
    { fixture: 'symlink-at-path', make: (p: string) => symlink('/etc/passwd', p) },
  ])('$fixture: refused and left untouched', async ({ make }) => {
    const path = freshPath();
    await listen(join(path, '..', 'placeholder.sock'));
    await make(path);
    const before = await lstat(path);
    const err = await listen(path).catch((e: unknown) => e);
    expect(isAgentIdError(err, 'failed_precondition')).toBe(true);
    expect((err as Error).message).toMatch(/not a socket/);
    const after = await lstat(path);
    expect(after.ino).toBe(before.ino);
    if (before.isSymbolicLink()) expect(await readlink(path)).toBe('/etc/passwd');
    else expect(await readFile(path, 'utf8')).toBe('precious');
  });

  it('close() removes its socket but not one a successor put at the same path', async () => {
    const path = freshPath();
    const first = await listen(path);
    await first.close();
    await expect(lstat(path)).rejects.toThrow(/ENOENT/);

    const old = await listen(path);
    await unlink(path);
    const successor = await listen(path);
    await old.close();
    expect((await lstat(path)).isSocket()).toBe(true);
    expect(await firstLine(client(successor.path))).toBe('connected');
  });

  it('a handler that throws gets the connection destroyed', async () => {
    const path = freshPath();
    await listen(path, 0o666, () => {
      throw new Error('handler bug');
    });
    const c = client(path);
    expect(await firstLine(c)).toBe('connected');
    const [code] = (await once(c, 'exit')) as [number | null];
    expect(code).toBe(0); // the client exits on 'close'
  });

  it.skipIf(!kernelHasPeerPidfd)('holds one descriptor per connection; a pidfd opened later still names the connector', async () => {
    const path = freshPath();
    const { next } = await collecting(path, 0o666);
    const pidfdsBefore = await openPidfdCount();
    const pending = next();
    const c = client(path);
    await firstLine(c);
    const conn = await pending;
    expect(await openPidfdCount()).toBe(pidfdsBefore);
    const pidfd = conn.creds.openPidfd!()!;
    try {
      expect(await readlink(`/proc/self/fd/${pidfd}`)).toBe('anon_inode:[pidfd]');
      expect(await readFile(`/proc/self/fdinfo/${pidfd}`, 'utf8')).toMatch(new RegExp(`^Pid:\\s+${c.pid}$`, 'm'));
    } finally {
      closePidfd(pidfd);
    }
    const closed = once(conn.socket, 'close');
    c.kill('SIGKILL');
    await closed;
    // Fails closed: the socket's descriptor number may already belong to another connection.
    expect(() => conn.creds.openPidfd!()).toThrow();
  });

  it('rejects a path too long for sockaddr_un', async () => {
    const err = await listen(join(dir, 'x'.repeat(120), 's.sock')).catch((e: unknown) => e);
    expect(isAgentIdError(err, 'invalid_argument')).toBe(true);
  });

  it('the default backlog absorbs a burst of connects while the event loop is busy; a small one does not', async () => {
    // The child connects N times while this process's event loop is blocked and cannot accept:
    // every connect beyond the backlog fails at once with EAGAIN.
    const burst = async (backlog: number | undefined) => {
      const path = freshPath();
      const l = await listenUnixWithPeerCreds(path, { mode: 0o666, backlog, logger: silentLogger(), onConnection: () => {} });
      listeners.push(l);
      const script = `
        const net = require('net'); const n = 1500; let ok = 0, eagain = 0, other = 0, done = 0; const socks = [];
        process.stdin.once('data', () => { for (let i = 0; i < n; i++) { const s = net.connect(process.argv[1]); socks.push(s);
          s.on('connect', () => { ok++; fin(); }); s.on('error', (e) => { e.code === 'EAGAIN' ? eagain++ : other++; fin(); }); } });
        function fin() { if (++done === n) { console.log(JSON.stringify({ ok, eagain, other })); process.exit(0); } }`;
      const child = spawn(process.execPath, ['-e', script, path], { stdio: ['pipe', 'pipe', 'inherit'] });
      children.push(child);
      await once(child, 'spawn');
      await new Promise((r) => setTimeout(r, 300)); // let the child load before the burst
      child.stdin!.write('go\n');
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 2000);
      return JSON.parse(await firstLine(child)) as { ok: number; eagain: number; other: number };
    };

    const small = await burst(64);
    expect(small.eagain).toBeGreaterThan(0);
    const large = await burst(undefined);
    expect(large).toEqual({ ok: 1500, eagain: 0, other: 0 });
  });
});
