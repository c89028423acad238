import type { Logger } from '../common/logger.js';
import type { Datastore, IssuanceRecord, IssuanceStore } from './types.js';

/**
 * Issuance records written in one transaction per event-loop turn instead of one commit per SVID:
 * a rotation storm of thousands of SVIDs costs one commit, not thousands. Every read flushes first,
 * so revocation (latest notAfter) and CRLs (revoked serials) always see every issued SVID.
 * A crash can lose the records of the current turn only; the deny list's floor of the longest
 * SVID lifetime (tasks/revocations.ts) covers that.
 */
export class BatchedIssuances implements IssuanceStore {
  private pending: IssuanceRecord[] = [];
  private scheduled = false;

  constructor(
    private readonly ds: Pick<Datastore, 'issuances' | 'transaction'>,
    private readonly logger: Logger,
  ) {}

  record(issuance: IssuanceRecord): void {
    this.pending.push(issuance);
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(() => this.flushLogged());
    }
  }

  flush(): void {
    this.scheduled = false;
    if (this.pending.length === 0) return;
    const batch = this.pending;
    this.pending = [];
    this.ds.transaction(() => {
      for (const r of batch) this.ds.issuances.record(r);
    });
  }

  listForSpiffeId(spiffeId: string): IssuanceRecord[] {
    this.flush();
    return this.ds.issuances.listForSpiffeId(spiffeId);
  }

  latestNotAfter(spiffeId: string): number | undefined {
    this.flush();
    return this.ds.issuances.latestNotAfter(spiffeId);
  }

  listRevokedUnexpired(now: number): IssuanceRecord[] {
    this.flush();
    return this.ds.issuances.listRevokedUnexpired(now);
  }

  countForSpiffeId(spiffeId: string): number {
    this.flush();
    return this.ds.issuances.countForSpiffeId(spiffeId);
  }

  prune(now: number): number {
    this.flush();
    return this.ds.issuances.prune(now);
  }

  private flushLogged(): void {
    try {
      this.flush();
    } catch (err) {
      this.logger.error({ err }, 'could not record issuances');
    }
  }
}
