/**
 * Test support for the attestation tests (src/attest, src/workload/listener): real Unix users
 * and real child processes. Not imported by production code.
 */
import { spawnSync, type ChildProcess } from 'node:child_process';

export interface TestUser {
  name: string;
  uid: number;
  gid: number;
  /** Primary group name, as id -gn reports it. */
  group: string;
  /** All group IDs initgroups(3) gives the user (id -G). */
  groups: number[];
}

function id(args: string[]): string | undefined {
  const r = spawnSync('id', args, { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

/**
 * Creates a system user (no home) unless it exists. Two test files may race to create the same
 * user; useradd then fails on the lock or on "already exists", so re-check and retry briefly.
 */
export function ensureTestUser(name: string): TestUser {
  for (let attempt = 0; attempt < 20 && id(['-u', name]) === undefined; attempt++) {
    const r = spawnSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', name], { encoding: 'utf8' });
    if (r.status === 0) break;
    spawnSync('sleep', ['0.1']);
  }
  const uid = id(['-u', name]);
  const gid = id(['-g', name]);
  const group = id(['-gn', name]);
  const groups = id(['-G', name]);
  if (uid === undefined || gid === undefined || group === undefined || groups === undefined) {
    throw new Error(`test user ${name} could not be created (are the tests running as root?)`);
  }
  return { name, uid: Number(uid), gid: Number(gid), group, groups: groups.split(/\s+/).map(Number) };
}

/** argv wrapped in setpriv so it runs as `user` (real and effective ids, plus its groups) from exec on. */
export function asUser(user: TestUser, argv: string[]): { command: string; args: string[] } {
  return {
    command: 'setpriv',
    args: [`--reuid=${user.uid}`, `--regid=${user.gid}`, '--init-groups', '--', ...argv],
  };
}

/**
 * A node process that connects to a Unix socket, prints "connected" or "error:<code>", and then
 * stays alive (keeping the connection) until killed. Runs as `user` when given.
 */
export const CLIENT_SCRIPT = [
  "const c = require('net').connect(process.argv[1]);",
  "c.on('connect', () => process.stdout.write('connected\\n'));",
  "c.on('error', (e) => { process.stdout.write('error:' + e.code + '\\n'); process.exit(3); });",
  "c.on('close', () => process.exit(0));",
  'setInterval(() => {}, 1e5);',
].join(' ');

export function clientArgv(socketPath: string): string[] {
  return [process.execPath, '-e', CLIENT_SCRIPT, socketPath];
}

/** The first line a child prints on stdout. */
export function firstLine(child: ChildProcess): Promise<string> {
  return new Promise((resolveLine, reject) => {
    let buf = '';
    const onData = (d: Buffer) => {
      buf += d.toString();
      const nl = buf.indexOf('\n');
      if (nl >= 0) {
        child.stdout?.off('data', onData);
        resolveLine(buf.slice(0, nl));
      }
    };
    child.stdout?.on('data', onData);
    child.once('error', reject);
    child.once('exit', (code) => reject(new Error(`child exited (${String(code)}) before printing a line`)));
  });
}

/** SIGKILLs every child that is still running and waits for each to exit; empties the list. */
export async function killAll(children: ChildProcess[]): Promise<void> {
  for (const c of children.splice(0)) {
    if (c.exitCode === null && c.signalCode === null) {
      c.kill('SIGKILL');
      await new Promise((resolve) => c.once('exit', resolve));
    }
  }
}
