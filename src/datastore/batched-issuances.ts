import type { Logger } from '../common/logger.js';
import type { IssuanceRecord, IssuanceStore } from './types.js';
import type { IssuanceJournal } from './issuance-journal.js';

export interface BatchedIssuancesOptions {
  /** Longest a minted SVID waits before its record is written. */
  flushIntervalMs: number;
  /** A batch this large is written at once. */
  maxBatch: number;
  /**
   * Records kept while the datastore cannot take them (it is down); beyond this the oldest are
   * dropped and counted. The deny list's floor of the longest SVID lifetime covers lost records.
   */
  maxPending: number;
}

const DEFAULTS: BatchedIssuancesOptions = { flushIntervalMs: 250, maxBatch: 500, maxPending: 100_000 };

/**
 * Issuance records written in batches off the hot path: minting an SVID only queues its record;
 * a timer (or a full batch) writes them in one transaction, so a rotation storm of thousands of
 * SVIDs costs a few commits and no fetch ever waits on the datastore. Reads flush first, so
 * revocation (latest notAfter) and CRLs (revoked serials) always see every SVID minted by this
 * server. A crash loses the records of the last interval: with a journal (issuance-journal.ts),
 * X.509 records are also appended there, queue() returns when that is on disk, and the journal is
 * recorded at the next start, so no certificate handed out after that promise is ever missing from
 * a CRL. Lost JWT records are covered by the deny list's floor of the longest SVID lifetime
 * (tasks/revocations.ts).
 */
export class BatchedIssuances implements IssuanceStore {
  private pending: IssuanceRecord[] = [];
  private timer: NodeJS.Timeout | undefined;
  private writing: Promise<void> = Promise.resolve();
  private readonly options: BatchedIssuancesOptions;
  /** Records dropped because the datastore was unavailable for too long. */
  dropped = 0;

  constructor(
    private readonly store: IssuanceStore,
    private readonly logger: Logger,
    options: Partial<BatchedIssuancesOptions> = {},
    private readonly journal?: IssuanceJournal,
  ) {
    this.options = { ...DEFAULTS, ...options };
  }

  /** Queues records; never waits. */
  async record(issuances: readonly IssuanceRecord[]): Promise<void> {
    // Not waited for here; a failed journal write is logged by the journal.
    void this.queue(issuances)?.catch(() => undefined);
  }

  /**
   * Queues records; with a journal, the Promise (present when they include X.509 records) settles
   * once those are on disk there: hand their certificates out only after it resolves.
   */
  queue(issuances: readonly IssuanceRecord[]): Promise<void> | undefined {
    const x509 = this.journal ? issuances.filter(isX509) : [];
    const durable = x509.length > 0 ? this.journal!.append(x509) : undefined;
    this.pending.push(...issuances);
    if (this.pending.length > this.options.maxPending) {
      const excess = this.pending.length - this.options.maxPending;
      this.pending.splice(0, excess);
      this.dropped += excess;
    }
    if (this.pending.length >= this.options.maxBatch) void this.flush().catch(() => {});
    else if (!this.timer) {
      this.timer = setTimeout(() => void this.flush().catch(() => {}), this.options.flushIntervalMs);
      this.timer.unref();
    }
    return durable;
  }

  get pendingCount(): number {
    return this.pending.length;
  }

  /** Writes everything queued so far (one batch at a time, in order). */
  flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const run = this.writing.then(async () => {
      while (this.pending.length > 0) {
        const batch = this.pending.splice(0, this.options.maxBatch);
        try {
          await this.store.record(batch);
          this.journal?.committed(batch.filter(isX509).length);
        } catch (err) {
          // Kept for the next attempt; the caller that needs them (a revocation) sees the error.
          this.pending.unshift(...batch);
          this.logger.error({ err, pending: this.pending.length }, 'could not record issuances; will retry');
          if (!this.timer) {
            this.timer = setTimeout(() => void this.flush().catch(() => {}), this.options.flushIntervalMs * 4);
            this.timer.unref();
          }
          throw err;
        }
      }
    });
    this.writing = run.catch(() => {});
    return run;
  }

  async listForSpiffeId(spiffeId: string): Promise<IssuanceRecord[]> {
    await this.flush();
    return this.store.listForSpiffeId(spiffeId);
  }

  async latestNotAfter(spiffeId: string): Promise<number | undefined> {
    await this.flush();
    return this.store.latestNotAfter(spiffeId);
  }

  async listRevokedUnexpired(now: number): Promise<IssuanceRecord[]> {
    await this.flush();
    return this.store.listRevokedUnexpired(now);
  }

  async countForSpiffeId(spiffeId: string): Promise<number> {
    await this.flush();
    return this.store.countForSpiffeId(spiffeId);
  }

  async prune(now: number): Promise<number> {
    await this.flush();
    return this.store.prune(now);
  }
}

const isX509 = (r: IssuanceRecord) => r.kind === 'x509';
