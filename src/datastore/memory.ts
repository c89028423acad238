import { alreadyExists, failedPrecondition, invalidArgument, notFound } from '../common/errors.js';
import { normalizeSelectors } from '../spiffe/selector.js';
import {
  FINAL_TASK_STATES,
  compareEntries,
  compareIssuances,
  compareNodes,
  compareRevocations,
  compareTasks,
  compareText,
  isExpiredAt,
  joinTokenRefusal,
  mergeRevocation,
  selectorSetHash,
  taskChangeKey,
} from './rules.js';
import {
  asyncDatastore,
  type SyncAnchorStore,
  type SyncAuthorityStore,
  type SyncEntryStore,
  type SyncIssuanceStore,
  type SyncJoinTokenStore,
  type SyncNodeStore,
  type SyncRevocationStore,
  type SyncTaskStore,
} from './sync-engine.js';
import type {
  AuthorityRecord,
  Change,
  ChangeResource,
  Datastore,
  IssuanceRecord,
  JoinTokenRecord,
  NewRegistrationEntry,
  NodeRecord,
  RegistrationEntry,
  Revocation,
  TaskRecord,
  TaskState,
} from './types.js';

/*
 * In-memory Datastore for tests and single-process development. Behaves like the SQLite store
 * (same errors, same ordering, atomic transactions) so the conformance suite holds for both.
 * Records go in and come out through structuredClone: callers never share objects with the store.
 */

const copy = <T>(value: T): T => structuredClone(value);
const taskKey = (agent: string, id: string) => `${agent}\u0000${id}`;
const issuanceKey = (kind: string, serial: string) => `${kind}\u0000${serial}`;

class State {
  readonly entries = new Map<string, RegistrationEntry>();
  readonly tasks = new Map<string, TaskRecord>();
  readonly revocations = new Map<string, Revocation>();
  readonly issuances = new Map<string, IssuanceRecord>();
  readonly authorities = new Map<string, AuthorityRecord>();
  readonly anchors = new Map<string, string>();
  readonly nodes = new Map<string, NodeRecord>();
  readonly joinTokens = new Map<string, JoinTokenRecord>();
  readonly changes: Change[] = [];
  head = 0;
  /** Undo actions of the open transaction(s), newest last; null outside any transaction. */
  undo: Array<() => void> | null = null;
  closed = false;

  check(): void {
    if (this.closed) throw failedPrecondition('datastore: closed');
  }

  set<K, V>(map: Map<K, V>, key: K, value: V): void {
    if (this.undo) {
      const had = map.has(key);
      const previous = map.get(key);
      this.undo.push(() => (had ? map.set(key, previous as V) : map.delete(key)));
    }
    map.set(key, value);
  }

  logChange(resource: ChangeResource, key: string): void {
    const change = { revision: ++this.head, resource, key };
    this.changes.push(change);
    this.undo?.push(() => {
      this.changes.splice(this.changes.indexOf(change), 1);
      this.head--;
    });
  }

  /** Runs fn all-or-nothing (a failed multi-row write leaves nothing behind, as SQL does). */
  atomic<T>(fn: () => T): T {
    const outermost = this.undo === null;
    if (outermost) this.undo = [];
    const undo = this.undo!;
    const mark = undo.length;
    try {
      return fn();
    } catch (err) {
      while (undo.length > mark) undo.pop()!();
      throw err;
    } finally {
      if (outermost) this.undo = null;
    }
  }

  delete<K, V>(map: Map<K, V>, key: K): void {
    if (!map.has(key)) return;
    if (this.undo) {
      const previous = map.get(key) as V;
      this.undo.push(() => map.set(key, previous));
    }
    map.delete(key);
  }
}

class MemoryEntryStore implements SyncEntryStore {
  constructor(private readonly s: State) {}

  create(entry: NewRegistrationEntry, now: number): RegistrationEntry {
    this.s.check();
    if (this.s.entries.has(entry.id)) throw alreadyExists(`entry ${entry.id} already exists`);
    const record: RegistrationEntry = {
      ...copy(entry),
      selectors: normalizeSelectors(entry.selectors).map((s) => ({ ...s })),
      createdAt: now,
      updatedAt: now,
      revision: 1,
    };
    this.checkUnique(record);
    this.s.atomic(() => {
      this.s.set(this.s.entries, record.id, record);
      this.s.logChange('entry', record.id);
    });
    return copy(record);
  }

