import type { Logger } from '../common/logger.js';
import { EntryIndex } from '../entries/match.js';
import { compareTasks, parseTaskChangeKey, taskChangeKey } from '../datastore/rules.js';
import type { AuthorityRecord, Change, Datastore, NodeRecord, RegistrationEntry, Revocation, TaskRecord } from '../datastore/types.js';

/** One applied change, with the record before and after (undefined: absent). */
export type StateChange =
  | { kind: 'entry'; before?: RegistrationEntry; after?: RegistrationEntry }
  | { kind: 'task'; before?: TaskRecord; after?: TaskRecord }
  | { kind: 'revocation'; spiffeId: string; before?: Revocation; after?: Revocation }
  | { kind: 'authority'; serverId: string; before?: AuthorityRecord; after?: AuthorityRecord }
  | { kind: 'node'; name: string; before?: NodeRecord; after?: NodeRecord };

export interface ReadModelDeps {
  datastore: Pick<Datastore, 'entries' | 'tasks' | 'revocations' | 'authorities' | 'nodes' | 'changes'>;
  logger: Logger;
  /**
   * How often to look at the change feed without a notification: the safety net for writes by
   * other servers when a notification is lost (or the database has none, like SQLite).
   */
  pollIntervalMs: number;
  /** The host this model serves (EntryIndex): null on the server, the node name on a node's agent. */
  node?: string | null;
}

const BATCH = 1000;

/**
 * The in-memory read model: registration entries (indexed for matching), active tasks, the deny
 * list and the trust material other servers publish, each kept current from the datastore's
 * change feed by revision. The Workload API path reads only this, synchronously; it never waits on
 * the database. Writes (admin calls, the scheduler) go to the datastore and come back through the
 * feed like writes made by any other server; `sync()` lets a writer wait until its own write is
 * visible here before it answers, so callers read their writes.
 */
export class ReadModel {
  readonly entries: EntryIndex;
  private readonly tasks = new Map<string, TaskRecord>();
  private readonly revocations = new Map<string, Revocation>();
  private readonly authorityRecords = new Map<string, AuthorityRecord>();
  private readonly nodeRecords = new Map<string, NodeRecord>();
  private activeCache: TaskRecord[] | undefined;
  private readonly listeners = new Set<(changes: StateChange[]) => void>();
  private rev = 0;
  private syncing: Promise<void> | undefined;
  private again = false;
  private unwatch: (() => void) | undefined;
  private timer: NodeJS.Timeout | undefined;
  private healthy = true;

  private constructor(private readonly deps: ReadModelDeps) {
    this.entries = new EntryIndex(deps.node ?? null);
  }

  /**
   * Loads a consistent snapshot: the head revision is read first, so anything written while the
   * lists are read is applied again by the catch-up that follows (re-reading a record is idempotent).
   */
  static async load(deps: ReadModelDeps): Promise<ReadModel> {
    const model = new ReadModel(deps);
    const ds = deps.datastore;
    model.rev = await ds.changes.head();
    const [entries, tasks, revocations, authorities, nodes] = await Promise.all([
      ds.entries.list(),
      ds.tasks.list({ state: 'active' }),
      ds.revocations.list(),
      ds.authorities.list(),
      ds.nodes.list(),
    ]);
    model.entries.replace(entries);
    for (const t of tasks) model.tasks.set(taskChangeKey(t.agent, t.id), t);
    for (const r of revocations) model.revocations.set(r.spiffeId, r);
    for (const a of authorities) model.authorityRecords.set(a.serverId, a);
    for (const n of nodes) model.nodeRecords.set(n.name, n);
    await model.sync();
    return model;
  }

  /** Follows the feed: on every notification and every pollIntervalMs. */
  start(): void {
    this.unwatch = this.deps.datastore.changes.watch(() => void this.sync().catch(() => {}));
    const poll = () => {
      this.timer = setTimeout(() => {
        void this.sync()
          .catch(() => {})
          .finally(() => {
            if (this.timer) poll();
          });
      }, this.deps.pollIntervalMs);
      this.timer.unref();
    };
    poll();
  }

