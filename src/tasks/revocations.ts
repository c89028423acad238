import type { Clock } from '../common/clock.js';
import type { AuditEventInput, AuditSink } from '../audit/index.js';
import { auditActor, describeActor, type Actor } from '../common/actor.js';
import type { Datastore, IssuanceStore, Revocation, Stores } from '../datastore/types.js';

export interface RevokerDeps {
  datastore: Pick<Datastore, 'revocations' | 'transaction'>;
  /** Issuance records (flushed before they are read, see datastore/batched-issuances.ts). */
  issuances: Pick<IssuanceStore, 'latestNotAfter' | 'prune'>;
  /** The read model: the deny list as the request path sees it, and a way to wait for a write. */
  state: { isRevoked(spiffeId: string): boolean; sync(): Promise<void> };
  clock: Clock;
  audit: AuditSink;
  /**
   * Longest SVID lifetime the server issues. The deny list keeps an ID at least this long, so an
   * issuance record lost in a crash (they are written in batches) cannot shorten it.
   */
  maxSvidTtlMs: number;
}

/**
 * The persistent deny list. A revoked SPIFFE ID stays listed at least until the latest notAfter of
 * anything issued for it, so every SVID of it can be refused by serial (CRL) or by ID (JWT)
 * for as long as it could be presented.
 */
export class Revoker {
  constructor(private readonly deps: RevokerDeps) {}

  isRevoked(spiffeId: string): boolean {
    return this.deps.state.isRevoked(spiffeId);
  }

  /** How long the deny list must keep this ID (read before the transaction that adds it). */
  async keepUntilFor(spiffeId: string, minKeepUntil = 0): Promise<number> {
    const now = this.deps.clock.now();
    const latest = (await this.deps.issuances.latestNotAfter(spiffeId)) ?? now;
    return Math.max(latest, now + this.deps.maxSvidTtlMs, minKeepUntil);
  }

  /**
   * Adds the revocation inside the caller's transaction, audit line included: if the audit line
   * cannot be written, the transaction rolls back and nothing is revoked half-way. `auditFirst`
   * are the caller's own lines for the same change (a task's end): they go before the
   * revocation's line in one write, so the change costs one fsync, not one per durable line.
   */
  async addWithin(
    tx: Pick<Stores, 'revocations'>,
    spiffeId: string,
    reason: string,
    actor: Actor,
    keepUntil: number,
    auditFirst: readonly AuditEventInput[] = [],
  ): Promise<Revocation> {
    const revocation = await tx.revocations.add({
      spiffeId,
      reason,
      revokedAt: this.deps.clock.now(),
      revokedBy: describeActor(actor),
      keepUntil,
    });
    const { audit } = this.deps;
    const appendAll = () => {
      for (const event of auditFirst) audit.append(event);
      audit.append({
        type: 'revocation.added',
        outcome: 'ok',
        actor: auditActor(actor),
        spiffe_id: spiffeId,
        reason,
        by: describeActor(actor),
        keep_until: revocation.keepUntil,
      });
    };
    if (audit.batch) audit.batch(appendAll);
    else appendAll();
    return revocation;
  }

  /** Revokes in one transaction and returns once the read model (and so every stream) has it. */
  async revoke(spiffeId: string, reason: string, actor: Actor, minKeepUntil = 0): Promise<Revocation> {
    const keepUntil = await this.keepUntilFor(spiffeId, minKeepUntil);
    const revocation = await this.deps.datastore.transaction((tx) => this.addWithin(tx, spiffeId, reason, actor, keepUntil));
    await this.deps.state.sync();
    return revocation;
  }

  list(): Promise<Revocation[]> {
    return this.deps.datastore.revocations.list();
  }

  /** Drops expired deny-list entries and the issuance records nobody can present any more. */
  async prune(): Promise<void> {
    const now = this.deps.clock.now();
    await this.deps.datastore.revocations.prune(now);
    await this.deps.issuances.prune(now);
  }
}
