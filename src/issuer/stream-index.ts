import { selectorKey } from '../spiffe/selector.js';
import type { RegistrationEntry, TaskRecord } from '../datastore/types.js';
import { taskBindingMatches, type CallerFacts, type Identity } from './identity.js';

/** What the index needs to know about an open stream. */
export interface IndexedStream {
  caller: CallerFacts;
}

class MultiMap<K, V> {
  private readonly map = new Map<K, Set<V>>();

  add(key: K, value: V): void {
    let set = this.map.get(key);
    if (!set) this.map.set(key, (set = new Set()));
    set.add(value);
  }

  delete(key: K, value: V): void {
    const set = this.map.get(key);
    if (!set) return;
    set.delete(value);
    if (set.size === 0) this.map.delete(key);
  }

  get(key: K): ReadonlySet<V> {
    return this.map.get(key) ?? EMPTY;
  }

  has(key: K): boolean {
    return this.map.has(key);
  }

  keys(): IterableIterator<K> {
    return this.map.keys();
  }

  entries(): IterableIterator<[K, Set<V>]> {
    return this.map.entries();
  }
}

const EMPTY: ReadonlySet<never> = new Set();

type SelectorList = CallerFacts['selectors'];

const processKey = (p: { pid: number; startTime: string }) => `${p.pid}@${p.startTime}`;

interface Held {
  keys: string[];
  spiffeIds: string[];
  trustDomains: string[];
}

const NO_STRINGS: string[] = [];
const NOTHING_HELD: Held = { keys: NO_STRINGS, spiffeIds: NO_STRINGS, trustDomains: NO_STRINGS };

const sameList = (a: readonly string[], b: readonly string[]) => a.length === b.length && a.every((x, i) => x === b[i]);
const sameHoldings = (a: Held, b: Held) => sameList(a.keys, b.keys) && sameList(a.spiffeIds, b.spiffeIds) && sameList(a.trustDomains, b.trustDomains);

/**
 * Open streams filed under everything their state depends on, so that a change finds the streams
 * it can affect without looking at the others:
 *  - the caller's facts, fixed for the stream's life: each selector ("unix:uid:1000" covers the
 *    uid), its process and every ancestor (pid and start time: a reused PID is another key), its
 *    cgroup;
 *  - what the stream currently holds, replaced after each recompute: identity keys ("entry:<id>",
 *    "task:<agent>/<id>"), SPIFFE IDs, and the foreign trust domains its identities federate with.
 * A lookup may return more streams than a change really alters (the recompute finds no difference
 * and sends nothing); it never misses one.
 */
export class StreamIndex<S extends IndexedStream> {
  /** What each stream holds now. Its selectors are not copied here: the caller's are fixed, and bySelector answers for them. */
  private readonly streams = new Map<S, Held>();
  /**
   * Selectors are filed per selector list, not per stream: callers of one process (and of one
   * user running one binary) share one list object (attestation-cache.ts), so 10,000 streams file
   * a few lists under their selectors, and each stream once under its list, instead of each stream
   * under each of its selectors (ten or so). A list nobody shares is simply a group of one.
   */
  private readonly bySelector = new MultiMap<string, SelectorList>();
  private readonly byList = new MultiMap<SelectorList, S>();
  private readonly byProcess = new MultiMap<string, S>();
  private readonly byCgroup = new MultiMap<string, S>();
  private readonly byKey = new MultiMap<string, S>();
  private readonly bySpiffeId = new MultiMap<string, S>();
  private readonly byTrustDomain = new MultiMap<string, S>();
  /** End of each held identity (identities with one key are the same entry or task, so they share it). */
  private readonly capOfKey = new Map<string, number>();

  get size(): number {
    return this.streams.size;
  }

  all(): IterableIterator<S> {
    return this.streams.keys();
  }

  add(stream: S): void {
    if (this.streams.has(stream)) return;
    const { caller } = stream;
    this.streams.set(stream, NOTHING_HELD);
    if (!this.byList.has(caller.selectors)) for (const s of caller.selectors) this.bySelector.add(selectorKey(s), caller.selectors);
    this.byList.add(caller.selectors, stream);
    this.byProcess.add(processKey(caller), stream);
    for (const a of caller.ancestors) this.byProcess.add(processKey(a), stream);
    if (caller.cgroup !== null) this.byCgroup.add(caller.cgroup, stream);
  }

  /** Files the stream under its caller's parent chain, read after it was added (late-ancestors.ts). */
  addAncestors(stream: S, ancestors: readonly { pid: number; startTime: string }[]): void {
    if (!this.streams.has(stream)) return;
    for (const a of ancestors) this.byProcess.add(processKey(a), stream);
  }

