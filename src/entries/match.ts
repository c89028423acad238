import { selectorKey, type Selector } from '../spiffe/selector.js';
import { compareEntries } from '../datastore/rules.js';
import type { RegistrationEntry } from '../datastore/types.js';

/*
 * Matching rules, shared by matchEntries and EntryIndex:
 *  - an entry matches when every one of its selectors is among the caller's (exact string
 *    equality of "type:value"), and it has not expired (it matches while now < expiresAt);
 *  - an entry with no selectors matches nothing: an empty requirement must never mean "anyone";
 *  - results are ordered by createdAt, then id, so svids[0] (the default SVID that most clients
 *    use) is the oldest matching entry and stays the same as entries come and go;
 *  - one result per SPIFFE ID: the first (oldest) entry wins, so two entries for the same ID
 *    never yield two SVIDs with the same name.
 */

function entryMatches(entry: RegistrationEntry, callerKeys: ReadonlySet<string>, now: number): boolean {
  if (entry.selectors.length === 0) return false;
  if (entry.expiresAt !== null && now >= entry.expiresAt) return false;
  return entry.selectors.every((s) => callerKeys.has(selectorKey(s)));
}

function orderAndDedupe(matched: RegistrationEntry[]): RegistrationEntry[] {
  matched.sort(compareEntries);
  const seen = new Set<string>();
  return matched.filter((e) => !seen.has(e.spiffeId) && seen.add(e.spiffeId));
}

/** The entries the caller's selectors satisfy at `now` (same objects as given, not copies). */
export function matchEntries(
  entries: readonly RegistrationEntry[],
  selectors: readonly Selector[],
  now: number,
): RegistrationEntry[] {
  const callerKeys = new Set(selectors.map(selectorKey));
  return orderAndDedupe(entries.filter((e) => entryMatches(e, callerKeys, now)));
}

/** "sha256" for unix:sha256:<hex>: the part of the value before its first ":". */
function selectorKind(s: Selector): string {
  const colon = s.value.indexOf(':');
  return colon === -1 ? s.value : s.value.slice(0, colon);
}

function frozenCopy(entry: RegistrationEntry): RegistrationEntry {
  return Object.freeze({
    ...entry,
    selectors: Object.freeze(entry.selectors.map((s) => Object.freeze({ type: s.type, value: s.value }))),
    dnsNames: Object.freeze([...entry.dnsNames]),
    federatesWith: Object.freeze([...entry.federatesWith]),
  }) as RegistrationEntry;
}

function bump(counts: Map<string, number>, key: string, delta: number): void {
  const n = (counts.get(key) ?? 0) + delta;
  if (n <= 0) counts.delete(key);
  else counts.set(key, n);
}

/**
 * In-memory snapshot of the registration entries, fed by the datastore, answering "which entries
 * does this caller match" on every Workload API call.
 *
 * Each entry is filed under exactly one of its selectors, the least common one when it is filed.
 * Since an entry needs all of its selectors, any one of them is a necessary condition: looking up
 * the caller's selectors finds every candidate exactly once, and the rare selector keeps the lists
 * short even when thousands of entries share a common one (unix:uid:1000). Candidates are then
 * checked in full. Entries are stored and returned frozen: callers get no handle to change the
 * snapshot.
 */
export class EntryIndex {
  private readonly entries = new Map<string, { entry: RegistrationEntry; anchor: string | undefined }>();
  /**
   * Expiry times of the entries that have one, by ID: the scheduler asks on every tick (every
   * admin call and mint pokes it), and walking 10,000 entries that never expire each time was
   * 18% of the server's CPU in the agents benchmark.
   */
  private readonly expiring = new Map<string, number>();
  private readonly postings = new Map<string, Set<string>>();
  /** How many entries use each selector: picks the anchor. */
  private readonly selectorCounts = new Map<string, number>();
  /** How many entries use each selector kind ("uid", "sha256", ...). */
  private readonly kindCounts = new Map<string, number>();
  private changes = 0;

  /**
   * @param node the host whose callers this index answers: null for the server's own socket
   *   (entries limited to a node never match there), a node name on that node's agent (entries
   *   without a node and entries for this node match).
   */
  constructor(private readonly node: string | null = null) {}

