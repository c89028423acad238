import { closeSync, openSync, readSync } from 'node:fs';
import { failedPrecondition, notFound } from '../common/errors.js';
import { GENESIS_HASH, recordHash } from './canonical.js';
import type { AuditRecord } from './events.js';

const CHUNK = 64 * 1024;
const HEX64 = /^[0-9a-f]{64}$/;

export interface AuditLine {
  /** 1-based line number. */
  number: number;
  text: string;
  /** False only for a last line without its newline: a write that was cut short. */
  terminated: boolean;
}

function openForRead(file: string): number {
  try {
    return openSync(file, 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw notFound(`audit file ${file} does not exist`);
    throw err;
  }
}

/** Reads a file line by line in fixed-size chunks, so a large audit file never sits in memory whole. */
export function* auditLines(file: string): Generator<AuditLine> {
  const fd = openForRead(file);
  try {
    const chunk = Buffer.alloc(CHUNK);
    let carry: Buffer[] = [];
    let number = 0;
    for (;;) {
      const n = readSync(fd, chunk, 0, CHUNK, null);
      if (n === 0) break;
      let start = 0;
      for (let nl = chunk.indexOf(0x0a, start); nl !== -1 && nl < n; nl = chunk.indexOf(0x0a, start)) {
        carry.push(chunk.subarray(start, nl));
        yield { number: ++number, text: Buffer.concat(carry).toString('utf8'), terminated: true };
        carry = [];
        start = nl + 1;
      }
      if (start < n) carry.push(Buffer.from(chunk.subarray(start, n)));
    }
    if (carry.length > 0) yield { number: ++number, text: Buffer.concat(carry).toString('utf8'), terminated: false };
  } finally {
    closeSync(fd);
  }
}

/**
 * Checks one line on its own: JSON object, well-formed chain fields, and a `hash` that matches
 * the contents. Chain links (seq order, prev) are the caller's business.
 */
export function parseAuditLine(text: string): { record: AuditRecord } | { reason: string } {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return { reason: 'not valid JSON' };
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return { reason: 'not a JSON object' };
  const { hash, ...rest } = value as Record<string, unknown>;
  if (!Number.isSafeInteger(rest.seq) || (rest.seq as number) < 1) return { reason: 'seq is not a positive integer' };
  if (typeof rest.time !== 'string' || Number.isNaN(Date.parse(rest.time))) return { reason: 'time is not an ISO-8601 time' };
  if (typeof rest.type !== 'string') return { reason: 'type is missing' };
  if (typeof rest.prev !== 'string' || !HEX64.test(rest.prev)) return { reason: 'prev is not a SHA-256 hex digest' };
  if (typeof hash !== 'string' || !HEX64.test(hash)) return { reason: 'hash is not a SHA-256 hex digest' };
  if (recordHash(rest as Record<string, unknown> & { prev: string }) !== hash) {
    return { reason: 'hash does not match the record: the line was edited' };
  }
  return { record: value as AuditRecord };
}

export type AuditVerification = { ok: true; count: number } | { ok: false; line: number; reason: string };

/**
 * Walks the whole chain. Detects an edited, removed, inserted or reordered line and names the
 * first line (1-based) where the chain breaks. Removing lines from the end leaves a valid
 * shorter chain: compare the last hash with an anchor kept elsewhere (AuditLog.head) to catch that.
 */
export function verifyAuditFile(file: string): AuditVerification {
  let prev = GENESIS_HASH;
  let count = 0;
  for (const line of auditLines(file)) {
    const fail = (reason: string): AuditVerification => ({ ok: false, line: line.number, reason });
    if (!line.terminated) return fail('the last line has no newline: the file was truncated or a write was cut short');
    const parsed = parseAuditLine(line.text);
    if ('reason' in parsed) return fail(parsed.reason);
    const { record } = parsed;
    if (record.seq !== count + 1) {
      return fail(`seq is ${record.seq}, expected ${count + 1}: a line was removed, inserted or moved`);
    }
    if (record.prev !== prev) {
      return fail(
        count === 0
          ? 'prev of the first record is not the genesis hash'
          : `prev does not match the hash of line ${line.number - 1}: a line was replaced, inserted or moved`,
      );
    }
    prev = record.hash;
    count++;
  }
  return { ok: true, count };
}

export interface AuditFilter {
  /** Task ID (the `task` field), and every event about that task's SPIFFE ID. */
  task?: string;
  agent?: string;
  spiffeId?: string;
  /** Milliseconds since the epoch; records appended at or after this time. */
  since?: number;
  /** Exact event type, e.g. "svid.issued". */
  type?: string;
}

/**
 * Returns the records matching every given filter field, in file order. It does not check the
 * hash chain (a tampered file must still be readable for forensics): run verifyAuditFile for that.
 */
export function readAuditEvents(file: string, filter: AuditFilter = {}): AuditRecord[] {
  const records: Record<string, unknown>[] = [];
  for (const line of auditLines(file)) {
    let record: Record<string, unknown>;
    try {
      record = JSON.parse(line.text) as Record<string, unknown>;
    } catch {
      throw failedPrecondition(`audit file ${file}: line ${line.number} is not valid JSON`);
    }
    if (record === null || typeof record !== 'object') {
      throw failedPrecondition(`audit file ${file}: line ${line.number} is not a JSON object`);
    }
    records.push(record);
  }
  // A task's story includes events that name only its SPIFFE ID (revocation.added, svid.issued):
  // the task's IDs are learnt from the events that name the task.
  const taskIds = new Set<unknown>();
  if (filter.task !== undefined) {
    for (const r of records) {
      if (r.task === filter.task && (filter.agent === undefined || r.agent === filter.agent) && typeof r.spiffe_id === 'string') taskIds.add(r.spiffe_id);
    }
  }
  const out: AuditRecord[] = [];
  for (const record of records) {
    const viaTaskId = filter.task !== undefined && record.task === undefined && taskIds.has(record.spiffe_id);
    if (filter.task !== undefined && record.task !== filter.task && !viaTaskId) continue;
    if (filter.agent !== undefined && record.agent !== filter.agent && !viaTaskId) continue;
    if (filter.spiffeId !== undefined && record.spiffe_id !== filter.spiffeId) continue;
    if (filter.type !== undefined && record.type !== filter.type) continue;
    if (filter.since !== undefined && !(Date.parse(String(record.time)) >= filter.since)) continue;
    out.push(record as unknown as AuditRecord);
  }
  return out;
}
