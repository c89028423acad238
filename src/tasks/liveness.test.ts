import { describe, expect, it } from 'vitest';
import { taskFixture } from '../datastore/conformance.js';
import type { TaskRecord } from '../datastore/types.js';
import { ManualClock } from '../common/clock.js';
import { SYSTEM_ACTOR } from '../common/actor.js';
import { LIVENESS_SLICE } from '../common/turns.js';
import { TrustDomain } from '../spiffe/spiffe-id.js';
import type { ProcessInspector } from '../attest/processes.js';
import { TaskHolders } from './holders.js';
import { TaskService, type TaskServiceDeps } from './service.js';

const TASKS = 5 * LIVENESS_SLICE;

/**
 * Processes that are all alive, answered at once (like the synchronous /proc read of the real
 * inspector), counting the checks.
 */
function countingProcesses(): ProcessInspector & { checks: number } {
  const p = {
    checks: 0,
    inspect: async () => undefined,
    isAlive: async () => {
      p.checks++;
      return true;
    },
    cgroupExists: async () => true,
    cgroupProcessOwners: async () => undefined,
  };
  return p;
}

/** Runs `pass` and records how many checks had been made each time the event loop got a turn. */
async function turnsDuring(pass: () => Promise<void>, processes: { checks: number }): Promise<number[]> {
  const seen: number[] = [];
  let done = false;
  const watch = () => {
    if (done) return;
    seen.push(processes.checks);
    setImmediate(watch);
  };
  setImmediate(watch);
  await pass();
  done = true;
  return seen;
}

const tasks = (state: TaskRecord['state']) =>
  Array.from({ length: TASKS }, (_, i) => taskFixture({ id: `t${i}`, state, binding: { kind: 'process', pid: 1000 + i, startTime: '1', descendants: false } }));

describe('liveness passes give the event loop turns', () => {
  it('TaskService.endOrphaned checks at most one slice of tasks between two turns', async () => {
    const processes = countingProcesses();
    const active = tasks('active');
    const service = new TaskService({
      trustDomain: TrustDomain.parse('example.org'),
      state: { activeTasks: () => active, sync: async () => {} },
      processes,
      clock: new ManualClock(),
    } as unknown as TaskServiceDeps);
    const seen = await turnsDuring(() => service.endOrphaned(SYSTEM_ACTOR), processes);
    expect(processes.checks).toBe(TASKS);
    expect(seen.length).toBeGreaterThanOrEqual(TASKS / LIVENESS_SLICE - 1);
    const gaps = seen.map((n, i) => n - (seen[i - 1] ?? 0));
    expect(Math.max(...gaps, TASKS - seen.at(-1)!)).toBeLessThanOrEqual(LIVENESS_SLICE);
  });

  it('TaskHolders.prune checks at most one slice of finished tasks between two turns', async () => {
    const processes = countingProcesses();
    const holders = new TaskHolders({ processes, active: () => [] });
    holders.load(tasks('ended'));
    const seen = await turnsDuring(() => holders.prune(), processes);
    expect(processes.checks).toBe(TASKS);
    expect(seen.length).toBeGreaterThanOrEqual(TASKS / LIVENESS_SLICE - 1);
    const gaps = seen.map((n, i) => n - (seen[i - 1] ?? 0));
    expect(Math.max(...gaps, TASKS - seen.at(-1)!)).toBeLessThanOrEqual(LIVENESS_SLICE);
  });
});
