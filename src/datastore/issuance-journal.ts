import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import type { Logger } from '../common/logger.js';
import { isAgentIdError } from '../common/errors.js';
import type { IssuanceRecord, IssuanceStore } from './types.js';

/** The file operations the journal uses (a FileHandle; tests wrap one to hold syncs). */
export interface JournalFile {
  readFile(): Promise<Buffer>;
  write(data: Buffer): Promise<unknown>;
  datasync(): Promise<void>;
  truncate(length: number): Promise<void>;
  close(): Promise<void>;
}

/** A written batch whose sync is running. */
interface SyncingBatch {
  waiters: Waiter[];
  /** A sync that overlapped this one failed: do not trust this one's success. */
  doomed: boolean;
}

interface Waiter {
  resolve: () => void;
  reject: (err: unknown) => void;
}

/** Syncs in flight at once: one running plus the next batch's, which need not wait for it. */
const MAX_SYNCS_IN_FLIGHT = 2;

const NEWLINE = Buffer.from('\n');

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
 * journal is fdatasync'ed (issuer/hub.ts). Writes and syncs run on libuv's thread pool. Records
 * are written in batches, one write at a time; each written batch is synced, and its waiters are
 * resolved when that sync (which started after their write completed) returns. Up to two syncs are
 * in flight (pipelined group commit): records that arrive while a sync runs are written and their
 * own sync starts at once, instead of waiting for the running one first, so a record waits about
 * one sync, not up to two; a storm of thousands of new SVIDs still costs a few dozen syncs, none of
 * them on the event loop. A failed sync fails its batch and every batch whose sync overlapped it
 * (after a writeback error, a concurrent sync may return success for pages that were lost): their
 * certificates are not handed out. At start the server records what the journal holds into the
 * datastore (a record already there is skipped), then empties it; while running, the journal is
 * emptied whenever every record appended to it has been committed to the datastore and nothing is
 * being written or synced.
 */
export class IssuanceJournal {
  private queued: Buffer[] = [];
  private waiters: Waiter[] = [];
  private writing = false;
  private truncating = false;
  private readonly syncing = new Set<SyncingBatch>();
  private appended = 0;
  private committedCount = 0;
  /** Records in `queued`, not yet handed to a write. */
  private queuedRecords = 0;
  /** Appended records whose write has finished (written, or failed and never handed out). */
  private settled = 0;
  private settleWaiters: { through: number; wake: () => void }[] = [];
  private closed = false;
  private idle: (() => void)[] = [];
  /**
   * A write failed and may have left part of a line: the next write starts on a new line, or the
   * first record after it would be read back glued to the torn one and skipped at recovery.
   */
  private tornLine = false;

  private constructor(
    private readonly file: JournalFile,
    private readonly logger: Logger,
    private readonly path: string,
  ) {}

