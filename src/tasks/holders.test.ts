import { describe, expect, it } from 'vitest';
import { taskFixture } from '../datastore/conformance.js';
import type { TaskRecord } from '../datastore/types.js';
import { TaskHolders } from './holders.js';

describe('TaskHolders', () => {
  it('counts finished tasks until their holder is seen gone, and rebuilds its view once per prune', async () => {
    const alive = new Set(['2']);
    const active: TaskRecord[] = [taskFixture({ id: 'live' })];
    // Requests keep resolving identities between the liveness checks of one pass.
    const seenDuringPrune = new Set<readonly TaskRecord[]>();
    const holders: TaskHolders = new TaskHolders({
      processes: {
        isAlive: async (ref) => {
          seenDuringPrune.add(holders.select());
          return alive.has(String(ref.pid));
        },
        cgroupExists: async () => false,
      },
      active: () => active,
    });
    const finished = (id: string, pid: number) =>
      taskFixture({ id, state: 'revoked', binding: { kind: 'process', pid, startTime: '1', descendants: false } });
    holders.load([finished('a', 1), finished('b', 2), finished('c', 3), active[0]!]);
    // Fail closed until checked: every finished task counts.
    expect(holders.select().map((t) => t.id)).toEqual(['live', 'a', 'b', 'c']);
    const before = holders.select();
    expect(holders.select()).toBe(before);
    await holders.prune();
    // One view for the whole pass: requests in between never rebuild the binding index.
    expect(seenDuringPrune).toEqual(new Set([before]));
    const after = holders.select();
    expect(after.map((t) => t.id)).toEqual(['live', 'b']);
    await holders.prune();
    // Nothing released: the same view (and so the same binding index) is kept.
    expect(holders.select()).toBe(after);
    holders.follow([{ kind: 'task', before: taskFixture({ id: 'd' }), after: finished('d', 2) }]);
    expect(holders.select().map((t) => t.id)).toEqual(['live', 'b', 'd']);
  });

  it('after a restart, drops the finished history whose processes are gone without reading /proc per task', async () => {
    const reads: number[] = [];
    const holders = new TaskHolders({
      processes: {
        isAlive: async (ref) => (reads.push(ref.pid), ref.pid === 7),
        cgroupExists: async () => false,
        runningPids: async () => new Set([1, 7]),
      },
      active: () => [],
    });
    const history = Array.from({ length: 2000 }, (_, i) =>
      taskFixture({ id: `old-${i}`, state: 'ended', binding: { kind: 'process', pid: 10_000 + i, startTime: '1', descendants: false } }));
    const stillRunning = taskFixture({ id: 'kept', state: 'revoked', binding: { kind: 'process', pid: 7, startTime: '1', descendants: false } });
    holders.load([...history, stillRunning]);
    await holders.prune();
    expect(holders.select().map((t) => t.id)).toEqual(['kept']);
    // One read, for the one finished task whose PID still runs (its start time decides).
    expect(reads).toEqual([7]);
  });

  it('holds only tasks bound on its own host: tasks of a node are never matched or liveness-checked here', async () => {
    const checked: number[] = [];
    const processes = {
      isAlive: async (ref: { pid: number }) => (checked.push(ref.pid), false),
      cgroupExists: async () => false,
      runningPids: async () => new Set([10, 11, 12, 13, 14]),
    };
    const remote = (id: string, pid: number, state: TaskRecord['state'] = 'active') =>
      taskFixture({ id, node: 'web-1', state, binding: { kind: 'process', pid, startTime: '1', descendants: false } });
    const local = (id: string, pid: number, state: TaskRecord['state'] = 'active') =>
      taskFixture({ id, state, binding: { kind: 'process', pid, startTime: '1', descendants: false } });
    const active = [local('here', 10), remote('there', 11)];
    const server = new TaskHolders({ processes, active: () => active });
    server.load([local('done-here', 12, 'ended'), remote('done-there', 13, 'ended')]);
    server.follow([{ kind: 'task', before: remote('x', 14), after: remote('x', 14, 'revoked') }]);
    expect(server.select().map((t) => t.id)).toEqual(['here', 'done-here']);
    await server.prune();
    expect(checked).toEqual([12]);

    // The same class on node web-1's agent holds exactly the other half.
    const agent = new TaskHolders({ processes, active: () => active, node: 'web-1' });
    agent.load([local('done-here', 12, 'ended'), remote('done-there', 13, 'ended')]);
    expect(agent.select().map((t) => t.id)).toEqual(['there', 'done-there']);
  });
});