  get size(): number {
    return this.entries.size;
  }

  /** Expiry times of the entries that have one (the scheduler refreshes streams when one passes). */
  expiryTimes(): number[] {
    return [...this.expiring.values()];
  }

  /** Grows on every change to the set of entries: an answer memoized at one version is stale at another. */
  get version(): number {
    return this.changes;
  }

  get(id: string): RegistrationEntry | undefined {
    return this.entries.get(id)?.entry;
  }

  /** Every entry (an agent keeps an SVID ready for each one). */
  list(): RegistrationEntry[] {
    return [...this.entries.values()].map((e) => e.entry);
  }

  /** Swaps in a whole new set of entries (startup, full resync). */
  replace(entries: readonly RegistrationEntry[]): void {
    this.changes++;
    this.entries.clear();
    this.expiring.clear();
    this.postings.clear();
    this.selectorCounts.clear();
    this.kindCounts.clear();
    // Count first so anchors are chosen against the final frequencies, not the insertion order.
    for (const e of entries) for (const s of e.selectors) bump(this.selectorCounts, selectorKey(s), 1);
    for (const e of entries) {
      for (const s of e.selectors) bump(this.selectorCounts, selectorKey(s), -1);
      this.upsert(e);
    }
  }

  upsert(entry: RegistrationEntry): void {
    this.changes++;
    this.remove(entry.id);
    const frozen = frozenCopy(entry);
    const keys = [...new Set(frozen.selectors.map(selectorKey))];
    for (const k of keys) bump(this.selectorCounts, k, 1);
    for (const s of frozen.selectors) bump(this.kindCounts, selectorKind(s), 1);
    let anchor: string | undefined;
    for (const k of keys) {
      if (
        anchor === undefined ||
        this.selectorCounts.get(k)! < this.selectorCounts.get(anchor)! ||
        (this.selectorCounts.get(k) === this.selectorCounts.get(anchor) && k < anchor)
      ) {
        anchor = k;
      }
    }
    if (anchor !== undefined) {
      let list = this.postings.get(anchor);
      if (!list) this.postings.set(anchor, (list = new Set()));
      list.add(frozen.id);
    }
    this.entries.set(frozen.id, { entry: frozen, anchor });
    if (frozen.expiresAt !== null) this.expiring.set(frozen.id, frozen.expiresAt);
  }

  remove(id: string): void {
    const current = this.entries.get(id);
    if (!current) return;
    this.changes++;
    this.entries.delete(id);
    this.expiring.delete(id);
    const { entry, anchor } = current;
    for (const k of new Set(entry.selectors.map(selectorKey))) bump(this.selectorCounts, k, -1);
    for (const s of entry.selectors) bump(this.kindCounts, selectorKind(s), -1);
    if (anchor !== undefined) {
      const list = this.postings.get(anchor);
      list?.delete(id);
      if (list?.size === 0) this.postings.delete(anchor);
    }
  }

  /** Same result as matchEntries over every indexed entry that applies on this host; the entries are frozen. */
  match(selectors: readonly Selector[], now: number): RegistrationEntry[] {
    const callerKeys = new Set(selectors.map(selectorKey));
    const matched: RegistrationEntry[] = [];
    for (const key of callerKeys) {
      for (const id of this.postings.get(key) ?? []) {
        const entry = this.entries.get(id)!.entry;
        if (entry.node !== null && entry.node !== this.node) continue;
        if (entryMatches(entry, callerKeys, now)) matched.push(entry);
      }
    }
    return orderAndDedupe(matched);
  }

  /**
   * Selector kinds some entry uses: the part of the value before its first ":" ("uid", "path",
   * "sha256" for unix:sha256:<hex>). Attestation skips the costly executable hash unless this
   * has "sha256". A fresh set on each call.
   */
  requiredSelectorTypes(): Set<string> {
    return new Set(this.kindCounts.keys());
  }

  /** Whether some entry has a selector of this kind (see requiredSelectorTypes); no allocation, for per-call use. */
  usesSelectorKind(kind: string): boolean {
    return this.kindCounts.has(kind);
  }
}
