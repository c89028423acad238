import type { Clock } from '../common/clock.js';
import type { AuditSink } from '../audit/index.js';
import { auditActor, describeActor, type Actor } from '../common/actor.js';
import type { Datastore, Revocation } from '../datastore/types.js';

export interface RevokerDeps {
  datastore: Pick<Datastore, 'revocations' | 'issuances'>;
  clock: Clock;
  audit: AuditSink;
  /** Called after the deny list changed: drop cached SVIDs, rebuild CRLs, push to streams. */
  onRevoked: (spiffeId: string) => void;
  /**
   * Longest SVID lifetime the server issues. The deny list keeps an ID at least this long, so an
   * issuance record lost in a power cut (they are not fsynced one by one) cannot shorten it.
   */
  maxSvidTtlMs: number;
}

/**
 * The persistent deny list. A revoked SPIFFE ID stays listed at least until the latest notAfter of
 * anything issued for it, so every SVID of it can be refused by serial (CRL) or by ID (JWT)
 * for as long as it could be presented.
 */
export class Revoker {
  private readonly revoked = new Set<string>();

  constructor(private readonly deps: RevokerDeps) {
    for (const r of deps.datastore.revocations.list()) this.revoked.add(r.spiffeId);
  }

  isRevoked(spiffeId: string): boolean {
    return this.revoked.has(spiffeId);
  }

  revoke(spiffeId: string, reason: string, actor: Actor, minKeepUntil = 0): Revocation {
    const now = this.deps.clock.now();
    const latest = this.deps.datastore.issuances.latestNotAfter(spiffeId) ?? now;
    const revocation = this.deps.datastore.revocations.add({
      spiffeId,
      reason,
      revokedAt: now,
      revokedBy: describeActor(actor),
      keepUntil: Math.max(latest, now + this.deps.maxSvidTtlMs, minKeepUntil),
    });
    this.revoked.add(spiffeId);
    this.deps.audit.append({
      type: 'revocation.added',
      outcome: 'ok',
      actor: auditActor(actor),
      spiffe_id: spiffeId,
      reason,
      by: describeActor(actor),
      keep_until: revocation.keepUntil,
    });
    this.deps.onRevoked(spiffeId);
    return revocation;
  }

  list(): Revocation[] {
    return this.deps.datastore.revocations.list();
  }

  /** Drops expired deny-list entries and the issuance records nobody can present any more. */
  prune(): void {
    const now = this.deps.clock.now();
    if (this.deps.datastore.revocations.prune(now) > 0) {
      this.revoked.clear();
      for (const r of this.deps.datastore.revocations.list()) this.revoked.add(r.spiffeId);
    }
    this.deps.datastore.issuances.prune(now);
  }
}