  update(entry: NewRegistrationEntry, now: number, expectedRevision?: number): RegistrationEntry {
    this.s.check();
    const current = this.s.entries.get(entry.id);
    if (!current) throw notFound(`entry ${entry.id} not found`);
    if (expectedRevision !== undefined && expectedRevision !== current.revision) {
      throw failedPrecondition(
        `entry ${entry.id}: revision ${expectedRevision} is stale (current revision ${current.revision})`,
      );
    }
    const record: RegistrationEntry = {
      ...copy(entry),
      selectors: normalizeSelectors(entry.selectors).map((s) => ({ ...s })),
      createdAt: current.createdAt,
      updatedAt: now,
      revision: current.revision + 1,
    };
    this.checkUnique(record);
    this.s.atomic(() => {
      this.s.set(this.s.entries, record.id, record);
      this.s.logChange('entry', record.id);
    });
    return copy(record);
  }

  delete(id: string): RegistrationEntry {
    this.s.check();
    const current = this.s.entries.get(id);
    if (!current) throw notFound(`entry ${id} not found`);
    this.s.atomic(() => {
      this.s.delete(this.s.entries, id);
      this.s.logChange('entry', id);
    });
    return copy(current);
  }

  get(id: string): RegistrationEntry | undefined {
    this.s.check();
    const e = this.s.entries.get(id);
    return e && copy(e);
  }

  list(): RegistrationEntry[] {
    this.s.check();
    return [...this.s.entries.values()].sort(compareEntries).map(copy);
  }

  private checkUnique(record: RegistrationEntry): void {
    const hash = selectorSetHash(record.selectors, record.node);
    for (const other of this.s.entries.values()) {
      if (other.id !== record.id && other.spiffeId === record.spiffeId && selectorSetHash(other.selectors, other.node) === hash) {
        throw alreadyExists(
          `entry: an entry with spiffe_id ${record.spiffeId} and the same selectors already exists (${other.id})`,
        );
      }
    }
  }
}

class MemoryTaskStore implements SyncTaskStore {
  constructor(private readonly s: State) {}

  create(task: TaskRecord): TaskRecord {
    this.s.check();
    const key = taskKey(task.agent, task.id);
    if (this.s.tasks.has(key)) throw alreadyExists(`task ${task.agent}/${task.id} already exists`);
    if (task.state !== 'active' && !FINAL_TASK_STATES.has(task.state)) throw invalidArgument(`task: unknown state ${String(task.state)}`);
    const record = copy(task);
    this.s.atomic(() => {
      this.s.set(this.s.tasks, key, record);
      this.s.logChange('task', taskChangeKey(task.agent, task.id));
    });
    return copy(record);
  }

  findById(id: string): TaskRecord[] {
    this.s.check();
    return [...this.s.tasks.values()].filter((t) => t.id === id).sort(compareTasks).map(copy);
  }

  get(agent: string, id: string): TaskRecord | undefined {
    this.s.check();
    const t = this.s.tasks.get(taskKey(agent, id));
    return t && copy(t);
  }

  list(filter: { agent?: string; state?: TaskState; node?: string } = {}): TaskRecord[] {
    this.s.check();
    return [...this.s.tasks.values()]
      .filter((t) => (filter.agent === undefined || t.agent === filter.agent) && (filter.state === undefined || t.state === filter.state))
      .filter((t) => filter.node === undefined || t.node === filter.node)
      .sort(compareTasks)
      .map(copy);
  }

  finish(agent: string, id: string, state: Exclude<TaskState, 'active'>, at: number, reason: string): TaskRecord {
    this.s.check();
    if (!FINAL_TASK_STATES.has(state)) throw invalidArgument(`task: final state must be ended, revoked or expired, not ${String(state)}`);
    const key = taskKey(agent, id);
    const current = this.s.tasks.get(key);
    if (!current) throw notFound(`task ${agent}/${id} not found`);
    if (current.state !== 'active') throw failedPrecondition(`task ${agent}/${id} is ${current.state}, not active`);
    const record: TaskRecord = { ...copy(current), state, endedAt: at, endReason: reason };
    this.s.atomic(() => {
      this.s.set(this.s.tasks, key, record);
      this.s.logChange('task', taskChangeKey(agent, id));
    });
    return copy(record);
  }
}

