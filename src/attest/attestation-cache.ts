import { RECHECK_ALL, type Attestation, type AttestOptions, type Attestor, type ProcessFacts, type ProcessRef, type RecheckNeeds } from './attestor.js';
import type { PeerCredentials } from './peercred.js';
import type { Selector } from '../spiffe/selector.js';
import { InternPool } from '../common/intern.js';


function withoutChain(a: Attestation): Attestation {
  return a.ancestorsKnown ? { ...a, ancestors: [], ancestorsKnown: false } : a;
}

/** The checks of a RecheckNeeds as bits (the process's /proc entry is always checked). */
function recheckMask(r: RecheckNeeds): number {
  return (r.executable ? 1 : 0) | (r.cgroup ? 2 : 0) | (r.accountNames ? 4 : 0);
}

/** Processes whose latest attestation is kept for their next connections; the oldest go first beyond this. */
const MAX_PROCESSES = 16_384;

/**
 * Attests each connection once, not once per call, and each process once, not once per
 * connection. The attestation is kept with the connection's credentials (so it goes away with the
 * connection) and reused while Attestor.stillDescribes() says its process is the same and
 * unchanged: the same process (its /proc entry, so never a newcomer with its PID), running the
 * same executable file, and, when some entry or task depends on them (`recheck`), in the same
 * cgroup with unchanged account files. A new connection of a process attested before (same PID,
 * and the same uid and gid from the kernel) reuses that attestation when
 * Attestor.describesConnector() proves the connector is that same, unchanged process (a reconnect
 * storm is mostly programs that open several streams). Otherwise, or when the cached one lacks
 * something now needed (a sha256), it attests again. The parent chain is walked again on every
 * call that needs it.
 *
 * Checked on every call, so a process that connects and then execs another binary is attested
 * as the new binary on its next call (the executable's identity changed); see SECURITY.md for
 * what no check on this side can tell (a socket passed to another process).
 */
export class AttestationCache {
  private readonly byConnection = new WeakMap<PeerCredentials, Attestation>();
  /** The latest attestation of each process, by PID, uid and gid (without the connection's credentials object). */
  private readonly byProcess = new Map<string, Attestation>();
  /**
   * What attestations of different processes hold alike, each kept once (frozen): every process of
   * one user running one binary has the same selector list, and siblings the same parent chain;
   * 10,000 connections would otherwise hold thousands of copies (a parent chain is a dozen objects
   * and strings). Connections of one process share their process's attestation (byProcess).
   */
  private readonly selectorLists = new InternPool<Selector[]>();
  private readonly chains = new InternPool<ProcessRef[]>();
  /**
   * Processes (by their facts, shared by all their connections) that stillDescribes() confirmed
   * in this turn of the event loop, with the checks made (recheckMask): their other calls in the
   * same turn are not checked again. Sixteen connections of one busy process whose calls arrive
   * together cost one check, not sixteen. Forgotten at the turn's end (setImmediate), so a
   * confirmation is never older than the loop iteration that answers with it (see SECURITY.md,
   * "Several calls in one turn of the event loop").
   */
  private readonly confirmedThisTurn = new Map<ProcessFacts, number>();
  private turnEndArmed = false;
  private hitCount = 0;
  private processHitCount = 0;
  private missCount = 0;

  constructor(private readonly attestor: Pick<Attestor, 'attest' | 'stillDescribes' | 'describesConnector' | 'ancestorsOf'>) {}