  /** Files the stream under what it holds now (after a recompute), replacing what it held before. */
  hold(stream: S, identities: readonly Identity[]): void {
    const before = this.streams.get(stream);
    if (!before) return;
    const trustDomains = identities.some((i) => i.federatesWith.length > 0) ? [...new Set(identities.flatMap((i) => i.federatesWith))] : NO_STRINGS;
    const held: Held = {
      keys: identities.map((i) => i.key),
      spiffeIds: identities.map((i) => i.spiffeId.toString()),
      trustDomains,
    };
    // Most recomputes (renewals, CRLs) leave the holdings as they were: nothing to re-file.
    if (!sameHoldings(held, before)) {
      this.unhold(stream, before);
      this.streams.set(stream, held);
      for (const k of held.keys) this.byKey.add(k, stream);
      for (const id of held.spiffeIds) this.bySpiffeId.add(id, stream);
      for (const td of held.trustDomains) this.byTrustDomain.add(td, stream);
    }
    // After re-filing: unhold forgets the end of a key nobody holds any more.
    for (const i of identities) if (i.notAfterCap !== null) this.capOfKey.set(i.key, i.notAfterCap);
  }

  remove(stream: S): void {
    const held = this.streams.get(stream);
    if (!held) return;
    this.streams.delete(stream);
    this.unhold(stream, held);
    const { caller } = stream;
    this.byList.delete(caller.selectors, stream);
    if (!this.byList.has(caller.selectors)) for (const s of caller.selectors) this.bySelector.delete(selectorKey(s), caller.selectors);
    this.byProcess.delete(processKey(caller), stream);
    for (const a of caller.ancestors) this.byProcess.delete(processKey(a), stream);
    if (caller.cgroup !== null) this.byCgroup.delete(caller.cgroup, stream);
  }

  /** Whether some open stream holds this identity key (the SVID cache keeps only those). */
  isHeld(key: string): boolean {
    return this.byKey.has(key);
  }

  /** Streams an entry (as it is, or as it was) is or was offered to, and streams holding it. */
  affectedByEntry(entry: RegistrationEntry, into: Set<S>): void {
    for (const s of this.byKey.get(`entry:${entry.id}`)) into.add(s);
    if (entry.selectors.length === 0) return;
    // Every selector is required, so the rarest one's selector lists are the only candidates.
    const keys = entry.selectors.map(selectorKey);
    let candidates = this.bySelector.get(keys[0]!);
    for (const k of keys) {
      const c = this.bySelector.get(k);
      if (c.size < candidates.size) candidates = c;
    }
    for (const list of candidates) {
      if (keys.every((k) => this.bySelector.get(k).has(list))) for (const s of this.byList.get(list)) into.add(s);
    }
  }

  /** Streams whose caller the task's binding covers (process, descendants, cgroup subtree), and streams holding it. */
  affectedByTask(task: TaskRecord, into: Set<S>): void {
    for (const s of this.byKey.get(`task:${task.agent}/${task.id}`)) into.add(s);
    const b = task.binding;
    if (b.kind === 'process') {
      for (const s of this.byProcess.get(processKey(b))) if (taskBindingMatches(task, s.caller)) into.add(s);
      return;
    }
    for (const [cgroup, streams] of this.byCgroup.entries()) {
      if (cgroup === b.path || cgroup.startsWith(`${b.path}/`)) for (const s of streams) into.add(s);
    }
  }

  holdingSpiffeId(spiffeId: string): ReadonlySet<S> {
    return this.bySpiffeId.get(spiffeId);
  }

  holdingKey(key: string): ReadonlySet<S> {
    return this.byKey.get(key);
  }

  federatingWith(trustDomain: string): ReadonlySet<S> {
    return this.byTrustDomain.get(trustDomain);
  }

  /** Held identity keys whose end (entry expiry, task end plus buffer) is before `time`. */
  keysEndingBefore(time: number): string[] {
    return [...this.capOfKey].filter(([, cap]) => cap < time).map(([key]) => key);
  }

  private unhold(stream: S, held: Held): void {
    for (const k of held.keys) {
      this.byKey.delete(k, stream);
      if (!this.byKey.has(k)) this.capOfKey.delete(k);
    }
    for (const id of held.spiffeIds) this.bySpiffeId.delete(id, stream);
    for (const td of held.trustDomains) this.byTrustDomain.delete(td, stream);
  }
}
