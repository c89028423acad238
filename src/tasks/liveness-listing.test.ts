import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { describe, expect, it } from 'vitest';
import { systemProcessInspector } from '../attest/processes.js';
import { readProcessRef } from '../attest/proc.js';
import { taskFixture } from '../datastore/conformance.js';
import type { TaskRecord } from '../datastore/types.js';
import { goneBindings, type LivenessInspector } from './liveness.js';

const bound = (id: string, pid: number, startTime = '1') => taskFixture({ id, binding: { kind: 'process', pid, startTime, descendants: false } });

/** An inspector over a made-up process table, counting the per-task questions it is asked. */
function fakeInspector(table: Map<number, string>, cgroups: Set<string>, withListing: boolean) {
  const asked: string[] = [];
  const inspector: LivenessInspector = {
    isAlive: async (ref) => {
      asked.push(`pid ${ref.pid}`);
      return table.get(ref.pid) === ref.startTime;
    },
    cgroupExists: async (path) => {
      asked.push(`cgroup ${path}`);
      return cgroups.has(path);
    },
    ...(withListing ? { runningPids: async () => new Set(table.keys()) } : {}),
  };
  return { inspector, asked };
}

describe('goneBindings', () => {
  const tasks: TaskRecord[] = [
    bound('exited', 10),
    bound('running', 11),
    // PID 12 runs, but it is another process (a reused PID): gone.
    bound('reused', 12, '5'),
    taskFixture({ id: 'cg-live', binding: { kind: 'cgroup', path: '/agents/live' } }),
    taskFixture({ id: 'cg-gone', binding: { kind: 'cgroup', path: '/agents/gone' } }),
  ];
  const table = new Map([
    [11, '1'],
    [12, '6'],
  ]);
  const cgroups = new Set(['/agents/live']);

  it('reads only the processes whose PID is running; the others are gone without a read', async () => {
    const { inspector, asked } = fakeInspector(table, cgroups, true);
    expect((await goneBindings(tasks, inspector)).map((t) => t.id)).toEqual(['exited', 'reused', 'cg-gone']);
    expect(asked).toEqual(['pid 11', 'pid 12', 'cgroup /agents/live', 'cgroup /agents/gone']);
  });

  it('gives the same answer, one read per task, without a PID listing', async () => {
    const { inspector, asked } = fakeInspector(table, cgroups, false);
    expect((await goneBindings(tasks, inspector)).map((t) => t.id)).toEqual(['exited', 'reused', 'cg-gone']);
    expect(asked).toHaveLength(tasks.length);
  });

  it('a pass over thousands of exited tasks reads no process of its own', async () => {
    const { inspector, asked } = fakeInspector(table, cgroups, true);
    const history = Array.from({ length: 5000 }, (_, i) => bound(`old-${i}`, 100_000 + i));
    expect(await goneBindings(history, inspector)).toHaveLength(5000);
    expect(asked).toEqual([]);
  });

  it('the system inspector lists real processes: a child while it runs, not once it is reaped', async () => {
    const processes = systemProcessInspector();
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    await once(child, 'spawn');
    const ref = await readProcessRef(child.pid!);
    expect(ref).toBeDefined();
    const task = bound('child', child.pid!, ref!.startTime);
    expect((await processes.runningPids!()).has(process.pid)).toBe(true);
    expect(await goneBindings([task], processes)).toEqual([]);
    child.kill('SIGKILL');
    await once(child, 'exit');
    expect((await processes.runningPids!()).has(child.pid!)).toBe(false);
    expect(await goneBindings([task], processes)).toEqual([task]);
  });
});
