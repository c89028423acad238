/*
 * Task start and revocation latency with many open streams that the task does not concern.
 * An in-process server; STREAMS X.509 streams held by WATCHERS child processes (root, so they share
 * the root entry); then ROUNDS times: StartTask bound to this process, wait until this
 * process's own stream carries the task identity, RevokeTask, and wait until the stream has dropped
 * it. Prints p50/p99/max of each admin call's latency and of the time from RevokeTask's return
 * until the revoked stream was updated.
 *
 *   node --import tsx bench/fanout-revoke.ts [streams=2000] [rounds=30]
 *
 * Run as root (the entry selects unix:uid:0).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { startTestServer } from '../test/support/server.js';
import { WorkloadApiClient } from '../src/client/workload-client.js';

const STREAMS = Number(process.argv[2] ?? 2000);
const ROUNDS = Number(process.argv[3] ?? 30);
const WATCHERS = 4;
const TD = 'fanout-bench.example';
const WATCHER = join(import.meta.dirname, '..', 'test', 'support', 'stream-watcher.ts');

function lineFrom(child: ChildProcess): Promise<unknown> {
  return new Promise((resolve) => {
    let buf = '';
    const onData = (d: Buffer) => {
      buf += d;
      const nl = buf.indexOf('\n');
      if (nl < 0) return;
      child.stdout!.off('data', onData);
      resolve(JSON.parse(buf.slice(0, nl)));
    };
    child.stdout!.on('data', onData);
  });
}

const stats = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const at = (p: number) => s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
  return `p50 ${at(50).toFixed(1)} ms  p99 ${at(99).toFixed(1)} ms  max ${s.at(-1)!.toFixed(1)} ms`;
};

async function main(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('run as root');
  const t = await startTestServer({ trustDomain: TD, yaml: 'admin:\n  admin_uids: [0]' });
  const children: ChildProcess[] = [];
  try {
    await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${TD}/root`, selectors: ['unix:uid:0'], include_tasks: true } });
    const perWatcher = Math.ceil(STREAMS / WATCHERS);
    for (let i = 0; i < WATCHERS; i++) {
      const child = spawn(process.execPath, ['--import', 'tsx', WATCHER, t.config.workloadSocket, String(perWatcher), '0', '0'], { stdio: ['pipe', 'pipe', 'inherit'] });
      children.push(child);
    }
    const opened = children.map(lineFrom);
    for (const c of children) c.stdin!.write('open\n');
    await Promise.all(opened);
    console.log(`${perWatcher * WATCHERS} streams open in ${WATCHERS} processes`);

    // This process's own stream: the task is bound to it.
    const client = new WorkloadApiClient({ socketPath: t.config.workloadSocket });
    let ids: string[] = [];
    let onUpdate = () => {};
    const stopWatching = new AbortController();
    const watching = client.watchX509Context(
      (ctx) => {
        ids = ctx.svids.map((s) => s.spiffeId);
        onUpdate();
      },
      (err) => console.error('own stream failed:', err.code),
      stopWatching.signal,
    );
    const until = (pred: () => boolean) =>
      new Promise<void>((resolve) => {
        if (pred()) return resolve();
        onUpdate = () => pred() && resolve();
      });
    await until(() => ids.length > 0);

    const start: number[] = [];
    const revoke: number[] = [];
    const update: number[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      const id = `spiffe://${TD}/agent/bench/task/r${r}`;
      let t0 = performance.now();
      await t.admin.call('StartTask', { agent: 'bench', id: `r${r}`, pid: process.pid });
      start.push(performance.now() - t0);
      await until(() => ids.includes(id));
      t0 = performance.now();
      await t.admin.call('RevokeTask', { agent: 'bench', id: `r${r}`, reason: 'bench' });
      const returned = performance.now();
      revoke.push(returned - t0);
      await until(() => !ids.includes(id));
      update.push(performance.now() - returned);
    }
    console.log(`StartTask                       ${stats(start)}`);
    console.log(`RevokeTask                      ${stats(revoke)}`);
    console.log(`revoked stream updated after it ${stats(update)}`);
    stopWatching.abort();
    await watching.catch(() => {});
    client.close();
  } finally {
    for (const c of children) c.kill('SIGKILL');
    await t.cleanup();
  }
}

await main();