class MemoryRevocationStore implements SyncRevocationStore {
  constructor(private readonly s: State) {}

  add(revocation: Revocation): Revocation {
    this.s.check();
    const merged = mergeRevocation(this.s.revocations.get(revocation.spiffeId), revocation);
    this.s.atomic(() => {
      this.s.set(this.s.revocations, merged.spiffeId, merged);
      this.s.logChange('revocation', merged.spiffeId);
    });
    return copy(merged);
  }

  get(spiffeId: string): Revocation | undefined {
    this.s.check();
    const r = this.s.revocations.get(spiffeId);
    return r && copy(r);
  }

  list(): Revocation[] {
    this.s.check();
    return [...this.s.revocations.values()].sort(compareRevocations).map(copy);
  }

  prune(now: number): number {
    this.s.check();
    let n = 0;
    this.s.atomic(() => {
      for (const [key, r] of [...this.s.revocations]) {
        if (isExpiredAt(r.keepUntil, now)) {
          this.s.delete(this.s.revocations, key);
          this.s.logChange('revocation', key);
          n++;
        }
      }
    });
    return n;
  }
}

class MemoryIssuanceStore implements SyncIssuanceStore {
  constructor(private readonly s: State) {}

  record(issuances: readonly IssuanceRecord[]): void {
    this.s.check();
    this.s.atomic(() => {
      for (const issuance of issuances) {
        const key = issuanceKey(issuance.kind, issuance.serial);
        if (issuance.kind !== 'x509' && issuance.kind !== 'jwt') throw invalidArgument(`issuance: unknown kind ${String(issuance.kind)}`);
        if (this.s.issuances.has(key)) throw alreadyExists(`issuance: ${issuance.kind} serial ${issuance.serial} already recorded`);
        this.s.set(this.s.issuances, key, copy(issuance));
      }
    });
  }

  listForSpiffeId(spiffeId: string): IssuanceRecord[] {
    this.s.check();
    return this.forId(spiffeId).sort(compareIssuances).map(copy);
  }

  latestNotAfter(spiffeId: string): number | undefined {
    this.s.check();
    let latest: number | undefined;
    for (const i of this.forId(spiffeId)) if (latest === undefined || i.notAfter > latest) latest = i.notAfter;
    return latest;
  }

  listRevokedUnexpired(now: number): IssuanceRecord[] {
    this.s.check();
    return [...this.s.issuances.values()]
      .filter((i) => i.kind === 'x509' && !isExpiredAt(i.notAfter, now) && this.s.revocations.has(i.spiffeId))
      .sort(compareIssuances)
      .map(copy);
  }

  countForSpiffeId(spiffeId: string): number {
    this.s.check();
    return this.forId(spiffeId).length;
  }

  prune(now: number): number {
    this.s.check();
    let n = 0;
    for (const [key, i] of [...this.s.issuances]) {
      if (isExpiredAt(i.notAfter, now)) {
        this.s.delete(this.s.issuances, key);
        n++;
      }
    }
    return n;
  }

  private forId(spiffeId: string): IssuanceRecord[] {
    return [...this.s.issuances.values()].filter((i) => i.spiffeId === spiffeId);
  }
}

class MemoryAuthorityStore implements SyncAuthorityStore {
  constructor(private readonly s: State) {}

  put(record: AuthorityRecord): void {
    this.s.check();
    this.s.atomic(() => {
      this.s.set(this.s.authorities, record.serverId, copy(record));
      this.s.logChange('authority', record.serverId);
    });
  }

  get(serverId: string): AuthorityRecord | undefined {
    this.s.check();
    const r = this.s.authorities.get(serverId);
    return r && copy(r);
  }

  list(): AuthorityRecord[] {
    this.s.check();
    return [...this.s.authorities.values()].sort((a, b) => compareText(a.serverId, b.serverId)).map(copy);
  }

