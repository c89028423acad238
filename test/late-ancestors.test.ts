/**
 * Parent chains read only when they matter (src/issuer/late-ancestors.ts), end to end with real
 * processes: while no task covers descendants a stream is attested without its parent chain, so a
 * task bound with `descendants` to a process whose child already has a stream open must still
 * reach that stream, and leave it again when the task ends.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { startTestServer, type TestServer } from './support/server.js';
import { REPO } from './support/cli.js';

const FETCH_CLIENT = join(import.meta.dirname, 'support', 'fetch-client.ts');
const td = 'late-ancestors.example';
const rootId = `spiffe://${td}/root`;

/** The JSON lines a `fetch-client.ts watch` prints, and a wait for one that matches. */
function follow(child: ChildProcess) {
  const lines: { ids?: string[]; error?: string }[] = [];
  const waiters: (() => void)[] = [];
  let buf = '';
  child.stdout!.on('data', (d) => {
    buf += d;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      lines.push(JSON.parse(buf.slice(0, nl)));
      buf = buf.slice(nl + 1);
    }
    for (const w of waiters.splice(0)) w();
  });
  /** The first line after `after` lines that matches (no time limit here: the test's own timeout ends a wait that never ends). */
  const next = (after: number, pred: (l: { ids?: string[]; error?: string }) => boolean) =>
    new Promise<number>((resolve) => {
      const check = () => {
        const i = lines.findIndex((l, k) => k >= after && pred(l));
        if (i >= 0) resolve(i);
        else waiters.push(check);
      };
      check();
    });
  return { lines, next };
}

describe('a task bound with descendants started after a descendant opened its stream', () => {
  let t: TestServer;

  beforeAll(async () => {
    t = await startTestServer({ trustDomain: td, yaml: ['admin:', '  admin_uids: [0]'].join('\n') });
    // Served to task processes too (include_tasks), so the stream stays open without the task.
    await t.admin.call('CreateEntry', { entry: { spiffe_id: rootId, selectors: ['unix:uid:0'], include_tasks: true } });
  });
  afterAll(async () => t?.cleanup());

  it('the open stream gets the task identity once the task starts, and loses it when the task ends', async () => {
    // sh is the task's process; the watcher is its child, connected before any task exists.
    const watch = `"${process.execPath}" --import tsx "${FETCH_CLIENT}" "${t.config.workloadSocket}" watch & wait`;
    // Its own process group, so that the watcher goes with it at the end.
    const parent = spawn('/bin/sh', ['-c', watch], { cwd: REPO, stdio: ['ignore', 'pipe', 'inherit'], detached: true });
    try {
      const out = follow(parent);
      const first = await out.next(0, (l) => l.ids !== undefined);
      expect(out.lines[first]!.ids).toEqual([rootId]);

      await t.admin.call('StartTask', { agent: 'coder', id: 't-late', pid: parent.pid, descendants: true });
      const taskId = `spiffe://${td}/agent/coder/task/t-late`;
      const withTask = await out.next(first + 1, (l) => l.ids?.[0] === taskId);
      expect(out.lines[withTask]!.ids).toEqual([taskId, rootId]);

      await t.admin.call('EndTask', { agent: 'coder', id: 't-late' });
      const without = await out.next(withTask + 1, (l) => l.ids !== undefined && !l.ids.includes(taskId));
      expect(out.lines[without]!.ids).toEqual([rootId]);
      expect(out.lines.filter((l) => l.error !== undefined)).toEqual([]);
    } finally {
      process.kill(-parent.pid!, 'SIGTERM');
    }
  });
});
