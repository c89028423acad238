import type { TaskRecord } from '../datastore/types.js';
import type { ProcessInspector } from './service.js';

/**
 * Which tasks may still hold processes: every active task, and every finished one until its bound
 * process is seen gone (or its cgroup removed). Identity resolution needs the finished ones too:
 * a process whose task ended or was revoked must receive nothing, not fall back to the entries
 * its uid matches (resolveIdentities).
 *
 * A finished task is released only after a liveness check says its holder is gone; until the
 * first check after a restart, every finished task counts (fail closed). A process binding names
 * pid and start time, so a released one can never match again; a cgroup path could be recreated,
 * and then the new cgroup is an ordinary one.
 */
export class TaskHolders {
  private readonly released = new Set<string>();

  constructor(private readonly deps: { processes: Pick<ProcessInspector, 'isAlive' | 'cgroupExists'> }) {}

  /** The tasks identity resolution must see, from every task in the store. */
  select(all: readonly TaskRecord[]): TaskRecord[] {
    return all.filter((t) => t.state === 'active' || !this.released.has(key(t)));
  }

  /** Releases finished tasks whose process exited or whose cgroup is gone. */
  async prune(all: readonly TaskRecord[]): Promise<void> {
    for (const t of all) {
      if (t.state === 'active' || this.released.has(key(t))) continue;
      const b = t.binding;
      const alive = b.kind === 'process'
        ? await this.deps.processes.isAlive({ pid: b.pid, startTime: b.startTime })
        : await this.deps.processes.cgroupExists(b.path);
      if (!alive) this.released.add(key(t));
    }
  }
}

const key = (t: TaskRecord) => `${t.agent}/${t.id}`;