  /**
   * Opens (or creates, 0600, never through a symlink) the journal at `path`, records what it holds
   * into `store`, and empties it. A last line cut short by a crash is not a record: its write never
   * completed, so nothing was handed out for it.
   */
  static async open(
    path: string,
    store: Pick<IssuanceStore, 'record'>,
    logger: Logger,
    wrapFile: (file: FileHandle) => JournalFile = (file) => file,
  ): Promise<IssuanceJournal> {
    const file = wrapFile(await open(path, constants.O_RDWR | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW, 0o600));
    try {
      const records = parseLines((await file.readFile()).toString('utf8'), () => logger.warn({ path }, 'issuance journal: unreadable line skipped'));
      let recovered = 0;
      for (const record of records) {
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
      return new IssuanceJournal(file, logger, path);
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
    this.queuedRecords += records.length;
    const durable = new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
    this.pump();
    return durable;
  }

  /**
   * The records whose lines are complete in the file now, read back from its start through a
   * separate read-only descriptor (the journal's own one always sits at the end: it appends).
   */
  async readBack(): Promise<IssuanceRecord[]> {
    const reader = await open(this.path, constants.O_RDONLY | constants.O_NOFOLLOW);
    let text: string;
    try {
      text = (await reader.readFile()).toString('utf8');
    } finally {
      await reader.close();
    }
    // A line cut short by a failed write is skipped: its certificate was never handed out.
    return parseLines(text, () => undefined);
  }

  /** Resolves once every record appended so far has been written to the file (or its write failed). */
  written(): Promise<void> {
    const through = this.appended;
    if (this.settled >= through) return Promise.resolve();
    return new Promise((wake) => this.settleWaiters.push({ through, wake }));
  }

  private settle(count: number): void {
    this.settled += count;
    if (this.settleWaiters.length === 0) return;
    const due = this.settleWaiters.filter((w) => w.through <= this.settled);
    if (due.length === 0) return;
    this.settleWaiters = this.settleWaiters.filter((w) => w.through > this.settled);
    for (const w of due) w.wake();
  }

  /** `count` more of the appended records are committed to the datastore. */
  committed(count: number): void {
    this.committedCount += count;
    this.pump();
  }

  async close(): Promise<void> {
    this.closed = true;
    while (this.busy()) await new Promise<void>((resolve) => this.idle.push(resolve));
    await this.file.close();
  }

  private busy(): boolean {
    return this.writing || this.truncating || this.syncing.size > 0 || this.queued.length > 0;
  }

  /** Starts what can start now: the next write (while a sync slot is free), or emptying the file. */
  private pump(): void {
    if (this.writing || this.truncating) return;
    if (this.queued.length > 0) {
      if (this.syncing.size < MAX_SYNCS_IN_FLIGHT) void this.writeAndSync();
      return;
    }
    if (this.syncing.size > 0) return;
    // Every record written here is in the datastore and nothing is in flight: start over.
    if (this.committedCount === this.appended && this.appended > 0) {
      void this.truncate();
      return;
    }
    for (const wake of this.idle.splice(0)) wake();
  }

  private async writeAndSync(): Promise<void> {
    const data = Buffer.concat(this.tornLine ? [NEWLINE, ...this.queued.splice(0)] : this.queued.splice(0));
    const batch: SyncingBatch = { waiters: this.waiters.splice(0), doomed: false };
    const records = this.queuedRecords;
    this.queuedRecords = 0;
    this.writing = true;
    try {
      await this.file.write(data);
    } catch (err) {
      this.writing = false;
      this.settle(records);
      this.tornLine = true;
      this.fail(batch, err);
      this.pump();
      return;
    }
    this.writing = false;
    this.settle(records);
    this.tornLine = false;
    // The sync starts only now, after the write completed: it covers these records.
    this.syncing.add(batch);
    const synced = this.file.datasync();
    this.pump(); // the next batch may be written while this sync runs
    try {
      await synced;
    } catch (err) {
      this.syncing.delete(batch);
      for (const overlapping of this.syncing) overlapping.doomed = true;
      this.fail(batch, err);
      this.pump();
      return;
    }
    this.syncing.delete(batch);
    if (batch.doomed) this.fail(batch, new Error('a sync that overlapped this one failed'));
    else for (const w of batch.waiters) w.resolve();
    this.pump();
  }

  private fail(batch: SyncingBatch, err: unknown): void {
    this.logger.error({ err }, 'issuance journal: write failed; the certificates waiting for it are not handed out');
    for (const w of batch.waiters) w.reject(err);
  }

  private async truncate(): Promise<void> {
    this.truncating = true;
    // Records appended from here on are written after the truncate (pump waits for it).
    this.appended = 0;
    this.committedCount = 0;
    this.settled = 0;
    try {
      await this.file.truncate(0);
    } catch (err) {
      this.logger.error({ err }, 'issuance journal: could not be emptied');
    } finally {
      this.truncating = false;
    }
    this.pump();
  }
}

/**
 * The records of a journal's complete lines. What follows the last newline is a write in progress
 * or one a crash cut short: nothing was handed out for it. An unreadable line goes to `skipped`.
 */
function parseLines(text: string, skipped: () => void): IssuanceRecord[] {
  const lines = text.split('\n');
  lines.pop();
  const records: IssuanceRecord[] = [];
  for (const line of lines) {
    try {
      records.push(JSON.parse(line) as IssuanceRecord);
    } catch {
      skipped();
    }
  }
  return records;
}
