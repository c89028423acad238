import type { TaskBinding } from '../datastore/types.js';
import type { ProcessInspector } from '../attest/processes.js';
import { LIVENESS_SLICE, nextTurn } from '../common/turns.js';

/** What a liveness pass asks about processes and cgroups. */
export type LivenessInspector = Pick<ProcessInspector, 'isAlive' | 'cgroupExists'> & Partial<Pick<ProcessInspector, 'runningPids'>>;

/**
 * The items whose bound process or cgroup is gone (a PID now held by another process counts as
 * gone), in their order.
 *
 * One listing of the running PIDs per pass: a binding whose PID is not running is gone without a
 * read of its own, and only a PID that is running is read (its start time tells the bound process
 * from a newcomer that reused the PID). A pass over thousands of tasks that ended long ago (the
 * server's history, loaded at start-up) then costs one directory read, not one /proc read per task.
 * The listing names processes, not threads: a binding to a thread ID counts as gone, which changes
 * nothing for identities (the kernel's peer credentials name processes, so no caller matches it).
 *
 * The pass gives the event loop a turn every few dozen reads, so it never holds up the requests
 * of a reconnect storm for long.
 */
export async function goneBindings<T extends { binding: TaskBinding }>(items: Iterable<T>, processes: LivenessInspector): Promise<T[]> {
  const list = [...items];
  if (list.length === 0) return [];
  const running = list.some((t) => t.binding.kind === 'process') && processes.runningPids ? await processes.runningPids() : undefined;
  const gone: T[] = [];
  let reads = 0;
  for (const item of list) {
    const b = item.binding;
    if (b.kind === 'process' && running && !running.has(b.pid)) {
      gone.push(item);
      continue;
    }
    if (++reads % LIVENESS_SLICE === 0) await nextTurn();
    const alive = b.kind === 'process' ? await processes.isAlive({ pid: b.pid, startTime: b.startTime }) : await processes.cgroupExists(b.path);
    if (!alive) gone.push(item);
  }
  return gone;
}