  prune(now: number): number {
    this.s.check();
    let n = 0;
    this.s.atomic(() => {
      for (const [key, r] of [...this.s.authorities]) {
        if (r.retireAt !== null && r.retireAt < now) {
          this.s.delete(this.s.authorities, key);
          this.s.logChange('authority', key);
          n++;
        }
      }
    });
    return n;
  }
}

class MemoryAnchorStore implements SyncAnchorStore {
  constructor(private readonly s: State) {}

  get(name: string): string | undefined {
    this.s.check();
    return this.s.anchors.get(name);
  }

  put(name: string, value: string): void {
    this.s.check();
    this.s.set(this.s.anchors, name, value);
  }
}

class MemoryNodeStore implements SyncNodeStore {
  constructor(private readonly s: State) {}

  put(node: NodeRecord): NodeRecord {
    this.s.check();
    if (!['active', 'evicted'].includes(node.state) || !['join_token', 'x509pop'].includes(node.attestation)) {
      throw invalidArgument(`node: unknown state or attestation (${node.state}, ${node.attestation})`);
    }
    const record = copy(node);
    this.s.atomic(() => {
      this.s.set(this.s.nodes, record.name, record);
      this.s.logChange('node', record.name);
    });
    return copy(record);
  }

  get(name: string): NodeRecord | undefined {
    this.s.check();
    const n = this.s.nodes.get(name);
    return n && copy(n);
  }

  list(): NodeRecord[] {
    this.s.check();
    return [...this.s.nodes.values()].sort(compareNodes).map(copy);
  }
}

class MemoryJoinTokenStore implements SyncJoinTokenStore {
  constructor(private readonly s: State) {}

  create(token: JoinTokenRecord): JoinTokenRecord {
    this.s.check();
    if (this.s.joinTokens.has(token.hash)) throw alreadyExists('join token already exists');
    this.s.set(this.s.joinTokens, token.hash, copy(token));
    return copy(token);
  }

  consume(hash: string, now: number): JoinTokenRecord {
    this.s.check();
    const current = this.s.joinTokens.get(hash);
    if (!current) throw notFound('join token not found');
    if (current.usedAt !== null || isExpiredAt(current.expiresAt, now)) {
      throw failedPrecondition(joinTokenRefusal({ used_at: current.usedAt, expires_at: current.expiresAt })!);
    }
    const used = { ...copy(current), usedAt: now };
    this.s.set(this.s.joinTokens, hash, used);
    return copy(used);
  }

  prune(now: number): number {
    this.s.check();
    let n = 0;
    this.s.atomic(() => {
      for (const [key, t] of [...this.s.joinTokens]) {
        if (isExpiredAt(t.expiresAt, now)) {
          this.s.delete(this.s.joinTokens, key);
          n++;
        }
      }
    });
    return n;
  }
}

export function createMemoryDatastore(): Datastore {
  const s = new State();
  return asyncDatastore({
    kind: 'memory',
    stores: {
      entries: new MemoryEntryStore(s),
      tasks: new MemoryTaskStore(s),
      revocations: new MemoryRevocationStore(s),
      issuances: new MemoryIssuanceStore(s),
      authorities: new MemoryAuthorityStore(s),
      anchors: new MemoryAnchorStore(s),
      nodes: new MemoryNodeStore(s),
      joinTokens: new MemoryJoinTokenStore(s),
      changes: {
        since: (after, limit) => s.changes.filter((c) => c.revision > after).slice(0, limit).map(copy),
        head: () => s.head,
        prune(before) {
          const keep = s.changes.filter((c) => c.revision >= before);
          const n = s.changes.length - keep.length;
          s.changes.splice(0, s.changes.length, ...keep);
          return n;
        },
      },
    },
    begin() {
      s.check();
      s.undo = [];
    },
    commit() {
      s.undo = null;
    },
    rollback() {
      const undo = s.undo ?? [];
      while (undo.length > 0) undo.pop()!();
      s.undo = null;
    },
    ping: () => s.check(),
    close() {
      s.closed = true;
    },
    mapError: (err) => err,
  });
}
