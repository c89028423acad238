/**
 * The per-connection attestation cache with real processes on a real Unix socket: one full
 * attestation per connection while nothing changes, and a new one as soon as the connected
 * process executes another program or the account files change.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { chmod, copyFile, mkdir, mkdtemp, readlink, rm, rmdir, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../common/logger.js';
import { formatSelector } from '../spiffe/selector.js';
import { AttestationCache } from './attestation-cache.js';
import { Attestor, RECHECK_ALL, type Attestation, type RecheckNeeds } from './attestor.js';
import { cgroup2Mount } from './processes.js';
import { readPeerCredentials, type PeerCredentials } from './peercred.js';
import { readProcessRef } from './proc.js';
import { firstLine, killAll } from './testing.js';

const SLEEP = '/usr/bin/sleep';
/** Connects, keeps the socket across exec, and on a line from stdin becomes /usr/bin/sleep. */
const CONNECT_THEN_EXEC = [
  'import os, socket, sys',
  's = socket.socket(socket.AF_UNIX)',
  's.connect(sys.argv[1])',
  's.set_inheritable(True)',
  "print('connected', flush=True)",
  'sys.stdin.readline()',
  `os.execv('${SLEEP}', ['sleep', '600'])`,
].join('\n');

/** Some entry uses path: or sha256: selectors; nothing depends on the cgroup or on account names. */
const NOTHING_ELSE: RecheckNeeds = { executable: true, cgroup: false, accountNames: false };
const CGROUP_MOUNT = cgroup2Mount();
/** A cgroup v2 directory this test may create and move its child into (root on a writable hierarchy). */
const testCgroup = join(CGROUP_MOUNT, `agentid-attest-cache-${process.pid}`);

let dir: string;
let server: net.Server;
let socketPath: string;
const children: ChildProcess[] = [];
const sockets: net.Socket[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agentid-attest-cache-'));
  socketPath = join(dir, 's.sock');
  server = net.createServer((s) => sockets.push(s));
  server.listen(socketPath);
  await once(server, 'listening');
});

afterEach(async () => {
  await killAll(children);
  for (const s of sockets.splice(0)) s.destroy();
});

afterAll(async () => {
  server.close();
  await rm(dir, { recursive: true, force: true });
});

const paths = (a: Attestation) => a.selectors.map(formatSelector).filter((s) => s.startsWith('unix:path:'));

async function connectedChild(): Promise<{ child: ChildProcess; peer: PeerCredentials }> {
  const accepted = once(server, 'connection') as Promise<[net.Socket]>;
  const child = spawn('python3', ['-c', CONNECT_THEN_EXEC, socketPath], { stdio: ['pipe', 'pipe', 'inherit'] });
  children.push(child);
  expect(await firstLine(child)).toBe('connected');
  const [socket] = await accepted;
  return { child, peer: readPeerCredentials(socket) };
}

async function fakeEtc(name: string): Promise<string> {
  const etc = join(dir, name);
  await rm(etc, { recursive: true, force: true });
  await mkdir(etc);
  await copyFile('/etc/passwd', join(etc, 'passwd'));
  await copyFile('/etc/group', join(etc, 'group'));
  return etc;
}

/**
 * A process that opens a new connection on each "connect" line, changes its uid and gid on
 * "setuid N", and executes another program (the same script, by `exec PYTHON`) on "exec PYTHON".
 */
const CONNECTOR = [
  'import os, socket, sys',
  'held = []',
  "if len(sys.argv) > 2: print('ok', flush=True)  # started by exec: that command is done",
  'for line in sys.stdin:',
  '    cmd = line.split()',
  "    if cmd[0] == 'connect':",
  '        s = socket.socket(socket.AF_UNIX)',
  '        s.connect(sys.argv[1])',
  '        held.append(s)',
  "    elif cmd[0] == 'setuid':",
  '        os.setgroups([])',
  '        os.setgid(int(cmd[1]))',
  '        os.setuid(int(cmd[1]))',
  "    elif cmd[0] == 'exec':",
  "        os.execv(cmd[1], [cmd[1], sys.argv[0], sys.argv[1], 'exec'])",
  "    print('ok', flush=True)",
].join('\n');

