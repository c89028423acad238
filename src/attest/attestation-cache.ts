import { RECHECK_ALL, type Attestation, type AttestOptions, type Attestor, type RecheckNeeds } from './attestor.js';
import type { PeerCredentials } from './peercred.js';

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
  private hitCount = 0;
  private missCount = 0;

  constructor(private readonly attestor: Pick<Attestor, 'attest' | 'stillDescribes' | 'ancestorsOf'>) {}

  async attest(peer: PeerCredentials, opts: AttestOptions & { recheck?: RecheckNeeds }): Promise<Attestation> {
    const withAncestors = opts.withAncestors ?? true;
    const cached = this.byConnection.get(peer);
    if (cached && (cached.facts.withSha256 || !opts.withSha256) && (await this.attestor.stillDescribes(cached, opts.recheck ?? RECHECK_ALL))) {
      this.hitCount++;
      if (!withAncestors) return cached.ancestors.length === 0 ? cached : { ...cached, ancestors: [] };
      // A grandparent may have exited since (the chain changes above an unchanged parent): walk
      // it again; this is only asked for while some task is bound with its descendants.
      return { ...cached, ancestors: await this.attestor.ancestorsOf(cached.process) };
    }
    this.missCount++;
    const fresh = await this.attestor.attest(peer, { withSha256: opts.withSha256, withAncestors });
    this.byConnection.set(peer, fresh);
    return fresh;
  }

  /** Calls answered from the cache and calls that attested, for metrics and tests. */
  stats(): { hits: number; misses: number } {
    return { hits: this.hitCount, misses: this.missCount };
  }
}
