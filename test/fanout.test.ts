/**
 * Targeted fan-out with many real streams: 210 Workload API streams held by five processes of four
 * Unix users. A change to one uid's entries, one process's task or one revocation reaches only the
 * streams it affects (counted per stream, message by message); CRL changes reach every X.509 stream
 * without touching its SVIDs; no stream ever receives two byte-identical messages in a row.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { ensureTestUser, asUser, killAll, type TestUser } from '../src/attest/testing.js';
import { startTestServer, type TestServer } from './support/server.js';

const WATCHER = join(import.meta.dirname, 'support', 'stream-watcher.ts');
const td = 'fanout.example';
const X509 = 30;
const BUNDLES = 6;
const JWT = 6;

interface Digest {
  ids?: string[];
  svids?: string[];
  crls: string;
}
interface StreamReport {
  kind: 'x509' | 'x509-bundles' | 'jwt-bundles';
  count: number;
  identical: number;
  ended: string | null;
  last: Digest | null;
  previous: Digest | null;
}

/** A child process holding many streams, driven over stdin/stdout (test/support/stream-watcher.ts). */
class Watcher {
  readonly child: ChildProcess;
  private buffer = '';
  private readonly lines: unknown[] = [];
  private waiting: ((line: unknown) => void) | undefined;

  constructor(socket: string, counts: [number, number, number], user?: TestUser) {
    const argv = [process.execPath, '--import', 'tsx', WATCHER, socket, ...counts.map(String)];
    const { command, args } = user ? asUser(user, argv) : { command: argv[0]!, args: argv.slice(1) };
    this.child = spawn(command, args, { stdio: ['pipe', 'pipe', 'inherit'], cwd: join(import.meta.dirname, '..') });
    this.child.stdout!.on('data', (d) => {
      this.buffer += d;
      let nl;
      while ((nl = this.buffer.indexOf('\n')) >= 0) {
        this.lines.push(JSON.parse(this.buffer.slice(0, nl)));
        this.buffer = this.buffer.slice(nl + 1);
        const w = this.waiting;
        this.waiting = undefined;
        w?.(this.lines.shift());
      }
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  private command(cmd: string): Promise<any> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`watcher ${this.pid}: no answer to ${cmd}`)), 30_000);
      this.waiting = (line) => {
        clearTimeout(timer);
        resolve(line);
      };
      this.child.stdin!.write(`${cmd}\n`);
    });
  }

  open(): Promise<void> {
    return this.command('open');
  }

  async report(): Promise<StreamReport[]> {
    return (await this.command('report')).streams;
  }
}

/** Per kind, the message counts of a watcher's streams, e.g. { x509: [2, 2], ... }. */
const countsOf = (streams: StreamReport[]) => ({
  x509: streams.filter((s) => s.kind === 'x509').map((s) => s.count),
  bundles: streams.filter((s) => s.kind === 'x509-bundles').map((s) => s.count),
  jwt: streams.filter((s) => s.kind === 'jwt-bundles').map((s) => s.count),
});
const expected = (x509: number, bundles: number, jwt: number, n = { x509: X509, bundles: BUNDLES, jwt: JWT }) => ({
  x509: Array(n.x509).fill(x509),
  bundles: Array(n.bundles).fill(bundles),
  jwt: Array(n.jwt).fill(jwt),
});

