import { isAgentIdError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { IssuanceRecord, IssuanceStore } from './types.js';
import type { IssuanceJournal } from './issuance-journal.js';

export interface BatchedIssuancesOptions {
  /** Longest a minted SVID waits before its record is written. */
  flushIntervalMs: number;
  /** A batch this large is written at once. */
  maxBatch: number;
  /**
   * Records kept in memory while the datastore cannot take them (it is down); beyond this the
   * oldest are dropped and counted. With a journal, a dropped X.509 record is still in the
   * journal file: only its serial is kept, and it is read back from the file and recorded once the
   * datastore takes writes again. Lost JWT records are covered by the deny list's floor of the
   * longest SVID lifetime.
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
  /** Records dropped from memory because the datastore was unavailable for too long. */
  dropped = 0;
  /**
   * Serials of dropped X.509 records that only the journal holds: recorded from it when the
   * datastore is back (until then a CRL would miss them if their SPIFFE ID were revoked).
   */
  private readonly journalOnly = new Set<string>();
  /** `dropped` when it was last logged. */
  private droppedLoggedAt = 0;

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
      const excess = this.pending.splice(0, this.pending.length - this.options.maxPending);
      this.dropped += excess.length;
      if (this.journal) for (const r of excess) if (isX509(r)) this.journalOnly.add(r.serial);
      // Logged at the first drop and then each time the count doubles: drops happen on every
      // mint while an outage lasts, and this module keeps no clock.
      if (this.dropped >= this.droppedLoggedAt * 2) {
        this.droppedLoggedAt = this.dropped;
        this.logger.error(
          { dropped: this.dropped, journalOnly: this.journalOnly.size, maxPending: this.options.maxPending },
          'issuance records: the datastore has been unavailable too long; the oldest records are no longer kept in memory (X.509 ones are read back from the journal once it is back; JWT ones are covered by the deny list)',
        );
      }
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
      if (this.journalOnly.size > 0) await this.recordJournalOnly();
    });
    this.writing = run.catch(() => {});
    return run;
  }

  /**
   * Records the dropped X.509 records from the journal file (the datastore took the last batch,
   * so it is back), then counts them committed so that the journal can be emptied again. A serial
   * not in the file is one whose journal write failed: its certificate was never handed out.
   */
  private async recordJournalOnly(): Promise<void> {
    // Records dropped while this runs are left for the next flush.
    const wanted = new Set(this.journalOnly);
    // A record dropped right after it was queued may not be in the file yet.
    await this.journal!.written();
    const found = (await this.journal!.readBack()).filter((r) => r.kind === 'x509' && wanted.has(r.serial));
    for (let i = 0; i < found.length; i += this.options.maxBatch) {
      const chunk = found.slice(i, i + this.options.maxBatch);
      try {
        await this.store.record(chunk);
      } catch (err) {
        if (!isAgentIdError(err, 'already_exists')) throw err;
        // A batch whose commit went through although its caller saw an error: record the rest.
        for (const r of chunk) await this.store.record([r]).catch((e) => { if (!isAgentIdError(e, 'already_exists')) throw e; });
      }
    }
    for (const serial of wanted) this.journalOnly.delete(serial);
    this.logger.warn({ recovered: found.length, dropped: wanted.size }, 'issuance records dropped during the datastore outage were recorded from the journal');
    this.journal!.committed(wanted.size);
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