/** A CONNECTOR child and the kernel credentials of each connection it makes. */
async function connector(): Promise<{ child: ChildProcess; connect(): Promise<PeerCredentials>; send(command: string): Promise<void> }> {
  const script = join(dir, 'connector.py');
  await writeFile(script, CONNECTOR);
  const child = spawn('python3', [script, socketPath], { stdio: ['pipe', 'pipe', 'inherit'] });
  children.push(child);
  const send = async (command: string) => {
    const answered = firstLine(child);
    child.stdin!.write(`${command}\n`);
    expect(await answered).toBe('ok');
  };
  return {
    child,
    send,
    async connect() {
      const accepted = once(server, 'connection') as Promise<[net.Socket]>;
      await send('connect');
      const [socket] = await accepted;
      return readPeerCredentials(socket);
    },
  };
}

describe('AttestationCache', () => {
  it('attests a process once for all its connections while it is unchanged', async () => {
    const c = await connector();
    const cache = new AttestationCache(new Attestor({ logger: silentLogger() }));
    const firstPeer = await c.connect();
    const first = await cache.attest(firstPeer, { withSha256: false, withAncestors: false });
    const secondPeer = await c.connect();
    const second = await cache.attest(secondPeer, { withSha256: false, withAncestors: false });
    expect(second.peer).toBe(secondPeer); // this connection's own credentials
    expect(second.process).toEqual(first.process);
    expect(second.selectors).toBe(first.selectors);
    expect(cache.stats()).toEqual({ hits: 0, processHits: 1, misses: 1 });
    // Each connection keeps its own from then on.
    expect(await cache.attest(secondPeer, { withSha256: false, withAncestors: false })).toBe(second);
    expect(cache.stats()).toEqual({ hits: 1, processHits: 1, misses: 1 });
  });

  it('recognizes a later connection of a process older than the server without a pidfd, and needs one for a younger process', async () => {
    const c = await connector();
    const started = (await readProcessRef(c.child.pid!))!.startTime;
    /** The connection's credentials, counting the pidfds opened for it. */
    const counted = (peer: PeerCredentials, opened: { count: number }): PeerCredentials => ({
      ...peer,
      openPidfd: () => (opened.count++, peer.openPidfd?.()),
    });
    const olderThanServer = new AttestationCache(new Attestor({ logger: silentLogger(), serverStartTime: String(BigInt(started) + 1n) }));
    const opened = { count: 0 };
    await olderThanServer.attest(counted(await c.connect(), opened), { withSha256: false, withAncestors: false, recheck: NOTHING_ELSE });
    await olderThanServer.attest(counted(await c.connect(), opened), { withSha256: false, withAncestors: false, recheck: NOTHING_ELSE });
    expect(olderThanServer.stats()).toEqual({ hits: 0, processHits: 1, misses: 1 });
    expect(opened.count).toBe(1); // the first connection's attestation pinned its connector; the second needed no pin

    const youngerThanServer = new AttestationCache(new Attestor({ logger: silentLogger(), serverStartTime: started }));
    const openedToo = { count: 0 };
    await youngerThanServer.attest(counted(await c.connect(), openedToo), { withSha256: false, withAncestors: false, recheck: NOTHING_ELSE });
    await youngerThanServer.attest(counted(await c.connect(), openedToo), { withSha256: false, withAncestors: false, recheck: NOTHING_ELSE });
    expect(youngerThanServer.stats()).toEqual({ hits: 0, processHits: 1, misses: 1 });
    expect(openedToo.count).toBe(2);
  });

  it('attests in full a later connection of a process that executed another program since', async () => {
    const c = await connector();
    const cache = new AttestationCache(new Attestor({ logger: silentLogger() }));
    const before = await cache.attest(await c.connect(), { withSha256: false, withAncestors: false, recheck: NOTHING_ELSE });
    // A copy of the interpreter: another executable file, the same script.
    const python = join(dir, 'python-copy');
    await copyFile(await readlink(`/proc/${c.child.pid}/exe`), python);
    await chmod(python, 0o755);
    await c.send(`exec ${python}`);
    const after = await cache.attest(await c.connect(), { withSha256: false, withAncestors: false, recheck: NOTHING_ELSE });
    expect(after.process).toEqual(before.process);
    expect(paths(after)).toEqual([`unix:path:${python}`]);
    expect(cache.stats()).toEqual({ hits: 0, processHits: 0, misses: 2 });
  });

  it('attests in full a later connection made with other credentials (the process changed its uid and gid)', async () => {
    await chmod(dir, 0o755);
    await chmod(socketPath, 0o777);
    const c = await connector();
    const cache = new AttestationCache(new Attestor({ logger: silentLogger() }));
    const asRoot = await cache.attest(await c.connect(), { withSha256: false, withAncestors: false, recheck: NOTHING_ELSE });
    expect(asRoot.selectors.map(formatSelector)).toContain('unix:uid:0');
    await c.send('setuid 65534');
    const asNobody = await cache.attest(await c.connect(), { withSha256: false, withAncestors: false, recheck: NOTHING_ELSE });
    expect(asNobody.selectors.map(formatSelector)).toContain('unix:uid:65534');
    expect(asNobody.selectors.map(formatSelector)).not.toContain('unix:uid:0');
    expect(cache.stats()).toEqual({ hits: 0, processHits: 0, misses: 2 });
  });


  it('attests a connection once while its process is unchanged', async () => {
    const { peer } = await connectedChild();
    const cache = new AttestationCache(new Attestor({ logger: silentLogger() }));
    const first = await cache.attest(peer, { withSha256: false, withAncestors: false });
    for (let i = 0; i < 5; i++) expect(await cache.attest(peer, { withSha256: false, withAncestors: false })).toBe(first);
    expect(cache.stats()).toEqual({ hits: 5, processHits: 0, misses: 1 });
    expect(first.ancestors).toEqual([]);
  });

  it('re-attests when something more is needed: a sha256 selector, the parent chain', async () => {
    const { peer } = await connectedChild();
    const cache = new AttestationCache(new Attestor({ logger: silentLogger() }));
    await cache.attest(peer, { withSha256: false, withAncestors: false });
    const hashed = await cache.attest(peer, { withSha256: true, withAncestors: false });
    expect(hashed.selectors.map(formatSelector).some((s) => s.startsWith('unix:sha256:'))).toBe(true);
    const withChain = await cache.attest(peer, { withSha256: false, withAncestors: true });
    expect(withChain.ancestors[0]?.pid).toBe(process.pid);
    expect(cache.stats()).toEqual({ hits: 1, processHits: 0, misses: 2 });
  });

  it('sees a process that executes another program after connecting: the next call attests the new program', async () => {
    const { child, peer } = await connectedChild();
    const cache = new AttestationCache(new Attestor({ logger: silentLogger() }));
    const before = await cache.attest(peer, { withSha256: true, withAncestors: false });
    expect(paths(before)).not.toEqual([`unix:path:${SLEEP}`]);

    child.stdin!.write('exec\n');
    while ((await readlink(`/proc/${child.pid}/exe`).catch(() => '')) !== SLEEP) await delay(10);

    const after = await cache.attest(peer, { withSha256: true, withAncestors: false });
    expect(after.process).toEqual(before.process); // same PID and start time: only the program changed
    expect(paths(after)).toEqual([`unix:path:${SLEEP}`]);
    expect(after.selectors.map(formatSelector).filter((s) => s.startsWith('unix:sha256:'))).not.toEqual(
      before.selectors.map(formatSelector).filter((s) => s.startsWith('unix:sha256:')),
    );
    expect(cache.stats()).toEqual({ hits: 0, processHits: 0, misses: 2 });
  });

  it('sees an exec after connecting also when nothing depends on the cgroup or account names', async () => {
    const { child, peer } = await connectedChild();
    const cache = new AttestationCache(new Attestor({ logger: silentLogger() }));
    const before = await cache.attest(peer, { withSha256: false, withAncestors: false, recheck: NOTHING_ELSE });
    expect(await cache.attest(peer, { withSha256: false, withAncestors: false, recheck: NOTHING_ELSE })).toBe(before);

    child.stdin!.write('exec\n');
    while ((await readlink(`/proc/${child.pid}/exe`).catch(() => '')) !== SLEEP) await delay(10);

    const after = await cache.attest(peer, { withSha256: false, withAncestors: false, recheck: NOTHING_ELSE });
    expect(paths(after)).toEqual([`unix:path:${SLEEP}`]);
    expect(cache.stats()).toEqual({ hits: 1, processHits: 0, misses: 2 });
  });

  it('compares the executable only while some entry uses path: or sha256:, and then sees an exec made before', async () => {
    const { child, peer } = await connectedChild();
    const cache = new AttestationCache(new Attestor({ logger: silentLogger() }));
    const noExecutable: RecheckNeeds = { executable: false, cgroup: false, accountNames: false };
    const before = await cache.attest(peer, { withSha256: false, withAncestors: false, recheck: noExecutable });

    child.stdin!.write('exec\n');
    while ((await readlink(`/proc/${child.pid}/exe`).catch(() => '')) !== SLEEP) await delay(10);

    // Nothing an entry or task can match changed: the same attestation, without stat(/proc/PID/exe).
    expect(cache.reuse(peer, { withSha256: false, withAncestors: false, recheck: noExecutable })).toBe(before);
    expect(await cache.attest(peer, { withSha256: false, withAncestors: false, recheck: noExecutable })).toBe(before);
    // An entry with a path: selector appears: the exec since the attestation counts at once.
    expect(cache.reuse(peer, { withSha256: false, withAncestors: false, recheck: NOTHING_ELSE })).toBeUndefined();
    const after = await cache.attest(peer, { withSha256: false, withAncestors: false, recheck: NOTHING_ELSE });
    expect(after.process).toEqual(before.process);
    expect(paths(after)).toEqual([`unix:path:${SLEEP}`]);
    expect(cache.stats()).toEqual({ hits: 2, processHits: 0, misses: 2 });
  });

  it('answers a reused attestation without waiting only when no parent chain is asked for', async () => {
    const { peer } = await connectedChild();
    const cache = new AttestationCache(new Attestor({ logger: silentLogger() }));
    expect(cache.reuse(peer, { withSha256: false, withAncestors: false })).toBeUndefined(); // never attested
    const first = await cache.attest(peer, { withSha256: false, withAncestors: false });
    expect(cache.reuse(peer, { withSha256: false, withAncestors: false })).toBe(first);
    expect(cache.reuse(peer, { withSha256: false, withAncestors: true })).toBeUndefined();
    expect(cache.reuse(peer, { withSha256: true, withAncestors: false })).toBeUndefined(); // no hash in the cached one
    expect(cache.stats()).toEqual({ hits: 1, processHits: 0, misses: 1 });
  });

  it('checks a process once for the calls of its connections in one turn of the event loop, and again in the next turn', async () => {
    const c = await connector();
    const attestor = new Attestor({ logger: silentLogger() });
    let checks = 0;
    const stillDescribes = attestor.stillDescribes.bind(attestor);
    attestor.stillDescribes = (a, recheck) => (checks++, stillDescribes(a, recheck));
    const cache = new AttestationCache(attestor);
    const peers = [await c.connect(), await c.connect(), await c.connect()];
    for (const peer of peers) await cache.attest(peer, { withSha256: false, withAncestors: false, recheck: NOTHING_ELSE });
    await new Promise(setImmediate);
    checks = 0;
    for (const peer of peers) expect(cache.reuse(peer, { withSha256: false, withAncestors: false, recheck: NOTHING_ELSE })).toBeDefined();
    expect(checks).toBe(1);
    // More checks than were confirmed: checked again.
    expect(cache.reuse(peers[0]!, { withSha256: false, withAncestors: false, recheck: RECHECK_ALL })).toBeDefined();
    expect(checks).toBe(2);
    // Later turns: the process exec()s another program (a copy of its interpreter), and the next call sees it.
    const python = join(dir, 'python-copy-2');
    await copyFile(await readlink(`/proc/${c.child.pid}/exe`), python);
    await chmod(python, 0o755);
    await c.send(`exec ${python}`);
    expect(cache.reuse(peers[1]!, { withSha256: false, withAncestors: false, recheck: NOTHING_ELSE })).toBeUndefined();
    expect(checks).toBe(3);
  });

  it('re-attests a process moved to another cgroup when some entry or task depends on cgroups, and only then', async (ctx) => {
    try {
      await mkdir(testCgroup);
    } catch {
      ctx.skip(); // no writable cgroup v2 hierarchy here (not root)
    }
    try {
      const { child, peer } = await connectedChild();
      const cache = new AttestationCache(new Attestor({ logger: silentLogger() }));
      const first = await cache.attest(peer, { withSha256: false, withAncestors: false, recheck: NOTHING_ELSE });
      expect(first.cgroup).not.toBe(testCgroup.slice(CGROUP_MOUNT.length));
      await writeFile(join(testCgroup, 'cgroup.procs'), `${child.pid}\n`);

      expect(await cache.attest(peer, { withSha256: false, withAncestors: false, recheck: NOTHING_ELSE })).toBe(first);
      const moved = await cache.attest(peer, { withSha256: false, withAncestors: false, recheck: { executable: true, cgroup: true, accountNames: false } });
      expect(moved.cgroup).toBe(testCgroup.slice(CGROUP_MOUNT.length));
      expect(moved.selectors.map(formatSelector)).toContain(`unix:cgroup:${moved.cgroup}`);
      expect(cache.stats()).toEqual({ hits: 1, processHits: 0, misses: 2 });
    } finally {
      await killAll(children);
      await rmdir(testCgroup).catch(() => undefined);
    }
  });

  it('refuses a reused attestation once the connector is gone and another process has its PID (same program)', async (ctx) => {
    const { child, peer } = await connectedChild();
    const cache = new AttestationCache(new Attestor({ logger: silentLogger() }));
    const first = await cache.attest(peer, { withSha256: false, withAncestors: false, recheck: NOTHING_ELSE });
    const pid = child.pid!;
    child.kill('SIGKILL');
    await once(child, 'exit');
    // Give the PID to a new process running the same program (python3), as root can
    // (ns_last_pid); other processes on the machine may take it first, so try a few times.
    let reused: ChildProcess | undefined;
    for (let i = 0; i < 20 && !reused; i++) {
      try {
        await writeFile('/proc/sys/kernel/ns_last_pid', String(pid - 1));
      } catch {
        ctx.skip(); // not root in this PID namespace
      }
      const c = spawn('python3', ['-c', 'import sys; print("up", flush=True); sys.stdin.readline()'], { stdio: ['pipe', 'pipe', 'inherit'] });
      children.push(c);
      await firstLine(c);
      if (c.pid === pid) reused = c;
    }
    if (!reused) ctx.skip();
    expect(first.process.pid).toBe(pid);
    await expect(cache.attest(peer, { withSha256: false, withAncestors: false, recheck: NOTHING_ELSE })).rejects.toMatchObject({ code: 'permission_denied' });
    expect(cache.stats().hits).toBe(0);
  });

  it('re-attests when the account files change (names come from them)', async () => {
    const etcRoot = await fakeEtc('etc');
    const { peer } = await connectedChild();
    const cache = new AttestationCache(new Attestor({ etcRoot, logger: silentLogger() }));
    const first = await cache.attest(peer, { withSha256: false, withAncestors: false });
    expect(first.selectors.map(formatSelector)).toContain('unix:user:root');
    await writeFile(join(etcRoot, 'passwd'), 'superuser:x:0:0::/root:/bin/sh\n');
    // No entry uses a name selector: the old names cannot change what the caller matches.
    expect(await cache.attest(peer, { withSha256: false, withAncestors: false, recheck: NOTHING_ELSE })).toBe(first);
    const second = await cache.attest(peer, { withSha256: false, withAncestors: false, recheck: { executable: true, cgroup: false, accountNames: true } });
    expect(second.selectors.map(formatSelector)).toContain('unix:user:superuser');
    expect(cache.stats()).toEqual({ hits: 1, processHits: 0, misses: 2 });
  });

  it('fails closed once the connected process is gone, cached or not', async () => {
    const { child, peer } = await connectedChild();
    const cache = new AttestationCache(new Attestor({ logger: silentLogger() }));
    await cache.attest(peer, { withSha256: false, withAncestors: false });
    child.kill('SIGKILL');
    await once(child, 'exit');
    await expect(cache.attest(peer, { withSha256: false, withAncestors: false })).rejects.toMatchObject({ code: 'permission_denied' });
  });

  it('shares what connections of one process hold alike (selectors, process, parent chain, facts), and a sibling process its parent chain and selector list', async () => {
    // One process with two connections, and a sibling (same parent chain) with one.
    const twice = (n: number) => [
      'import socket, sys',
      `ss = [socket.socket(socket.AF_UNIX) for _ in range(${n})]`,
      'for s in ss: s.connect(sys.argv[1])',
      "print('connected', flush=True)",
      'sys.stdin.readline()',
    ].join('\n');
    const connect = async (n: number) => {
      const accepted: net.Socket[] = [];
      const onConnection = (s: net.Socket) => accepted.push(s);
      server.on('connection', onConnection);
      const child = spawn('python3', ['-c', twice(n), socketPath], { stdio: ['pipe', 'pipe', 'inherit'] });
      children.push(child);
      expect(await firstLine(child)).toBe('connected');
      while (accepted.length < n) await delay(5);
      server.off('connection', onConnection);
      return accepted.map((s) => readPeerCredentials(s));
    };
    const [a1, a2] = await connect(2);
    const [b] = await connect(1);
    const cache = new AttestationCache(new Attestor({ logger: silentLogger() }));
    const opts = { withSha256: false, withAncestors: true };
    const [x, y, z] = [await cache.attest(a1!, opts), await cache.attest(a2!, opts), await cache.attest(b!, opts)];
    expect(cache.stats()).toEqual({ hits: 0, processHits: 1, misses: 2 });
    expect(y).not.toBe(x);
    expect(y.peer).toBe(a2);
    expect(y.selectors).toBe(x.selectors);
    expect(y.process).toBe(x.process);
    expect(y.ancestors).toBe(x.ancestors);
    expect(y.facts).toBe(x.facts);
    expect(x.ancestors[0]?.pid).toBe(process.pid);
    // The sibling: its own process and facts, the same parent chain and selector list (same user,
    // same binary, same cgroup), also when the chain is read again on a later call.
    expect(z.process.pid).toBe(b!.pid);
    expect(z.facts).not.toBe(x.facts);
    expect(z.ancestors).toBe(x.ancestors);
    expect(z.selectors).toBe(x.selectors);
    expect((await cache.attest(b!, opts)).ancestors).toBe(x.ancestors);
    // Shared parts are frozen: nobody can change what another connection holds.
    expect(Object.isFrozen(x.ancestors) && Object.isFrozen(x.ancestors[0]) && Object.isFrozen(x.selectors)).toBe(true);
  });
});