  async attest(peer: PeerCredentials, opts: AttestOptions & { recheck?: RecheckNeeds }): Promise<Attestation> {
    const withAncestors = opts.withAncestors ?? true;
    const recheck = opts.recheck ?? RECHECK_ALL;
    const usable = (a: Attestation) => a.facts.withSha256 || !opts.withSha256;
    const cached = this.byConnection.get(peer);
    if (cached && usable(cached) && this.stillDescribes(cached, recheck)) {
      this.hitCount++;
      return this.withChain(cached, withAncestors);
    }
    const key = `${peer.pid}:${peer.uid}:${peer.gid}`;
    const sibling = cached ? undefined : this.byProcess.get(key);
    if (sibling && usable(sibling) && (await this.attestor.describesConnector(sibling, peer, recheck))) {
      this.processHitCount++;
      const reused: Attestation = { ...sibling, peer };
      this.byConnection.set(peer, reused);
      return this.withChain(reused, withAncestors);
    }
    this.missCount++;
    const fresh = await this.attestor.attest(peer, { withSha256: opts.withSha256, withAncestors });
    fresh.selectors = this.shared(fresh.selectors);
    fresh.ancestors = this.sharedChain(fresh.ancestors);
    this.byConnection.set(peer, fresh);
    // Kept without the connection's credentials object (its pidfd opener holds the socket).
    this.byProcess.delete(key);
    if (this.byProcess.size >= MAX_PROCESSES) this.byProcess.delete(this.byProcess.keys().next().value!);
    this.byProcess.set(key, { ...fresh, peer: { pid: peer.pid, uid: peer.uid, gid: peer.gid } });
    return fresh;
  }

  /**
   * The connection's own attestation when it can be answered without waiting: cached for this
   * connection, still describing its process (stillDescribes is synchronous), and no parent chain
   * asked for (a walk reads /proc per ancestor). undefined: call attest(). A repeat call on an
   * open connection takes this path; attest() compares again what this found stale, and attests.
   */
  reuse(peer: PeerCredentials, opts: AttestOptions & { recheck?: RecheckNeeds }): Attestation | undefined {
    if (opts.withAncestors ?? true) return undefined;
    const cached = this.byConnection.get(peer);
    if (!cached || (opts.withSha256 && !cached.facts.withSha256)) return undefined;
    if (!this.stillDescribes(cached, opts.recheck ?? RECHECK_ALL)) return undefined;
    this.hitCount++;
    return withoutChain(cached);
  }

  /** Attestor.stillDescribes, at most once per process and turn of the event loop (see confirmedThisTurn). */
  private stillDescribes(a: Attestation, recheck: RecheckNeeds): boolean {
    const wanted = recheckMask(recheck);
    const made = this.confirmedThisTurn.get(a.facts);
    if (made !== undefined && (made & wanted) === wanted) return true;
    if (!this.attestor.stillDescribes(a, recheck)) return false;
    this.confirmedThisTurn.set(a.facts, (made ?? 0) | wanted);
    if (!this.turnEndArmed) {
      this.turnEndArmed = true;
      setImmediate(() => {
        this.turnEndArmed = false;
        this.confirmedThisTurn.clear();
      });
    }
    return true;
  }

  /** `a` with its parent chain when asked for (read again: see below), without it otherwise. */
  private async withChain(a: Attestation, withAncestors: boolean): Promise<Attestation> {
    if (!withAncestors) return withoutChain(a);
    // A grandparent may have exited since (the chain changes above an unchanged parent): walk
    // it again; this is only asked for while some task is bound with its descendants.
    return { ...a, ancestors: this.sharedChain(await this.attestor.ancestorsOf(a.process)), ancestorsKnown: true };
  }

  private shared(selectors: Selector[]): Selector[] {
    // JSON, not a joined string: a value may hold any character (an executable's path is the
    // caller's choice), and two different lists must never share a key.
    return this.selectorLists.intern(JSON.stringify(selectors.map((sel) => [sel.type, sel.value])), () =>
      Object.freeze(selectors.map((sel) => Object.freeze({ ...sel }))) as Selector[]);
  }

  private sharedChain(chain: ProcessRef[]): ProcessRef[] {
    if (chain.length === 0) return chain;
    return this.chains.intern(chain.map((ref) => `${ref.pid}@${ref.startTime}`).join(' '), () =>
      Object.freeze(chain.map((ref) => Object.freeze({ pid: ref.pid, startTime: ref.startTime }))) as ProcessRef[]);
  }

  /** Calls answered from the connection's attestation, from another connection's of its process, and calls that attested (metrics, tests). */
  stats(): { hits: number; processHits: number; misses: number } {
    return { hits: this.hitCount, processHits: this.processHitCount, misses: this.missCount };
  }
}
