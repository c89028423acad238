import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { chmod, copyFile, mkdir, mkdtemp, open, readFile, rm, symlink, unlink, utimes, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { isAgentIdError } from '../common/errors.js';
import { createLogger, silentLogger, type Logger } from '../common/logger.js';
import { formatSelector } from '../spiffe/selector.js';
import { Attestor, recheckNeeds, type Attestation } from './attestor.js';
import { ExecutableHasher } from './exe-hash.js';
import { readPeerCredentials, type PeerCredentials } from './peercred.js';
import { readProcessRef } from './proc.js';
import { asUser, clientArgv, ensureTestUser, firstLine, type TestUser, killAll } from './testing.js';

const [major = 0, minor = 0] = release().split('.').map((n) => parseInt(n, 10));
const kernelHasPeerPidfd = major > 6 || (major === 6 && minor >= 5);
const SLEEP = '/usr/bin/sleep';

let dir: string;
let user: TestUser;
const children: ChildProcess[] = [];

beforeAll(async () => {
  user = ensureTestUser('agentid-test-u1');
  dir = await mkdtemp(join(tmpdir(), 'agentid-attest-'));
  await chmod(dir, 0o755);
});

afterEach(async () => {
  await killAll(children);
});

afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function sha256sum(file: string): string {
  return execFileSync('sha256sum', [file], { encoding: 'utf8' }).split(' ')[0]!;
}

function values(a: Attestation): string[] {
  return a.selectors.map(formatSelector);
}

function capturingLogger(): { logger: Logger; lines: () => Record<string, unknown>[] } {
  const out: string[] = [];
  const logger = createLogger({ level: 'debug', destination: { write: (s: string) => void out.push(s) } });
  return { logger, lines: () => out.map((l) => JSON.parse(l) as Record<string, unknown>) };
}

/** Spawns `argv`, waits until the kernel shows the exec'd binary, returns the child. */
async function run(command: string, args: string[]): Promise<ChildProcess> {
  const child = spawn(command, args, { stdio: 'ignore' });
  children.push(child);
  await once(child, 'spawn');
  return child;
}

async function kill(child: ChildProcess): Promise<void> {
  child.kill('SIGKILL');
  if (child.exitCode === null && child.signalCode === null) await once(child, 'exit');
}

function rootPeer(pid: number): PeerCredentials {
  return { pid, uid: 0, gid: 0 };
}

describe('Attestor on real processes', () => {
  it('derives uid, user, gid, group, groups, path, sha256, cgroup and ancestors for a root process', async () => {
    // node -> sleep, so the chain has a parent besides this test process.
    const parent = spawn(process.execPath, ['-e', `const c = require('child_process').spawn('${SLEEP}', ['30'], { stdio: 'ignore' }); console.log(c.pid); setInterval(() => {}, 1e5)`], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    children.push(parent);
    const pid = Number(await firstLine(parent));
    try {
      const attestor = new Attestor({ logger: silentLogger() });
      const a = await attestor.attest(rootPeer(pid), { withSha256: true });

      const cgroupLine = (await readFile(`/proc/${pid}/cgroup`, 'utf8')).split('\n').find((l) => l.startsWith('0::'));
      const cgroup = cgroupLine === undefined ? null : cgroupLine.slice(3);
      const groups = (await readFile(`/proc/${pid}/status`, 'utf8')).match(/^Groups:\t(.*)$/m)![1]!.trim().split(/\s+/).filter(Boolean);

      const expected = [
        'unix:uid:0',
        'unix:user:root',
        'unix:gid:0',
        'unix:group:root',
        `unix:path:${SLEEP}`,
        `unix:sha256:${sha256sum(SLEEP)}`,
        ...groups.map((g) => `unix:supplementary_gid:${g}`),
        ...(cgroup === null ? [] : [`unix:cgroup:${cgroup}`]),
      ];
      expect(values(a)).toEqual(expect.arrayContaining(expected));
      expect(values(a)).toEqual([...values(a)].sort());
      expect(a.cgroup).toBe(cgroup);
      expect(a.process).toEqual(await readProcessRef(pid));
      expect(a.peer.pid).toBe(pid);

      expect(a.ancestors[0]).toEqual(await readProcessRef(parent.pid!));
      expect(a.ancestors[1]).toEqual(await readProcessRef(process.pid));
      expect(a.ancestors.at(-1)?.pid).toBe(1);
    } finally {
      process.kill(pid, 'SIGKILL');
    }
  });

  it('uses the socket credentials of an unprivileged client: user, group and its supplementary groups', async () => {
    const server = net.createServer();
    const socketPath = join(dir, 'user.sock');
    server.listen(socketPath);
    await once(server, 'listening');
    await chmod(socketPath, 0o666);
    const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
    const { command, args } = asUser(user, clientArgv(socketPath));
    const client = spawn(command, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(client);
    expect(await firstLine(client)).toBe('connected');
    const socket = await accepted;
    const creds = readPeerCredentials(socket);
    try {
      const a = await new Attestor({ logger: silentLogger() }).attest(creds, { withSha256: false });
      expect(creds).toMatchObject({ pid: client.pid, uid: user.uid, gid: user.gid });
      expect(values(a)).toEqual(
        expect.arrayContaining([
          `unix:uid:${user.uid}`,
          `unix:user:${user.name}`,
          `unix:gid:${user.gid}`,
          `unix:group:${user.group}`,
          ...user.groups.map((g) => `unix:supplementary_gid:${g}`),
          `unix:path:${process.execPath}`,
        ]),
      );
      expect(values(a)).not.toContain('unix:uid:0');
      expect(values(a).some((v) => v.startsWith('unix:sha256:'))).toBe(false);
    } finally {
      socket.destroy();
      server.close();
    }
  });

  it('omits sha256 above the size cap and says so in the log', async () => {
    const child = await run(SLEEP, ['30']);
    const { logger, lines } = capturingLogger();
    const a = await new Attestor({ logger, sha256MaxBytes: 1024 }).attest(rootPeer(child.pid!), { withSha256: true });
    expect(values(a).some((v) => v.startsWith('unix:sha256:'))).toBe(false);
    expect(values(a)).toContain(`unix:path:${SLEEP}`);
    expect(lines().some((l) => String(l.msg).includes('size cap'))).toBe(true);
  });

  it('hashes the running binary after its path was deleted, but gives no path selector', async () => {
    const prog = join(dir, 'deleted-prog');
    await copyFile(SLEEP, prog);
    await chmod(prog, 0o755);
    const child = await run(prog, ['30']);
    await unlink(prog);
    const a = await new Attestor({ logger: silentLogger() }).attest(rootPeer(child.pid!), { withSha256: true });
    expect(values(a)).toContain(`unix:sha256:${sha256sum(SLEEP)}`);
    expect(values(a).some((v) => v.startsWith('unix:path:'))).toBe(false);
  });

  it('keeps the path of a binary really named "... (deleted)"', async () => {
    const prog = join(dir, 'tool (deleted)');
    await copyFile(SLEEP, prog);
    await chmod(prog, 0o755);
    const child = await run(prog, ['30']);
    const a = await new Attestor({ logger: silentLogger() }).attest(rootPeer(child.pid!), { withSha256: false });
    expect(values(a)).toContain(`unix:path:${prog}`);
  });

  it('leaves out a path that cannot be a selector (newline in the file name) instead of mangling it', async () => {
    const prog = join(dir, 'bad\nname');
    await copyFile(SLEEP, prog);
    await chmod(prog, 0o755);
    const child = await run(prog, ['30']);
    const { logger, lines } = capturingLogger();
    const a = await new Attestor({ logger }).attest(rootPeer(child.pid!), { withSha256: false });
    expect(values(a).some((v) => v.startsWith('unix:path:'))).toBe(false);
    expect(values(a)).toContain('unix:uid:0');
    expect(lines().some((l) => l.kind === 'path')).toBe(true);
  });

  it('fails closed for a process that already exited, and its ref is no longer the same process', async () => {
    const child = await run(SLEEP, ['30']);
    const ref = (await readProcessRef(child.pid!))!;
    const attestor = new Attestor({ logger: silentLogger() });
    expect(await attestor.isSameProcess(ref)).toBe(true);
    await kill(child);

    expect(await attestor.isSameProcess(ref)).toBe(false);
    const err = await attestor.attest(rootPeer(child.pid!), { withSha256: true }).catch((e: unknown) => e);
    expect(isAgentIdError(err, 'permission_denied')).toBe(true);
    expect((err as Error).message).toMatch(/exited or its PID was reused/);
  });

  it('a ref whose start time differs from the live process at that PID (PID reuse) is not the same process', async () => {
    const child = await run(SLEEP, ['30']);
    const ref = (await readProcessRef(child.pid!))!;
    const attestor = new Attestor({ logger: silentLogger() });
    expect(await attestor.isSameProcess({ pid: ref.pid, startTime: String(BigInt(ref.startTime) - 1n) })).toBe(false);
  });

  it('rejects pid 0 (a peer outside this PID namespace)', async () => {
    const err = await new Attestor({ logger: silentLogger() }).attest({ pid: 0, uid: 0, gid: 0 }, { withSha256: false }).catch((e: unknown) => e);
    expect(isAgentIdError(err, 'permission_denied')).toBe(true);
  });

  it.skipIf(!kernelHasPeerPidfd)('fails closed when the pidfd says the peer exited, even if /proc still looks fine', async () => {
    // The /proc view is a static fixture that claims the process runs; only the pidfd knows better.
    const procRoot = join(dir, 'proc-pidfd');
    await fakeProcess(procRoot, { pid: 4242 });
    const server = net.createServer();
    const socketPath = join(dir, 'pidfd.sock');
    server.listen(socketPath);
    await once(server, 'listening');
    const accepted = new Promise<net.Socket>((r) => server.once('connection', r));
    const client = spawn(clientArgv(socketPath)[0]!, clientArgv(socketPath).slice(1), { stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(client);
    await firstLine(client);
    const socket = await accepted;
    const creds = readPeerCredentials(socket);
    try {
      const attestor = new Attestor({ procRoot, etcRoot: await fakeEtc('etc-pidfd'), logger: silentLogger() });
      const peer = { pid: 4242, uid: 0, gid: 0, openPidfd: () => creds.openPidfd!() };
      const first = await attestor.attest(peer, { withSha256: false });
      expect(attestor.stillDescribes(first)).toBe(true);

      await kill(client);
      const err = await attestor.attest(peer, { withSha256: false }).catch((e: unknown) => e);
      expect(isAgentIdError(err, 'permission_denied')).toBe(true);
    } finally {
      socket.destroy();
      server.close();
    }
  });
});

interface FakeProcess {
  pid: number;
  ppid?: number;
  startTime?: string;
  comm?: string;
  state?: string;
  groups?: number[];
  cgroup?: string;
  exe?: string;
}

function statLine(p: FakeProcess): string {
  const tail = `${p.state ?? 'S'} ${p.ppid ?? 0} 1 1 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 ${p.startTime ?? '100'} 2265088 128 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0`;
  return `${p.pid} (${p.comm ?? 'agent'}) ${tail}\n`;
}

async function fakeProcess(procRoot: string, p: FakeProcess): Promise<void> {
  const d = join(procRoot, String(p.pid));
  await mkdir(d, { recursive: true });
  await writeFile(join(d, 'stat'), statLine(p));
  await writeFile(join(d, 'status'), `Name:\t${p.comm ?? 'agent'}\nUid:\t0\t0\t0\t0\nGroups:\t${(p.groups ?? []).join(' ')} \n`);
  await writeFile(join(d, 'cgroup'), p.cgroup ?? '0::/agents/a1\n');
  await symlink(p.exe ?? SLEEP, join(d, 'exe'));
}

async function fakeEtc(name: string, passwd = 'root:x:0:0:root:/root:/bin/sh\n', group = 'root:x:0:\n'): Promise<string> {
  const d = join(dir, name);
  await mkdir(d, { recursive: true });
  await writeFile(join(d, 'passwd'), passwd);
  await writeFile(join(d, 'group'), group);
  return d;
}

describe('Attestor on /proc fixtures', () => {
  it.each([
    { fixture: 'cgroup-v2-only', cgroup: '0::/agents/a1\n', want: '/agents/a1' },
    { fixture: 'cgroup-hybrid', cgroup: '11:memory:/docker/x\n1:name=systemd:/y\n0::/system.slice/agent.service\n', want: '/system.slice/agent.service' },
    { fixture: 'cgroup-v1-only', cgroup: '11:memory:/docker/x\n', want: null },
    { fixture: 'cgroup-path-with-space', cgroup: '0::/agents/task 7\n', want: '/agents/task 7' },
  ])('$fixture: cgroup and cgroup selector', async ({ fixture, cgroup, want }) => {
    const procRoot = join(dir, `proc-${fixture}`);
    await fakeProcess(procRoot, { pid: 77, cgroup });
    const a = await new Attestor({ procRoot, etcRoot: await fakeEtc(`etc-${fixture}`), logger: silentLogger() }).attest(rootPeer(77), { withSha256: false });
    expect(a.cgroup).toBe(want);
    const cgroupSelectors = values(a).filter((v) => v.startsWith('unix:cgroup:'));
    expect(cgroupSelectors).toEqual(want === null ? [] : [`unix:cgroup:${want}`]);
  });

  it.each([
    { fixture: 'user-with-dot-dash-dollar', name: 'svc.agent-1$', uid: 1001, selector: 'unix:user:svc.agent-1$' },
    { fixture: 'user-unicode', name: 'ünïcødé', uid: 1002, selector: 'unix:user:ünïcødé' },
    { fixture: 'user-with-space', name: 'name with space', uid: 1003, selector: 'unix:user:name with space' },
    { fixture: 'user-all-digits', name: '4242', uid: 1004, selector: 'unix:user:4242' },
    { fixture: 'user-with-control-char', name: 'evil\u0001name', uid: 1005, selector: undefined },
    { fixture: 'user-unknown-uid', name: 'someone', uid: 1006, selector: undefined, missing: true },
  ])('$fixture: user selector', async ({ fixture, name, uid, selector, missing }) => {
    const procRoot = join(dir, `proc-${fixture}`);
    await fakeProcess(procRoot, { pid: 88, groups: [2000] });
    const passwd = missing ? 'root:x:0:0::/:/bin/sh\n' : `root:x:0:0::/:/bin/sh\n${name}:x:${uid}:2000::/:/bin/false\n`;
    const group = `root:x:0:\n${name}-grp:x:2000:\n`;
    const etcRoot = await fakeEtc(`etc-${fixture}`, passwd, group);
    const a = await new Attestor({ procRoot, etcRoot, logger: silentLogger() }).attest({ pid: 88, uid, gid: 2000 }, { withSha256: false });
    const users = values(a).filter((v) => v.startsWith('unix:user:'));
    expect(users).toEqual(selector === undefined ? [] : [selector]);
    expect(values(a)).toContain(`unix:uid:${uid}`);
    if (!name.includes('\u0001')) {
      expect(values(a)).toEqual(expect.arrayContaining([`unix:group:${name}-grp`, 'unix:supplementary_gid:2000', `unix:supplementary_group:${name}-grp`]));
    }
  });

  it('sees a user added after the first lookup (the name cache follows the file)', async () => {
    const procRoot = join(dir, 'proc-user-added');
    await fakeProcess(procRoot, { pid: 90 });
    const etcRoot = await fakeEtc('etc-user-added');
    const attestor = new Attestor({ procRoot, etcRoot, logger: silentLogger() });
    const peer = { pid: 90, uid: 1500, gid: 0 };
    expect(values(await attestor.attest(peer, { withSha256: false })).filter((v) => v.startsWith('unix:user:'))).toEqual([]);
    await writeFile(join(etcRoot, 'passwd'), 'root:x:0:0::/:/bin/sh\nlate:x:1500:0::/:/bin/false\n');
    expect(values(await attestor.attest(peer, { withSha256: false }))).toContain('unix:user:late');
  });

  it('takes uid and gid from the socket credentials, not from /proc', async () => {
    const procRoot = join(dir, 'proc-uid-from-socket');
    await fakeProcess(procRoot, { pid: 91 }); // status says Uid 0
    const a = await new Attestor({ procRoot, etcRoot: await fakeEtc('etc-uid-from-socket'), logger: silentLogger() }).attest(
      { pid: 91, uid: 1234, gid: 5678 },
      { withSha256: false },
    );
    expect(values(a)).toEqual(expect.arrayContaining(['unix:uid:1234', 'unix:gid:5678']));
    expect(values(a)).not.toContain('unix:uid:0');
  });

  it.each([
    {
      fixture: 'ancestors-intact',
      procs: [{ pid: 300, ppid: 200, startTime: '500' }, { pid: 200, ppid: 1, startTime: '400' }, { pid: 1, ppid: 0, startTime: '1' }],
      want: [{ pid: 200, startTime: '400' }, { pid: 1, startTime: '1' }],
    },
    {
      fixture: 'ancestor-pid-reused',
      // PID 200 started after its "child": the real parent exited and the PID went to a stranger.
      procs: [{ pid: 300, ppid: 200, startTime: '500' }, { pid: 200, ppid: 1, startTime: '900' }, { pid: 1, ppid: 0, startTime: '1' }],
      want: [],
    },
    {
      fixture: 'ancestor-gone',
      procs: [{ pid: 300, ppid: 250, startTime: '500' }],
      want: [],
    },
    {
      fixture: 'ancestor-zombie',
      procs: [{ pid: 300, ppid: 200, startTime: '500' }, { pid: 200, ppid: 1, startTime: '400', state: 'Z' }, { pid: 1, ppid: 0, startTime: '1' }],
      want: [],
    },
  ])('$fixture', async ({ fixture, procs, want }) => {
    const procRoot = join(dir, `proc-${fixture}`);
    for (const p of procs) await fakeProcess(procRoot, p);
    const a = await new Attestor({ procRoot, etcRoot: await fakeEtc(`etc-${fixture}`), logger: silentLogger() }).attest(rootPeer(300), { withSha256: false });
    expect(a.ancestors).toEqual(want);
    expect(a.process).toEqual({ pid: 300, startTime: '500' });
  });

  it('pid-reused-during-attestation: the start time re-check fails closed', async () => {
    // cgroup is a FIFO: the attestor blocks reading it after its first start-time read, while
    // the test swaps the process behind the PID (new start time), then lets it continue.
    const run = async (reuse: boolean) => {
      const fixture = reuse ? 'reused' : 'stable';
      const procRoot = join(dir, `proc-race-${fixture}`);
      await fakeProcess(procRoot, { pid: 4242, startTime: '100' });
      const cgroup = join(procRoot, '4242', 'cgroup');
      await unlink(cgroup);
      expect(spawnSync('mkfifo', [cgroup]).status).toBe(0);
      const attestor = new Attestor({ procRoot, etcRoot: await fakeEtc(`etc-race-${fixture}`), logger: silentLogger() });
      const result = attestor.attest(rootPeer(4242), { withSha256: false }).then(
        (a) => ({ ok: true as const, a }),
        (err: unknown) => ({ ok: false as const, err }),
      );
      const writer = await open(cgroup, 'w'); // returns once the attestor opened it to read
      if (reuse) await writeFile(join(procRoot, '4242', 'stat'), statLine({ pid: 4242, startTime: '200' }));
      await writer.write('0::/agents/a1\n');
      await writer.close();
      return result;
    };

    const stable = await run(false);
    expect(stable.ok).toBe(true);

    const reused = await run(true);
    expect(reused.ok).toBe(false);
    if (!reused.ok) {
      expect(isAgentIdError(reused.err, 'permission_denied')).toBe(true);
    }
  });

  it('a reused attestation is refused once its /proc entry is another one (a new process with the PID), whatever it holds', async () => {
    const procRoot = join(dir, 'proc-reuse-after');
    await fakeProcess(procRoot, { pid: 4343, startTime: '100' });
    const attestor = new Attestor({ procRoot, etcRoot: await fakeEtc('etc-reuse-after'), logger: silentLogger() });
    const first = await attestor.attest(rootPeer(4343), { withSha256: false });
    const nothingElse = { executable: true, cgroup: false, accountNames: false };
    expect(attestor.stillDescribes(first, nothingElse)).toBe(true);
    // procfs makes a new directory inode for a new process: same PID, same files, same executable.
    await rm(join(procRoot, '4343'), { recursive: true });
    await fakeProcess(procRoot, { pid: 4343, startTime: '100' });
    expect(attestor.stillDescribes(first, nothingElse)).toBe(false);
    await rm(join(procRoot, '4343'), { recursive: true });
    expect(attestor.stillDescribes(first, nothingElse)).toBe(false); // gone
  });

  it('compares the cgroup and the account files of a reused attestation only when asked to', async () => {
    const procRoot = join(dir, 'proc-recheck');
    await fakeProcess(procRoot, { pid: 4444, cgroup: '0::/agents/a1\n' });
    const etcRoot = await fakeEtc('etc-recheck');
    const attestor = new Attestor({ procRoot, etcRoot, logger: silentLogger() });
    const first = await attestor.attest(rootPeer(4444), { withSha256: false });
    await writeFile(join(procRoot, '4444', 'cgroup'), '0::/agents/a2\n');
    expect(attestor.stillDescribes(first, { executable: true, cgroup: false, accountNames: false })).toBe(true);
    expect(attestor.stillDescribes(first, { executable: true, cgroup: true, accountNames: false })).toBe(false);
    expect(attestor.stillDescribes(first)).toBe(false); // the default compares everything
    await writeFile(join(procRoot, '4444', 'cgroup'), '0::/agents/a1\n');
    await writeFile(join(etcRoot, 'passwd'), 'superuser:x:0:0::/root:/bin/sh\n');
    expect(attestor.stillDescribes(first, { executable: true, cgroup: true, accountNames: false })).toBe(true);
    expect(attestor.stillDescribes(first, { executable: true, cgroup: false, accountNames: true })).toBe(false);
  });

  it('path of a deleted binary is left out when no file by that name is the running inode', async () => {
    const procRoot = join(dir, 'proc-exe-deleted');
    await fakeProcess(procRoot, { pid: 92, exe: '/nonexistent/agent (deleted)' });
    const a = await new Attestor({ procRoot, etcRoot: await fakeEtc('etc-exe-deleted'), logger: silentLogger() }).attest(rootPeer(92), { withSha256: true });
    expect(values(a).some((v) => v.startsWith('unix:path:') || v.startsWith('unix:sha256:'))).toBe(false);
  });
});

describe('recheckNeeds', () => {
  it.each([
    { kinds: ['uid'], cgroupTask: false, want: { executable: false, cgroup: false, accountNames: false } },
    { kinds: ['uid', 'path'], cgroupTask: false, want: { executable: true, cgroup: false, accountNames: false } },
    { kinds: ['sha256'], cgroupTask: false, want: { executable: true, cgroup: false, accountNames: false } },
    { kinds: ['cgroup'], cgroupTask: false, want: { executable: false, cgroup: true, accountNames: false } },
    { kinds: [], cgroupTask: true, want: { executable: false, cgroup: true, accountNames: false } },
    { kinds: ['supplementary_group'], cgroupTask: false, want: { executable: false, cgroup: false, accountNames: true } },
  ])('entries using $kinds, a cgroup-bound task: $cgroupTask', ({ kinds, cgroupTask, want }) => {
    expect(recheckNeeds((kind) => kinds.includes(kind), cgroupTask)).toEqual(want);
  });
});

describe('ExecutableHasher', () => {
  it('matches sha256sum and notices a same-size rewrite whose mtime was set back', async () => {
    const file = join(dir, 'hash-me');
    await writeFile(file, 'A'.repeat(4096));
    const mtime = new Date('2020-01-01T00:00:00Z');
    await utimes(file, mtime, mtime);
    const hasher = new ExecutableHasher({ logger: silentLogger() });
    expect(await hasher.hash(file)).toBe(sha256sum(file));

    await writeFile(file, 'B'.repeat(4096)); // same inode, same size
    await utimes(file, mtime, mtime); // same mtime: only ctime tells
    expect(await hasher.hash(file)).toBe(sha256sum(file));
    expect(await hasher.hash(file)).toBe(sha256sum(file));
  });

  it('agrees with sha256sum on a large binary, with concurrent requests for it', async () => {
    const hasher = new ExecutableHasher({ logger: silentLogger() });
    const digests = await Promise.all([hasher.hash(process.execPath), hasher.hash(process.execPath), hasher.hash(process.execPath)]);
    expect(new Set(digests)).toEqual(new Set([sha256sum(process.execPath)]));
  });
});
