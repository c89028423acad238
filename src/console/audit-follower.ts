import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import type { Clock } from '../common/clock.js';
import type { Logger } from '../common/logger.js';

/** The fields of an audit record the console reacts to. */
export interface AuditSummary {
  type: string;
  outcome?: string;
  agent?: string;
  spiffe_id?: string;
  /** Milliseconds since the epoch (parsed from the record's ISO time). */
  at: number;
}

export interface AuditFollowerOptions {
  file: string;
  clock: Clock;
  logger: Logger;
  /** New records since the last poll, in file order; called at most once per poll. */
  onRecords(records: AuditSummary[]): void;
  /** Also called once per poll, with or without records (session upkeep, heartbeats). */
  onTick?(): void;
  /** How often the file is checked for growth. Default 250 ms. */
  pollMs?: number;
  /** Activity counters cover this window. Default one hour. */
  windowMs?: number;
  /** At start, only this tail of the file is read for the activity window. Default 16 MiB. */
  startTailBytes?: number;
}

const CHUNK = 64 * 1024;

/**
 * Follows the audit file the server appends to, the way `tail -f` does: it is the typed event
 * stream of everything that happened (issuance, refusals, task and entry changes), so the console
 * learns about changes made by any edge (CLI, mTLS admin, console, expiry) without hooks into
 * each service. It keeps the last hour's issuance and refusal times for the overview.
 */
export class AuditFollower {
  private readonly fd: number;
  private position: number;
  private carry: Buffer[] = [];
  private skipPartialLine: boolean;
  private readonly recent: AuditSummary[] = [];
  private readonly stop = new AbortController();
  private running: Promise<void> | undefined;

  constructor(private readonly opts: AuditFollowerOptions) {
    this.fd = openSync(opts.file, 'r');
    const size = fstatSync(this.fd).size;
    const tail = opts.startTailBytes ?? 16 * 1024 * 1024;
    this.position = Math.max(0, size - tail);
    // Starting mid-file: the text up to the first newline is the end of a line we did not read.
    this.skipPartialLine = this.position > 0;
    this.remember(this.readNew());
  }

  start(): void {
    this.running ??= this.loop();
  }

  async close(): Promise<void> {
    this.stop.abort();
    await this.running;
    closeSync(this.fd);
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

  private windowMs(): number {
    return this.opts.windowMs ?? 3_600_000;
  }

  private async loop(): Promise<void> {
    const pollMs = this.opts.pollMs ?? 250;
    for (;;) {
      try {
        await this.opts.clock.sleep(pollMs, this.stop.signal);
      } catch {
        return; // aborted: closing
      }
      try {
        const records = this.readNew();
        if (records.length > 0) {
          this.remember(records);
          this.opts.onRecords(records);
        }
        this.opts.onTick?.();
      } catch (err) {
        this.opts.logger.warn({ err: (err as Error).message }, 'console: following the audit file failed');
      }
    }
  }

  /** Complete lines appended since the last read, summarised. */
  private readNew(): AuditSummary[] {
    const size = fstatSync(this.fd).size;
    if (size < this.position) {
      // Replaced or truncated under us: start over from its beginning.
      this.position = 0;
      this.carry = [];
    }
    const out: AuditSummary[] = [];
    const chunk = Buffer.alloc(CHUNK);
    while (this.position < size) {
      const n = readSync(this.fd, chunk, 0, Math.min(CHUNK, size - this.position), this.position);
      if (n === 0) break;
      this.position += n;
      let start = 0;
      for (let nl = chunk.indexOf(0x0a, start); nl !== -1 && nl < n; nl = chunk.indexOf(0x0a, start)) {
        this.carry.push(chunk.subarray(start, nl));
        const summary = this.skipPartialLine ? undefined : summarise(Buffer.concat(this.carry).toString('utf8'));
        this.skipPartialLine = false;
        if (summary) out.push(summary);
        this.carry = [];
        start = nl + 1;
      }
      if (start < n) this.carry.push(Buffer.from(chunk.subarray(start, n)));
    }
    return out;
  }

  private remember(records: AuditSummary[]): void {
    const since = this.opts.clock.now() - this.windowMs();
    for (const r of records) if (r.at >= since) this.recent.push(r);
    let drop = 0;
    while (drop < this.recent.length && this.recent[drop]!.at < since) drop++;
    if (drop > 0) this.recent.splice(0, drop);
  }
}

function summarise(line: string): AuditSummary | undefined {
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
