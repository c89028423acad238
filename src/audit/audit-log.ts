import { createHash } from 'node:crypto';
import { closeSync, constants, fchmodSync, fdatasyncSync, fstatSync, ftruncateSync, openSync, readSync, writeSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import type { Clock } from '../common/clock.js';
import { failedPrecondition, internal, resourceExhausted } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { GENESIS_HASH, recordHash } from './canonical.js';
import { AUDIT_TIME_FIELDS, DURABLE_EVENT_TYPES, type AuditEventInput, type AuditRecord } from './events.js';
import { parseAuditLine } from './read.js';
import { assertAuditSafe } from './redaction.js';

/** A tap on the audit trail's typed event stream (metrics read it). */
export interface AuditObserver {
  appended?(event: AuditEventInput): void;
  /** One write of `durable` lines (fsynced before returning) took this long. */
  wrote?(durable: boolean, elapsedSeconds: number): void;
}

export interface AuditLogOptions {
  /** The audit file; its directory must exist. Created 0600 when missing. */
  file: string;
  clock: Clock;
  logger: Logger;
  /** Batched events (issuance, refused attestation) are fsynced at least this often. Default 1000 ms. */
  syncIntervalMs?: number;
  /** ...or as soon as this many of them are waiting. Default 256. */
  syncBatch?: number;
  /**
   * The server writing this trail, recorded in every line: with several servers on one datastore
   * each keeps its own chain, and a line says whose it is. Omitted when empty.
   */
  server?: string;
}

const RESERVED_FIELDS = ['seq', 'time', 'server', 'prev', 'hash'];
const TAIL_CHUNK = 64 * 1024;

/**
 * Append-only, hash-chained JSON-lines audit trail, separate from the operational log.
 *
 * Durability trade-off: every append is one synchronous write(2) of a whole line, so a crash of
 * this process never loses or tears an acknowledged record (it is in the page cache). Surviving
 * an OS crash or power loss needs fsync, which costs about a millisecond on real disks:
 * - security-relevant events (DURABLE_EVENT_TYPES: revocations, task and entry changes, CA
 *   rotation, refused admin calls) are fdatasync'ed before append() returns;
 * - issuance and refused attestations run at thousands per second and are fsynced in batches
 *   (every syncIntervalMs or syncBatch events, and by any durable event), so a power loss can
 *   drop at most the last interval of them. The SVIDs they describe are short-lived.
 *
 * One process owns the file: two writers would fork the chain.
 *
 * A full disk (ENOSPC, EDQUOT, EFBIG) is survivable: whatever part of the write landed is cut off
 * again (ftruncate to the last whole record), the append fails with resource_exhausted and nothing
 * is chained, and the next append tries again, so the log recovers by itself when space returns.
 * Any other failed write, and any failed fsync, makes the log refuse further appends (the chain's
 * state on disk is then unknown).
 *
 * A torn last line found at open (the process died in the middle of a write, or the disk filled
 * and the server was killed before it could cut the line off) is never an acknowledged record:
 * its write did not complete. It is removed and an `audit.repaired` record with its length and
 * SHA-256 is chained in its place, so the chain stays verifiable and the repair is on the record.
 * A damaged line that is complete (ends in a newline) is not a torn write: open refuses it.
 */
export class AuditLog {
  private seq: number;
  private hash: string;
  private unsynced = 0;
  private syncTimer: AbortController | undefined;
  private closed = false;
  private broken: unknown = undefined;
  /** Taps on the event stream (metrics): told of each appended event and each write's duration. */
  private readonly observers: AuditObserver[] = [];
  /** Lines appended inside batch(), written when it ends. */
  private pendingBatch: { lines: Buffer[]; durable: boolean } | undefined;

  private constructor(
    private readonly fd: number,
    private readonly options: Required<AuditLogOptions>,
    head: { seq: number; hash: string },
    /** Bytes of whole records in the file: where a failed write is cut back to. */
    private size: number,
  ) {
    this.seq = head.seq;
    this.hash = head.hash;
  }

  static open(options: AuditLogOptions): AuditLog {
    const { file, logger } = options;
    let fd: number;
    try {
      // O_NOFOLLOW: a symlink planted at the audit path must not redirect the trail.
      fd = openSync(file, constants.O_RDWR | constants.O_APPEND | constants.O_CREAT | constants.O_NOFOLLOW, 0o600);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw failedPrecondition(`audit file ${file}: its directory does not exist`, err);
      if (code === 'ELOOP') throw failedPrecondition(`audit file ${file}: is a symbolic link`, err);
      throw failedPrecondition(`audit file ${file}: cannot open (${code ?? 'unknown error'})`, err);
    }
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) throw failedPrecondition(`audit file ${file}: not a regular file`);
      if ((st.mode & 0o077) !== 0) {
        fchmodSync(fd, 0o600);
        logger.warn({ file, mode: (st.mode & 0o777).toString(8) }, 'audit file was readable by others; set mode 0600');
      }
      const torn = tornTail(fd, st.size);
      if (torn) ftruncateSync(fd, st.size - torn.length);
      const size = st.size - (torn?.length ?? 0);
      const log = new AuditLog(fd, { syncIntervalMs: 1000, syncBatch: 256, server: '', ...options }, readHead(fd, size, file), size);
      if (torn) {
        logger.warn({ file, removedBytes: torn.length }, 'audit file ended in a torn line (a write cut short); removed it and recorded the repair');
        log.append({
          type: 'audit.repaired',
          outcome: 'ok',
          reason: 'the last line was incomplete (a write cut short) and was removed',
          removed_bytes: torn.length,
          removed_sha256: createHash('sha256').update(torn).digest('hex'),
        });
      }
      return log;
    } catch (err) {
      closeSync(fd);
      throw err;
    }
  }

  /** Adds a tap on the typed event stream; observers must not throw (they are told after the append). */
  observe(observer: AuditObserver): void {
    this.observers.push(observer);
  }

  /** seq and hash of the last record (0 and GENESIS_HASH for an empty file); worth anchoring elsewhere. */
  get head(): { seq: number; hash: string } {
    return { seq: this.seq, hash: this.hash };
  }

  /**
   * Validates, chains and writes one event. Throws (and writes nothing) when the event carries
   * anything that looks like a secret; throws when the write fails.
   */
  append(event: AuditEventInput): AuditRecord {
    if (this.closed) throw failedPrecondition('audit log is closed');
    if (this.broken !== undefined) throw internal('audit log is unusable after a failed write', this.broken);
    const { type, ...fields } = event as AuditEventInput & Record<string, unknown>;
    assertAuditSafe(event as unknown as Record<string, unknown>);
    for (const key of RESERVED_FIELDS) {
      if (key in fields) throw internal(`audit event ${type}: field ${key} is reserved for the hash chain`);
    }
    for (const key of AUDIT_TIME_FIELDS) {
      if (!(key in fields)) continue;
      const ms = fields[key];
      if (typeof ms !== 'number' || !(Math.abs(ms) <= 8.64e15)) throw internal(`audit event ${type}: ${key} must be a time in ms`);
      fields[key] = new Date(ms).toISOString();
    }
    const body = {
      seq: this.seq + 1,
      time: new Date(this.options.clock.now()).toISOString(),
      ...(this.options.server ? { server: this.options.server } : {}),
      type,
      ...fields,
      prev: this.hash,
    };
    const hash = recordHash(body);
    const record = { ...body, hash };
    const line = Buffer.from(`${JSON.stringify(record)}\n`, 'utf8');
    if (this.pendingBatch !== undefined) {
      // Inside batch(): chained now, written with the rest of the batch in one write.
      this.pendingBatch.lines.push(line);
      this.pendingBatch.durable ||= DURABLE_EVENT_TYPES.has(type);
      this.seq = body.seq;
      this.hash = hash;
      for (const o of this.observers) o.appended?.(event);
      return record as unknown as AuditRecord;
    }
    this.writeLines([line], DURABLE_EVENT_TYPES.has(type));
    this.seq = body.seq;
    this.hash = hash;
    for (const o of this.observers) o.appended?.(event);
    return record as unknown as AuditRecord;
  }

  /**
   * Runs `fn` and writes every event it appends with one write at the end (a rotation storm appends
   * thousands), still before `batch` returns, so nothing a caller sees can precede its audit line.
   */
  batch<T>(fn: () => T): T {
    if (this.pendingBatch !== undefined) return fn();
    this.pendingBatch = { lines: [], durable: false };
    const before = { seq: this.seq, hash: this.hash };
    try {
      return fn();
    } finally {
      const { lines, durable } = this.pendingBatch;
      this.pendingBatch = undefined;
      if (lines.length > 0) {
        try {
          this.writeLines(lines, durable);
        } catch (err) {
          // Nothing of the batch is on disk: the chain continues from where it was.
          this.seq = before.seq;
          this.hash = before.hash;
          throw err;
        }
      }
    }
  }

  private writeLines(lines: Buffer[], durable: boolean): void {
    const data = lines.length === 1 ? lines[0]! : Buffer.concat(lines);
    const startedAt = performance.now();
    try {
      writeAll(this.fd, data);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'EFBIG') {
        try {
          ftruncateSync(this.fd, this.size);
        } catch (truncateErr) {
          this.broken = truncateErr;
          throw internal('audit log write failed and could not be cut back', err);
        }
        throw resourceExhausted('audit log: no space left on the device; nothing was recorded');
      }
      this.broken = err;
      throw internal('audit log write failed', err);
    }
    this.size += data.length;
    this.unsynced += lines.length;
    if (durable || this.unsynced >= this.options.syncBatch) {
      this.sync();
    } else {
      this.scheduleSync();
    }
    // A duration, from a monotonic timer: no wall-clock time is read here.
    if (this.observers.length > 0) {
      const elapsedSeconds = (performance.now() - startedAt) / 1000;
      for (const o of this.observers) o.wrote?.(durable, elapsedSeconds);
    }
  }

  /** fsyncs everything written so far. */
  flush(): void {
    if (!this.closed && this.unsynced > 0) this.sync();
  }

  close(): void {
    if (this.closed) return;
    this.syncTimer?.abort();
    this.syncTimer = undefined;
    try {
      if (this.unsynced > 0 && this.broken === undefined) this.sync();
    } finally {
      this.closed = true;
      closeSync(this.fd);
    }
  }

  private sync(): void {
    this.syncTimer?.abort();
    this.syncTimer = undefined;
    try {
      fdatasyncSync(this.fd);
    } catch (err) {
      this.broken = err;
      throw internal('audit log fsync failed', err);
    }
    this.unsynced = 0;
  }

  private scheduleSync(): void {
    if (this.syncTimer) return;
    const timer = new AbortController();
    this.syncTimer = timer;
    this.options.clock.sleep(this.options.syncIntervalMs, timer.signal).then(
      () => {
        if (this.syncTimer !== timer) return;
        this.syncTimer = undefined;
        try {
          this.flush();
        } catch (err) {
          this.options.logger.error({ err, file: this.options.file }, 'audit log fsync failed; further appends are refused');
        }
      },
      () => {
        // aborted by sync() or close()
      },
    );
  }
}