  close(): void {
    this.unwatch?.();
    this.unwatch = undefined;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  /** Latest change-feed revision applied. */
  get revision(): number {
    return this.rev;
  }

  /** False after a failed catch-up (database unreachable) until the next one succeeds. */
  get upToDate(): boolean {
    return this.healthy;
  }

  onChange(listener: (changes: StateChange[]) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Active tasks, oldest first (a shared, frozen array: rebuilt only when tasks change). */
  activeTasks(): readonly TaskRecord[] {
    if (!this.activeCache) {
      this.activeCache = Object.freeze(
        [...this.tasks.values()].sort(compareTasks),
      ) as TaskRecord[];
    }
    return this.activeCache;
  }

  activeTask(agent: string, id: string): TaskRecord | undefined {
    return this.tasks.get(taskChangeKey(agent, id));
  }

  isRevoked(spiffeId: string): boolean {
    return this.revocations.has(spiffeId);
  }

  revocation(spiffeId: string): Revocation | undefined {
    return this.revocations.get(spiffeId);
  }

  /** Trust material published by every server on this datastore (this one included). */
  authorities(): AuthorityRecord[] {
    return [...this.authorityRecords.values()];
  }

  /** Per-host agents (active and evicted), by name. */
  node(name: string): NodeRecord | undefined {
    return this.nodeRecords.get(name);
  }

  nodes(): NodeRecord[] {
    return [...this.nodeRecords.values()];
  }

  /**
   * Applies every change committed so far. Concurrent calls share one catch-up, and a call made
   * while one runs gets another pass after it, so it also sees writes committed just before it.
   */
  sync(): Promise<void> {
    if (this.syncing) {
      this.again = true;
      return this.syncing;
    }
    this.syncing = (async () => {
      try {
        do {
          this.again = false;
          await this.catchUp();
        } while (this.again);
        if (!this.healthy) this.deps.logger.info({ revision: this.rev }, 'read model: caught up with the datastore again');
        this.healthy = true;
      } catch (err) {
        if (this.healthy) this.deps.logger.warn({ err, revision: this.rev }, 'read model: cannot read the change feed; serving what it holds');
        this.healthy = false;
        throw err;
      } finally {
        this.syncing = undefined;
      }
    })();
    return this.syncing;
  }

  private async catchUp(): Promise<void> {
    for (;;) {
      const batch = await this.deps.datastore.changes.since(this.rev, BATCH);
      if (batch.length === 0) return;
      const applied: StateChange[] = [];
      // One re-read per key per batch: the record's current state covers all its changes in it.
      const seen = new Set<string>();
      for (const change of [...batch].reverse()) {
        const id = `${change.resource}\u0000${change.key}`;
        if (seen.has(id)) continue;
        seen.add(id);
        const result = await this.apply(change);
        if (result) applied.unshift(result);
      }
      this.rev = batch[batch.length - 1]!.revision;
      if (applied.length > 0) this.emit(applied);
      if (batch.length < BATCH) return;
    }
  }

  private async apply(change: Change): Promise<StateChange | undefined> {
    const ds = this.deps.datastore;
    switch (change.resource) {
      case 'entry': {
        const before = this.entries.get(change.key);
        const after = await ds.entries.get(change.key);
        if (after) this.entries.upsert(after);
        else this.entries.remove(change.key);
        if (!before && !after) return undefined;
        if (before && after && before.revision === after.revision) return undefined;
        return { kind: 'entry', before, after: after && this.entries.get(after.id) };
      }
      case 'task': {
        const { agent, id } = parseTaskChangeKey(change.key);
        const before = this.tasks.get(change.key);
        const after = await ds.tasks.get(agent, id);
        if (after?.state === 'active') this.tasks.set(change.key, after);
        else this.tasks.delete(change.key);
        this.activeCache = undefined;
        if (!before && after?.state !== 'active') return undefined;
        if (before && after && before.state === after.state) return undefined;
        return { kind: 'task', before, after };
      }
      case 'revocation': {
        const before = this.revocations.get(change.key);
        const after = await ds.revocations.get(change.key);
        if (after) this.revocations.set(change.key, after);
        else this.revocations.delete(change.key);
        if (!before && !after) return undefined;
        if (before && after && before.keepUntil === after.keepUntil && before.revokedAt === after.revokedAt) return undefined;
        return { kind: 'revocation', spiffeId: change.key, before, after };
      }
      case 'authority': {
        const before = this.authorityRecords.get(change.key);
        const after = await ds.authorities.get(change.key);
        if (after) this.authorityRecords.set(change.key, after);
        else this.authorityRecords.delete(change.key);
        if (!before && !after) return undefined;
        return { kind: 'authority', serverId: change.key, before, after };
      }
      case 'node': {
        const before = this.nodeRecords.get(change.key);
        const after = await ds.nodes.get(change.key);
        if (after) this.nodeRecords.set(change.key, after);
        else this.nodeRecords.delete(change.key);
        if (!before && !after) return undefined;
        return { kind: 'node', name: change.key, before, after };
      }
    }
  }

  private emit(changes: StateChange[]): void {
    for (const listener of [...this.listeners]) {
      try {
        listener(changes);
      } catch (err) {
        this.deps.logger.error({ err }, 'read model: change listener failed');
      }
    }
  }
}
