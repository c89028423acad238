import type { TaskRecord } from '../datastore/types.js';
import { taskChangeKey } from '../datastore/rules.js';
import type { StateChange } from '../state/read-model.js';
import { goneBindings, type LivenessInspector } from './liveness.js';

/**
 * Which tasks may still hold processes: every active task, and every finished one until its bound
 * process is seen gone (or its cgroup removed). Identity resolution needs the finished ones too:
 * a process whose task ended or was revoked must receive nothing, not fall back to the entries
 * its uid matches (resolveIdentities).
 *
 * Finished tasks are kept here (not in the read model) and only while their holder may live: a
 * finished task is dropped once a liveness check says its holder is gone. At start-up every
 * finished task in the datastore counts until the first check (fail closed). A process binding
 * names pid and start time, so a dropped one can never match again; a cgroup path could be
 * recreated, and then the new cgroup is an ordinary one.
 */
export class TaskHolders {
  private readonly finished = new Map<string, TaskRecord>();
  private view: readonly TaskRecord[] | undefined;
  private viewOf: readonly TaskRecord[] | undefined;

  constructor(
    private readonly deps: {
      processes: LivenessInspector;
      /** The read model's active tasks. */
      active: () => readonly TaskRecord[];
      /**
       * The host these holders live on: null for the server's own host, a node name on that
       * node's agent. Tasks bound on any other host are never held here: their processes are
       * not in this /proc, and a local process with the same pid must never match them.
       */
      node?: string | null;
    },
  ) {}

  private onThisHost(t: TaskRecord): boolean {
    return t.node === (this.deps.node ?? null);
  }

  /** Start-up: every finished task the datastore knows may still have its process. */
  load(all: readonly TaskRecord[]): void {
    for (const t of all) if (t.state !== 'active' && this.onThisHost(t)) this.finished.set(key(t), t);
    this.view = undefined;
  }

  /** Follows the read model: a task that just finished joins the holders. */
  follow(changes: readonly StateChange[]): void {
    for (const c of changes) {
      if (c.kind === 'task' && c.after && c.after.state !== 'active' && this.onThisHost(c.after)) {
        this.finished.set(key(c.after), c.after);
        this.view = undefined;
      }
    }
  }

  /** The tasks identity resolution must see (a shared array, rebuilt only on change). */
  select(): readonly TaskRecord[] {
    const active = this.deps.active();
    if (!this.view || this.viewOf !== active) {
      this.viewOf = active;
      this.view = Object.freeze([...active.filter((t) => this.onThisHost(t)), ...this.finished.values()]);
    }
    return this.view;
  }

  /** True when some task also covers its process's descendants: only then do parent chains matter. */
  anyWithDescendants(): boolean {
    return this.select().some((t) => t.binding.kind === 'process' && t.binding.descendants);
  }

  /**
   * Drops finished tasks whose process exited or whose cgroup is gone (one listing of the running
   * PIDs, then a read only for a task whose PID is taken). They are dropped together
   * after the pass: the view (and the binding index built on it, per array) changes once per pass,
   * not once per task while requests keep arriving between the checks.
   */
  async prune(): Promise<void> {
    const gone = await goneBindings(this.finished.values(), this.deps.processes);
    if (gone.length === 0) return;
    for (const t of gone) if (this.finished.get(key(t)) === t) this.finished.delete(key(t));
    this.view = undefined;
  }
}

const key = (t: TaskRecord) => taskChangeKey(t.agent, t.id);
