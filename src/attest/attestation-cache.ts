import { RECHECK_ALL, type Attestation, type AttestOptions, type Attestor, type RecheckNeeds } from './attestor.js';
import type { PeerCredentials } from './peercred.js';
import type { Selector } from '../spiffe/selector.js';

const SHARED_LISTS = 4096;

/**
 * Attests each connection once, not once per call. The attestation is kept with the
 * connection's credentials (so it goes away with the connection) and reused while
 * Attestor.stillDescribes() says its process is the same and unchanged: the same process (its
 * /proc entry, so never a newcomer with its PID), running the same executable file, and, when
 * some entry or task depends on them (`recheck`), in the same cgroup with unchanged account files. Otherwise, or when the cached one
 * lacks something now needed (a sha256), it attests again. The parent chain is walked again on
 * every call that needs it.
 *
 * Checked on every call, so a process that connects and then execs another binary is attested
 * as the new binary on its next call (the executable's identity changed); see SECURITY.md for
 * what no check on this side can tell (a socket passed to another process).
 */
export class AttestationCache {
  private readonly byConnection = new WeakMap<PeerCredentials, Attestation>();
  /**
   * Selector lists seen lately, each kept once: every connection of one process (and every process
   * of one user running one binary) has the same list, and 10,000 connections would otherwise hold
   * 10,000 copies. Shared lists are frozen; the map is emptied when it grows past SHARED_LISTS.
   */
  private readonly selectorLists = new Map<string, Selector[]>();
  private hitCount = 0;
  private missCount = 0;

  constructor(private readonly attestor: Pick<Attestor, 'attest' | 'stillDescribes' | 'ancestorsOf'>) {}

  async attest(peer: PeerCredentials, opts: AttestOptions & { recheck?: RecheckNeeds }): Promise<Attestation> {
    const withAncestors = opts.withAncestors ?? true;
    const cached = this.byConnection.get(peer);
    if (cached && (cached.facts.withSha256 || !opts.withSha256) && (await this.attestor.stillDescribes(cached, opts.recheck ?? RECHECK_ALL))) {
      this.hitCount++;
      if (!withAncestors) return cached.ancestorsKnown ? { ...cached, ancestors: [], ancestorsKnown: false } : cached;
      // A grandparent may have exited since (the chain changes above an unchanged parent): walk
      // it again; this is only asked for while some task is bound with its descendants.
      return { ...cached, ancestors: await this.attestor.ancestorsOf(cached.process), ancestorsKnown: true };
    }
    this.missCount++;
    const fresh = await this.attestor.attest(peer, { withSha256: opts.withSha256, withAncestors });
    fresh.selectors = this.shared(fresh.selectors);
    this.byConnection.set(peer, fresh);
    return fresh;
  }

  private shared(selectors: Selector[]): Selector[] {
    // JSON, not a joined string: a value may hold any character (an executable's path is the
    // caller's choice), and two different lists must never share a key.
    const key = JSON.stringify(selectors.map((sel) => [sel.type, sel.value]));
    const known = this.selectorLists.get(key);
    if (known) return known;
    if (this.selectorLists.size >= SHARED_LISTS) this.selectorLists.clear();
    const list = Object.freeze(selectors.map((sel) => Object.freeze({ ...sel }))) as Selector[];
    this.selectorLists.set(key, list);
    return list;
  }

  /** Calls answered from the cache and calls that attested, for metrics and tests. */
  stats(): { hits: number; misses: number } {
    return { hits: this.hitCount, misses: this.missCount };
  }
}