describe('targeted fan-out', () => {
  let t: TestServer;
  const children: ChildProcess[] = [];
  let users: TestUser[];
  let rootA: Watcher;
  let rootB: Watcher;
  let user1: Watcher;
  let user2: Watcher;
  let taskOnly: Watcher;
  let watchers: Watcher[];

  /** Waits until every watcher's counts reach what is expected, then returns the reports. */
  async function settle(want: Map<Watcher, ReturnType<typeof expected>>): Promise<Map<Watcher, StreamReport[]>> {
    const deadline = Date.now() + 30_000;
    for (;;) {
      const reports = new Map<Watcher, StreamReport[]>();
      for (const w of watchers) reports.set(w, await w.report());
      const reached = [...want].every(([w, counts]) => {
        const got = countsOf(reports.get(w)!);
        return (['x509', 'bundles', 'jwt'] as const).every((k) => got[k].every((c, i) => c >= counts[k][i]!));
      });
      if (reached || Date.now() > deadline) return reports;
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  function expectExactly(reports: Map<Watcher, StreamReport[]>, want: Map<Watcher, ReturnType<typeof expected>>): void {
    for (const [w, counts] of want) expect({ pid: w.pid, ...countsOf(reports.get(w)!) }).toEqual({ pid: w.pid, ...counts });
    for (const streams of reports.values()) expect(streams.map((s) => s.identical)).toEqual(streams.map(() => 0));
  }

  beforeAll(async () => {
    users = ['agentid-test-fan1', 'agentid-test-fan2', 'agentid-test-fan3'].map(ensureTestUser);
    t = await startTestServer({ trustDomain: td, yaml: ['admin:', '  admin_uids: [0]'].join('\n') });
    // Offered to task processes too, so a process keeps a baseline identity around its task's life.
    for (const [path, uid] of [['root', 0], ['u1', users[0]!.uid], ['u2', users[1]!.uid]] as const) {
      await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/${path}`, selectors: [`unix:uid:${uid}`], include_tasks: true } });
    }
    const socket = t.config.workloadSocket;
    rootA = new Watcher(socket, [X509, BUNDLES, JWT]);
    rootB = new Watcher(socket, [X509, BUNDLES, JWT]);
    user1 = new Watcher(socket, [X509, BUNDLES, JWT], users[0]);
    user2 = new Watcher(socket, [X509, BUNDLES, JWT], users[1]);
    // A process whose only identity is a task.
    taskOnly = new Watcher(socket, [X509, 0, 0], users[2]);
    watchers = [rootA, rootB, user1, user2, taskOnly];
    children.push(...watchers.map((w) => w.child));
    await t.admin.call('StartTask', { agent: 'worker', id: 'only', pid: taskOnly.pid });
    await Promise.all(watchers.map((w) => w.open()));
  }, 120_000);

  afterAll(async () => {
    await killAll(children);
    await t?.cleanup();
  });

  it('touches only the streams a change affects, and never repeats a message', async () => {
    const tOnly = (x509: number) => expected(x509, 0, 0, { x509: X509, bundles: 0, jwt: 0 });
    const want = new Map([
      [rootA, expected(1, 1, 1)],
      [rootB, expected(1, 1, 1)],
      [user1, expected(1, 1, 1)],
      [user2, expected(1, 1, 1)],
      [taskOnly, tOnly(1)],
    ]);
    let reports = await settle(want);
    expectExactly(reports, want);
    expect(reports.get(taskOnly)![0]!.last!.ids).toEqual([`spiffe://${td}/agent/worker/task/only`]);

    // An entry for one uid: only that uid's X.509 streams change (bundles do not depend on it).
    await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/u1-extra`, selectors: [`unix:uid:${users[0]!.uid}`] } });
    want.set(user1, expected(2, 1, 1));
    // A task bound to one process: only that process's X.509 streams change.
    await t.admin.call('StartTask', { agent: 'worker', id: 'b', pid: rootB.pid });
    want.set(rootB, expected(2, 1, 1));
    reports = await settle(want);
    expectExactly(reports, want);
    expect(reports.get(rootB)![0]!.last!.ids).toEqual([`spiffe://${td}/agent/worker/task/b`, `spiffe://${td}/root`]);

    // Revoking that task: its process loses the identity; the CRL now lists the task's serial, so
    // every X.509 and X.509-bundle stream gets it once (SVIDs untouched); JWT bundles do not change.
    await t.admin.call('RevokeTask', { agent: 'worker', id: 'b', reason: 'fan-out test' });
    want.set(rootA, expected(2, 2, 1));
    want.set(rootB, expected(3, 2, 1));
    want.set(user1, expected(3, 2, 1));
    want.set(user2, expected(2, 2, 1));
    want.set(taskOnly, tOnly(2));
    reports = await settle(want);
    expectExactly(reports, want);
    expect(reports.get(rootB)![0]!.last!.ids).toEqual([`spiffe://${td}/root`]);
    for (const w of [rootA, user1, user2, taskOnly]) {
      for (const s of reports.get(w)!.filter((x) => x.kind === 'x509')) {
        expect(s.last!.svids).toEqual(s.previous!.svids);
        expect(s.last!.crls).not.toBe(s.previous!.crls);
      }
    }

    // Revoking the task that is the only identity of a process ends its streams.
    await t.admin.call('RevokeTask', { agent: 'worker', id: 'only', reason: 'fan-out test' });
    want.set(rootA, expected(3, 3, 1));
    want.set(rootB, expected(4, 3, 1));
    want.set(user1, expected(4, 3, 1));
    want.set(user2, expected(3, 3, 1));
    want.delete(taskOnly);
    reports = await settle(want);
    expectExactly(reports, want);
    expect(reports.get(taskOnly)!.map((s) => s.ended)).toEqual(Array(X509).fill('PERMISSION_DENIED'));

    // A task whose process never fetched anything: starting and revoking it changes no stream (its
    // ID has no serial to put on the CRL).
    const idle = spawn('sleep', ['60']);
    children.push(idle);
    await t.admin.call('StartTask', { agent: 'worker', id: 'idle', pid: idle.pid });
    await t.admin.call('RevokeTask', { agent: 'worker', id: 'idle', reason: 'fan-out test' });

    // A barrier: one more change per uid, written after anything the steps above could still have
    // sent; then every count must still be exact.
    for (const [path, uid] of [['root-2', 0], ['u1-2', users[0]!.uid], ['u2-2', users[1]!.uid]] as const) {
      await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/${path}`, selectors: [`unix:uid:${uid}`], include_tasks: true } });
    }
    want.set(rootA, expected(4, 3, 1));
    want.set(rootB, expected(5, 3, 1));
    want.set(user1, expected(5, 3, 1));
    want.set(user2, expected(4, 3, 1));
    reports = await settle(want);
    expectExactly(reports, want);
  }, 180_000);
});