function writeAll(fd: number, data: Buffer): void {
  let off = 0;
  while (off < data.length) off += writeSync(fd, data, off, data.length - off);
}

/** The bytes after the last newline (a write cut short), or undefined when the file ends in a whole line. */
function tornTail(fd: number, size: number): Buffer | undefined {
  if (size === 0) return undefined;
  const parts: Buffer[] = [];
  let end = size;
  while (end > 0) {
    const start = Math.max(0, end - TAIL_CHUNK);
    const buf = Buffer.alloc(end - start);
    readSync(fd, buf, 0, buf.length, start);
    const nl = buf.lastIndexOf(0x0a);
    if (nl !== -1) {
      parts.unshift(buf.subarray(nl + 1));
      break;
    }
    parts.unshift(buf);
    end = start;
  }
  const torn = Buffer.concat(parts);
  return torn.length > 0 ? torn : undefined;
}

/** Finds the last record so the chain continues across restarts; refuses a damaged tail. */
function readHead(fd: number, size: number, file: string): { seq: number; hash: string } {
  if (size === 0) return { seq: 0, hash: GENESIS_HASH };
  const refuse = (why: string) =>
    failedPrecondition(
      `audit file ${file}: ${why}; refusing to continue the hash chain. ` +
        'Run "agentid audit verify", then move the file aside to start a new chain',
    );
  const last = Buffer.alloc(1);
  readSync(fd, last, 0, 1, size - 1);
  if (last[0] !== 0x0a) throw refuse('the last line is incomplete (a write was cut short)');
  // Walk back from the final newline to the one before it.
  const parts: Buffer[] = [];
  let end = size - 1;
  let found = false;
  while (end > 0 && !found) {
    const start = Math.max(0, end - TAIL_CHUNK);
    const buf = Buffer.alloc(end - start);
    readSync(fd, buf, 0, buf.length, start);
    const nl = buf.lastIndexOf(0x0a);
    found = nl !== -1;
    parts.unshift(found ? buf.subarray(nl + 1) : buf);
    end = start;
  }
  const parsed = parseAuditLine(Buffer.concat(parts).toString('utf8'));
  if ('reason' in parsed) throw refuse(`the last line is damaged (${parsed.reason})`);
  return { seq: parsed.record.seq, hash: parsed.record.hash };
}
