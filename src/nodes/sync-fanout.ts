import type { Clock } from '../common/clock.js';
import type { AuthorityRecord } from '../datastore/types.js';
import type { StateChange } from '../state/read-model.js';
import { changesByNode, type NodeView, type ViewChange } from './authorize.js';

/*
 * The fan-out of state changes to the nodes' Sync streams. With many agents connected, every
 * change (each task end adds a deny-list row, each CRL re-signing republishes an authority record)
 * reaches every stream, so the work per change must not be per stream:
 * - it runs on a later turn, never inside the admin call whose write caused it (the read model
 *   emits changes synchronously while that call waits for its write to be visible);
 * - deliveries are at least minIntervalMs apart: a change after a quiet spell goes out on the next
 *   turn; changes that follow closely (a task end's deny-list row, the CRLs re-signed for it a
 *   few milliseconds later, the next task's row) wait for the interval's end and go out together;
 * - of the deny-list rows and authority records that changed again within one delivery, only
 *   the latest version is sent: every node sees every change of those (no per-node filter), so a
 *   later version replaces the earlier one everywhere anyway. An authority record carries the
 *   server's CRLs, tens of KB once many SVIDs are revoked: under a burst of revocations each
 *   stream gets the newest CRLs once per delivery, not once per re-signing;
 * - the batches of one delivery become one message per stream when no entry or task changed in
 *   two of them; otherwise each batch stays one message, in order, because entries and tasks are
 *   filtered per node and one message must never carry two versions of a record (a move away
 *   from a node followed by another change elsewhere must still reach it as a deletion);
 * - the nodes' shares are computed once per message (authorize.ts changesByNode: one view for
 *   every node the changes do not name), and each distinct share is encoded once (records to
 *   JSON, message to protobuf): one encoding and one write of the same bytes per stream.
 * Writes made in one turn leave as one HTTP/2 and TLS write per connection.
 */

/** A SyncUpdate as the proto declares it (records as JSON). */
export interface SyncUpdateMessage {
  snapshot: boolean;
  revision: number;
  entries: string[];
  deleted_entries: string[];
  tasks: string[];
  revocations: string[];
  removed_revocations: string[];
  authorities: string[];
  removed_authorities: string[];
  evicted: boolean;
}

/** What the fan-out needs of one Sync stream. */
export interface FanoutStream {
  readonly node: string;
  /**
   * Called before each message written to it: false when the stream may no longer receive
   * updates (it has been ended by the callee, e.g. its node SVID no longer verifies).
   */
  admit(changes: readonly StateChange[]): boolean;
  write(encoded: Buffer): void;
}

export interface SyncFanoutDeps {
  /** The revision the read model has applied (every message carries it). */
  revision(): number;
  /** Protobuf encoding of a SyncUpdate. */
  encode(message: SyncUpdateMessage): Buffer;
  clock: Clock;
  /** Least time between two deliveries (default DEFAULT_MIN_INTERVAL_MS). */
  minIntervalMs?: number;
  /** Runs `fn` on a later turn (default: setImmediate). */
  later?: (fn: () => void) => void;
}

/** A revocation waits at most this long behind the delivery before it (and usually not at all). */
export const DEFAULT_MIN_INTERVAL_MS = 50;

/** The wire form of a node's share of changes and of authority changes. */
export function updateMessage(
  view: NodeView,
  authorities: { put: readonly AuthorityRecord[]; removed: readonly string[] },
  revision: number,
  snapshot: boolean,
  json: (record: object) => string = (r) => JSON.stringify(r),
): SyncUpdateMessage {
  return {
    snapshot,
    revision,
    entries: view.entries.map(json),
    deleted_entries: view.deletedEntries,
    tasks: view.tasks.map(json),
    revocations: view.revocations.map(json),
    removed_revocations: view.removedRevocations,
    authorities: authorities.put.map(json),
    removed_authorities: [...authorities.removed],
    evicted: false,
  };
}

const isEmpty = (m: SyncUpdateMessage) =>
  m.entries.length + m.deleted_entries.length + m.tasks.length + m.revocations.length + m.removed_revocations.length + m.authorities.length + m.removed_authorities.length === 0;

/** One read-model change listener call, with the revision the read model had then applied. */
interface Batch {
  changes: readonly StateChange[];
  revision: number;
}

export class SyncFanout {
  /** Streams whose snapshot is written, and streams still reading theirs (with the changes they will need). */
  private readonly live = new Set<FanoutStream>();
  private readonly waiting = new Map<FanoutStream, Batch[]>();
  /** Streams made ready since the last delivery, with their snapshot's revision. */
  private readonly snapshotAt = new Map<FanoutStream, number>();
  private queued: Batch[] = [];
  private scheduled = false;
  private lastFlushAt = -Infinity;
  private readonly later: (fn: () => void) => void;
  private readonly minIntervalMs: number;

  constructor(private readonly deps: SyncFanoutDeps) {
    this.later = deps.later ?? ((fn) => setImmediate(fn));
    this.minIntervalMs = deps.minIntervalMs ?? DEFAULT_MIN_INTERVAL_MS;
  }

  /** A new stream: changes from now on are kept for it until `ready` (its snapshot is written). */
  add(stream: FanoutStream): void {
    this.waiting.set(stream, []);
  }

