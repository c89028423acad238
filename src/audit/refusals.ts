import type { Clock } from '../common/clock.js';
import type { Logger } from '../common/logger.js';
import type { AttestationRefusedEvent } from './events.js';
import { assertAuditSafe } from './redaction.js';

export interface RefusalAggregatorOptions {
  /** Where the lines go (the audit log). A throw (full disk, refused text) is logged, never raised. */
  append(event: AttestationRefusedEvent): unknown;
  clock: Clock;
  logger: Logger;
  /** Length of one summary interval. */
  intervalMs: number;
  /** Distinct (uid, reason) pairs tracked at once; beyond it refusals are summed per uid under one reason. */
  maxKeys?: number;
  /** Distinct reasons tracked per uid (a user can vary its executable path at will); the rest are summed as above. */
  maxReasonsPerUid?: number;
}

interface Tally {
  uid: number;
  reason: string;
  /** Latest refused pid, for the summary line. */
  pid: number;
  /** Refusals since the last line written for this key. */
  count: number;
  since: number;
}

const OVERFLOW_REASON = 'refusals with other reasons (too many distinct reasons to list each)';
const WITHHELD_REASON = 'refused (details withheld: the reason quoted something that looks like key material or a token)';

/** The reason as the audit log will take it: one quoting process facts that look like a secret is withheld. */
function auditableReason(reason: string): string {
  try {
    assertAuditSafe({ type: 'attestation.refused', reason });
    return reason;
  } catch {
    return WITHHELD_REASON;
  }
}

/**
 * Keeps refused Workload API calls from filling the disk. Any local user can provoke a refusal,
 * thousands per second; one audit line each would fill a small volume in seconds. So:
 * - the first refusal of a (uid, reason) is written at once (the audit trail shows it happened);
 * - further refusals of that pair are counted and written as one summary line per interval,
 *   with the count and the interval's start;
 * - a pair with no refusals for a whole interval is forgotten, so its next refusal is written at
 *   once again.
 * The audit volume is thus bounded by the number of distinct (uid, reason) pairs per interval,
 * whatever the rate; a uid has at most maxReasonsPerUid of them (plus one overflow pair), and all
 * uids together at most maxKeys.
 */
export class RefusalAggregator {
  private readonly tallies = new Map<string, Tally>();
  private readonly maxKeys: number;
  private readonly maxReasonsPerUid: number;
  /** Tracked reasons per uid. */
  private readonly reasonsOf = new Map<number, number>();
  private timer: AbortController | undefined;
  private closed = false;

  constructor(private readonly options: RefusalAggregatorOptions) {
    this.maxKeys = options.maxKeys ?? 10_000;
    this.maxReasonsPerUid = options.maxReasonsPerUid ?? 16;
  }

  refused(refusal: { pid: number; uid: number; reason: string }): void {
    if (this.closed) return;
    let reason = auditableReason(refusal.reason);
    let key = `${refusal.uid}\u0000${reason}`;
    if (!this.tallies.has(key) && (this.tallies.size >= this.maxKeys || (this.reasonsOf.get(refusal.uid) ?? 0) >= this.maxReasonsPerUid)) {
      reason = OVERFLOW_REASON;
      key = `${refusal.uid}\u0000${reason}`;
    }
    const tally = this.tallies.get(key);
    if (tally) {
      tally.count++;
      tally.pid = refusal.pid;
      return;
    }
    this.tallies.set(key, { uid: refusal.uid, reason, pid: refusal.pid, count: 0, since: this.options.clock.now() });
    this.reasonsOf.set(refusal.uid, (this.reasonsOf.get(refusal.uid) ?? 0) + 1);
    this.write({ type: 'attestation.refused', outcome: 'denied', pid: refusal.pid, uid: refusal.uid, reason });
    this.schedule();
  }

  /** Writes one summary line per pair refused since its last line; forgets pairs that went quiet. */
  flush(): void {
    const now = this.options.clock.now();
    for (const [key, tally] of this.tallies) {
      if (tally.count === 0) {
        this.tallies.delete(key);
        const left = (this.reasonsOf.get(tally.uid) ?? 1) - 1;
        if (left > 0) this.reasonsOf.set(tally.uid, left);
        else this.reasonsOf.delete(tally.uid);
        continue;
      }
      this.write({ type: 'attestation.refused', outcome: 'denied', pid: tally.pid, uid: tally.uid, reason: tally.reason, count: tally.count, since: tally.since });
      tally.count = 0;
      tally.since = now;
    }
  }

  /** Writes the pending summaries and stops. */
  close(): void {
    if (this.closed) return;
    this.timer?.abort();
    this.timer = undefined;
    this.flush();
    this.closed = true;
  }

  private write(event: AttestationRefusedEvent): void {
    try {
      this.options.append(event);
    } catch (err) {
      // A full disk must not turn a refusal into a crash; the operational log says what was lost.
      this.options.logger.warn({ err, uid: event.uid, count: event.count ?? 1 }, 'could not audit a refused attestation');
    }
  }

  private schedule(): void {
    if (this.timer || this.closed) return;
    const timer = new AbortController();
    this.timer = timer;
    this.options.clock.sleep(this.options.intervalMs, timer.signal).then(
      () => {
        if (this.timer !== timer) return;
        this.timer = undefined;
        this.flush();
        if (this.tallies.size > 0) this.schedule();
      },
      () => {
        // aborted by close()
      },
    );
  }
}
