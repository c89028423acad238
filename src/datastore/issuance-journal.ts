import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import type { Logger } from '../common/logger.js';
import { isAgentIdError } from '../common/errors.js';
import type { IssuanceRecord, IssuanceStore } from './types.js';

/**
 * A write-ahead journal of X.509 issuance records, so that no SVID is handed out before its record
 * is on disk, without an fsync on the event loop.
 *
 * Why: a CRL lists the serials of a revoked SPIFFE ID's certificates, and the serials come only
 * from issuance records. Records reach the datastore in batches (datastore/batched-issuances.ts),
 * so a crash (SIGKILL, power loss) lost the last batch: a certificate handed out just before it
 * had no record, and revoking its SPIFFE ID after the restart left it off the CRL, so a verifier
 * that checks CRLs kept accepting it until it expired. (The deny list, which JWT-SVIDs and new
 * issuance are checked against, keeps an ID at least the longest SVID lifetime, so lost JWT records
 * do not matter; certificates already handed out are only stopped by the CRL.)
 *
 * How: each record is appended here and a delivery that carries its certificate waits until the
 * journal is fdatasync'ed (issuer/hub.ts). Writes and syncs run on libuv's thread pool, one at a
 * time: records that arrive while a sync is in flight go out together in the next one (group
 * commit), so a storm of thousands of new SVIDs costs a few dozen syncs, none of them on the event
 * loop. At start the server records what the journal holds into the datastore (a record already
 * there is skipped), then empties it; while running, the journal is emptied whenever every record
 * appended to it has been committed to the datastore.
 */
export class IssuanceJournal {
  private queued: Buffer[] = [];
  private waiters: { resolve: () => void; reject: (err: unknown) => void }[] = [];
  private running = false;
  private appended = 0;
  private committedCount = 0;
  private closed = false;

  private constructor(
    private readonly file: FileHandle,
    private readonly logger: Logger,
  ) {}

  /**
   * Opens (or creates, 0600, never through a symlink) the journal at `path`, records what it holds
   * into `store`, and empties it. A last line cut short by a crash is not a record: its write never
   * completed, so nothing was handed out for it.
   */
  static async open(path: string, store: Pick<IssuanceStore, 'record'>, logger: Logger): Promise<IssuanceJournal> {
    const file = await open(path, constants.O_RDWR | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW, 0o600);
    try {
      const text = (await file.readFile()).toString('utf8');
      const lines = text.split('\n');
      lines.pop(); // after the last newline: empty, or a torn write
      let recovered = 0;
      for (const line of lines) {
        let record: IssuanceRecord;
        try {
          record = JSON.parse(line) as IssuanceRecord;
        } catch {
          logger.warn({ path }, 'issuance journal: unreadable line skipped');
          continue;
        }
        try {
          await store.record([record]);
          recovered++;
        } catch (err) {
          if (!isAgentIdError(err, 'already_exists')) throw err;
        }
      }
      if (recovered > 0) logger.warn({ path, recovered }, 'issuance journal: records the last run had not written to the datastore were recorded now');
      await file.truncate(0);
      await file.datasync();
      return new IssuanceJournal(file, logger);
    } catch (err) {
      await file.close();
      throw err;
    }
  }

  /** Appends records; resolves once they are on disk (rejects when they could not be written). */
  append(records: readonly IssuanceRecord[]): Promise<void> {
    if (this.closed) return Promise.reject(new Error('issuance journal is closed'));
    this.queued.push(Buffer.from(records.map((r) => `${JSON.stringify(r)}\n`).join(''), 'utf8'));
    this.appended += records.length;
    const durable = new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
    if (!this.running) void this.run();
    return durable;
  }

  /** `count` more of the appended records are committed to the datastore. */
  committed(count: number): void {
    this.committedCount += count;
    if (this.committedCount === this.appended && !this.running) void this.run();
  }

  async close(): Promise<void> {
    this.closed = true;
    while (this.running) await new Promise((resolve) => setImmediate(resolve));
    await this.file.close();
  }

  /** One write and one sync at a time; the journal is emptied once everything in it is in the datastore. */
  private async run(): Promise<void> {
    this.running = true;
    try {
      for (;;) {
        if (this.queued.length > 0) {
          const data = Buffer.concat(this.queued.splice(0));
          const waiters = this.waiters.splice(0);
          try {
            await this.file.write(data);
            await this.file.datasync();
            for (const w of waiters) w.resolve();
          } catch (err) {
            this.logger.error({ err }, 'issuance journal: write failed; the certificates waiting for it are not handed out');
            for (const w of waiters) w.reject(err);
          }
          continue;
        }
        // Every record written here is in the datastore: start over (checked after any write above).
        if (this.committedCount === this.appended && this.appended > 0) {
          this.appended = 0;
          this.committedCount = 0;
          await this.file.truncate(0);
        }
        if (this.queued.length === 0) return;
      }
    } catch (err) {
      this.logger.error({ err }, 'issuance journal: could not be emptied');
    } finally {
      this.running = false;
    }
  }
}