  /**
   * The stream's snapshot, read after the change feed stood at `snapshotRevision`, is written.
   * Batches the read model had applied by then are in the snapshot (its lists were read later), so
   * they are not sent again, whether they went to the other streams while the snapshot was read
   * or wait for the next delivery; the rest follow, in order.
   */
  ready(stream: FanoutStream, snapshotRevision: number): void {
    const pending = this.waiting.get(stream);
    if (pending === undefined) return;
    this.waiting.delete(stream);
    this.live.add(stream);
    if (this.queued.some((b) => b.revision <= snapshotRevision)) this.snapshotAt.set(stream, snapshotRevision);
    const newer = pending.filter((b) => b.revision > snapshotRevision);
    for (const changes of coalesce(newer.map((b) => b.changes))) this.deliver(changes, [stream]);
  }

  remove(stream: FanoutStream): void {
    this.waiting.delete(stream);
    this.live.delete(stream);
    this.snapshotAt.delete(stream);
  }

  get size(): number {
    return this.live.size + this.waiting.size;
  }

  /** The read model's change listener: queued, and delivered on a later turn (see minIntervalMs). */
  changed(changes: readonly StateChange[]): void {
    this.queued.push({ changes: [...changes], revision: this.deps.revision() });
    if (this.scheduled) return;
    this.scheduled = true;
    const wait = this.lastFlushAt + this.minIntervalMs - this.deps.clock.now();
    if (wait <= 0) this.later(() => this.flush());
    else void this.deps.clock.sleep(wait).then(() => this.flush());
  }

  /** Delivers everything queued now (also what the scheduled turn does). */
  flush(): void {
    this.scheduled = false;
    this.lastFlushAt = this.deps.clock.now();
    const queued = this.queued;
    this.queued = [];
    for (const pending of this.waiting.values()) pending.push(...queued);
    // Streams whose snapshot already holds some of these batches get only the newer ones.
    const covered = this.snapshotAt;
    const everyone = covered.size === 0 ? [...this.live] : [...this.live].filter((s) => !covered.has(s));
    for (const changes of coalesce(queued.map((b) => b.changes))) this.deliver(changes, everyone);
    for (const [stream, revision] of covered) {
      for (const changes of coalesce(queued.filter((b) => b.revision > revision).map((b) => b.changes))) this.deliver(changes, [stream]);
    }
    covered.clear();
  }

  private deliver(changes: readonly StateChange[], streams: readonly FanoutStream[]): void {
    const { byNode, others } = changesByNode(changes.filter((c): c is ViewChange => c.kind === 'entry' || c.kind === 'task' || c.kind === 'revocation'));
    const put: AuthorityRecord[] = [];
    const removed: string[] = [];
    for (const c of changes) {
      if (c.kind !== 'authority') continue;
      if (c.after) put.push(c.after);
      else removed.push(c.serverId);
    }
    const revision = this.deps.revision();
    // Each record is turned into JSON once, however many views carry it.
    const texts = new Map<object, string>();
    const json = (record: object) => {
      let text = texts.get(record);
      if (text === undefined) texts.set(record, (text = JSON.stringify(record)));
      return text;
    };
    const encoded = new Map<NodeView, Buffer | null>();
    for (const stream of streams) {
      const view = byNode.get(stream.node) ?? others;
      let bytes = encoded.get(view);
      if (bytes === undefined) {
        const message = updateMessage(view, { put, removed }, revision, false, json);
        bytes = isEmpty(message) ? null : this.deps.encode(message);
        encoded.set(view, bytes);
      }
      // Admitted per message: a batch with nothing for the node costs it nothing.
      if (bytes && stream.admit(changes)) stream.write(bytes);
    }
  }
}

/**
 * What one delivery sends, in order: the batches without tasks bound on no node (no node's
 * share) and without every deny-list row and authority record that a later batch changes again
 * (batches left empty dropped), merged into one batch when no entry or task appears in two of them.
 */
export function coalesce(batches: readonly (readonly StateChange[])[]): (readonly StateChange[])[] {
  const later = new Set<string>();
  const out: (readonly StateChange[])[] = [];
  for (let i = batches.length - 1; i >= 0; i--) {
    const kept = batches[i]!.filter((c) => {
      // A task bound on the server's host is in no node's share (authorize.ts).
      if (c.kind === 'task' && !c.before?.node && !c.after?.node) return false;
      const key = c.kind === 'revocation' ? `r\u0000${c.spiffeId}` : c.kind === 'authority' ? `a\u0000${c.serverId}` : undefined;
      if (key === undefined) return true;
      if (later.has(key)) return false;
      later.add(key);
      return true;
    });
    if (kept.length > 0) out.push(kept);
  }
  out.reverse();
  if (out.length < 2) return out;
  const filtered = new Set<string>();
  for (const batch of out) {
    for (const c of batch) {
      const record = c.kind === 'entry' ? c.after ?? c.before : c.kind === 'task' ? c.after ?? c.before : undefined;
      if (!record) continue;
      const key = c.kind === 'entry' ? `e\u0000${(record as { id: string }).id}` : `t\u0000${(record as { agent: string }).agent}\u0000${record.id}`;
      if (filtered.has(key)) return out;
      filtered.add(key);
    }
  }
  return [out.flat()];
}
