import type { RegistrationEntry, TaskRecord } from '../datastore/types.js';
import type { Selector } from '../spiffe/selector.js';
import { resolveIdentities, type CallerFacts, type Identity } from './identity.js';

const processKey = (p: { pid: number; startTime: string }) => `${p.pid}@${p.startTime}`;

/**
 * Tasks filed by what they are bound to, so identity resolution looks only at the tasks that could
 * cover a caller (its own process, its ancestors, the cgroups above it) instead of at every task:
 * a fan-out slice resolves 64 streams, and thousands of tasks each would make it slow.
 * resolveIdentities still checks each candidate in full (start time, descendants flag).
 */
export class TasksByBinding {
  private static readonly built = new WeakMap<readonly TaskRecord[], TasksByBinding>();
  private readonly byProcess = new Map<string, TaskRecord[]>();
  private readonly byCgroup = new Map<string, TaskRecord[]>();
  /** Some task is bound with its process's descendants: callers' parent chains matter. */
  readonly anyWithDescendants: boolean;

  /** The index of a task list, built once per list (the list is replaced, never changed, on a task change). */
  static of(tasks: readonly TaskRecord[]): TasksByBinding {
    let index = TasksByBinding.built.get(tasks);
    if (!index) TasksByBinding.built.set(tasks, (index = new TasksByBinding(tasks)));
    return index;
  }

  private constructor(tasks: readonly TaskRecord[]) {
    let descendants = false;
    for (const t of tasks) {
      if (t.binding.kind === 'process' && t.binding.descendants) descendants = true;
      const key = t.binding.kind === 'process' ? processKey(t.binding) : t.binding.path;
      const map = t.binding.kind === 'process' ? this.byProcess : this.byCgroup;
      const list = map.get(key);
      if (list) list.push(t);
      else map.set(key, [t]);
    }
    this.anyWithDescendants = descendants;
  }

  /** Some task is bound to a cgroup: callers' cgroups matter. */
  get anyCgroupBinding(): boolean {
    return this.byCgroup.size > 0;
  }

  candidatesFor(caller: CallerFacts): TaskRecord[] {
    const out: TaskRecord[] = [];
    const add = (list: TaskRecord[] | undefined) => list && out.push(...list);
    add(this.byProcess.get(processKey(caller)));
    for (const a of caller.ancestors) add(this.byProcess.get(processKey(a)));
    if (caller.cgroup !== null && this.byCgroup.size > 0) {
      // The caller's cgroup and each cgroup above it: a binding covers its whole subtree.
      for (let path = caller.cgroup; path.length > 1; path = path.slice(0, path.lastIndexOf('/'))) add(this.byCgroup.get(path));
      add(this.byCgroup.get('/'));
    }
    return out;
  }
}

/**
 * A caller's identities from the in-memory state: the entries its selectors match and the tasks
 * bound to it (through this index), minus revoked IDs. The server and the per-host agent resolve
 * alike; only their state's source differs.
 */
export function stateIdentities(deps: {
  state: { entries: { match(selectors: Selector[], now: number): RegistrationEntry[] }; isRevoked(spiffeId: string): boolean };
  holders: { select(): readonly TaskRecord[] };
  taskBufferMs: number;
}): (caller: CallerFacts, now: number) => Identity[] {
  const { state, holders, taskBufferMs } = deps;
  return (caller, now) =>
    resolveIdentities({
      caller,
      matchedEntries: state.entries.match(caller.selectors, now),
      tasks: TasksByBinding.of(holders.select()).candidatesFor(caller),
      isRevoked: (id) => state.isRevoked(id),
      now,
      taskBufferMs,
    });
}
