import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import type { AuditEventInput } from '../audit/events.js';
import type { AuditObserver } from '../audit/audit-log.js';
import type { Clock } from '../common/clock.js';
import type { Logger } from '../common/logger.js';

/** The fields of an audit record the console reacts to. */
export interface AuditSummary {
  type: string;
  outcome?: string;
  agent?: string;
  spiffe_id?: string;
  /** Milliseconds since the epoch. */
  at: number;
}

export interface AuditFollowerOptions {
  /** The audit file, read once at start for the activity window's history. */
  file: string;
  clock: Clock;
  logger: Logger;
  /** Records appended since the last call, in order; bursts (one stream refresh) arrive as one call. */
  onRecords(records: AuditSummary[]): void;
  /** Activity counters cover this window. Default one hour. */
  windowMs?: number;
  /** At start, only this tail of the file is read for the activity window. Default 16 MiB. */
  startTailBytes?: number;
}

/**
 * The console's view of the audit trail's typed event stream (a tap, AuditLog.observe): every
 * change made through any edge (CLI, mTLS admin, console, expiry, issuance) passes through it, so
 * the console learns of changes without hooks into each service. It keeps the last hour's
 * issuance and refusal times for the overview, seeded from the file's tail at start.
 */
export class AuditFollower {
  private readonly recent: AuditSummary[] = [];
  private pending: AuditSummary[] = [];
  private closed = false;

  /** Pass to AuditLog.observe. Never throws (the audit log tells observers after each append). */
  readonly observer: AuditObserver = {
    appended: (event) => this.appended(event),
  };

  constructor(private readonly opts: AuditFollowerOptions) {
    this.remember(readTail(opts.file, opts.startTailBytes ?? 16 * 1024 * 1024).flatMap((line) => summariseLine(line) ?? []));
  }

  close(): void {
    this.closed = true;
  }

  /** Issued (X.509 and JWT, first issue and rotation) and refused counts within the window. */
  activity(include: (r: AuditSummary) => boolean = () => true): { issued: number; refused: number } {
    const since = this.opts.clock.now() - this.windowMs();
    let issued = 0;
    let refused = 0;
    for (const r of this.recent) {
      if (r.at < since || !include(r)) continue;
      if (r.type === 'svid.issued' || r.type === 'svid.rotated') issued++;
      else if (r.outcome === 'denied') refused++;
    }
    return { issued, refused };
  }

  private appended(event: AuditEventInput): void {
    if (this.closed) return;
    const e = event as AuditEventInput & { agent?: unknown; spiffe_id?: unknown };
    this.pending.push({
      type: e.type,
      at: this.opts.clock.now(),
      ...(e.outcome ? { outcome: e.outcome } : {}),
      ...(typeof e.agent === 'string' ? { agent: e.agent } : {}),
      ...(typeof e.spiffe_id === 'string' ? { spiffe_id: e.spiffe_id } : {}),
    });
    // One delivery per event-loop turn: a refresh that issues a thousand SVIDs wakes browsers once.
    if (this.pending.length === 1) setImmediate(() => this.flush());
  }

  private flush(): void {
    const batch = this.pending;
    this.pending = [];
    if (this.closed || batch.length === 0) return;
    this.remember(batch);
    try {
      this.opts.onRecords(batch);
    } catch (err) {
      this.opts.logger.warn({ err: (err as Error).message }, 'console: delivering audit changes failed');
    }
  }

  private windowMs(): number {
    return this.opts.windowMs ?? 3_600_000;
  }

  private remember(records: AuditSummary[]): void {
    const since = this.opts.clock.now() - this.windowMs();
    for (const r of records) if (r.at >= since) this.recent.push(r);
    let drop = 0;
    while (drop < this.recent.length && this.recent[drop]!.at < since) drop++;
    if (drop > 0) this.recent.splice(0, drop);
  }
}

/** The complete lines within the last `bytes` of a file (a line cut by the start is skipped). */
function readTail(file: string, bytes: number): string[] {
  const fd = openSync(file, 'r');
  try {
    const size = fstatSync(fd).size;
    const start = Math.max(0, size - bytes);
    const buf = Buffer.alloc(size - start);
    readSync(fd, buf, 0, buf.length, start);
    const lines = buf.toString('utf8').split('\n');
    lines.pop(); // the text after the last newline: empty, or a write still under way
    if (start > 0) lines.shift();
    return lines;
  } finally {
    closeSync(fd);
  }
}

function summariseLine(line: string): AuditSummary | undefined {
  try {
    const r = JSON.parse(line) as Record<string, unknown>;
    const at = Date.parse(String(r.time));
    if (typeof r.type !== 'string' || Number.isNaN(at)) return undefined;
    return {
      type: r.type,
      at,
      ...(typeof r.outcome === 'string' ? { outcome: r.outcome } : {}),
      ...(typeof r.agent === 'string' ? { agent: r.agent } : {}),
      ...(typeof r.spiffe_id === 'string' ? { spiffe_id: r.spiffe_id } : {}),
    };
  } catch {
    return undefined; // a torn or edited line: `agentid audit verify` reports it, the console skips it
  }
}
