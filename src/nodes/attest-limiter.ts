import ipaddr from 'ipaddr.js';
import type { Clock } from '../common/clock.js';
import { TokenBucket } from '../common/token-bucket.js';

/*
 * Attest is the one call of the agent listener that any peer can make without a credential, and
 * each attempt costs a datastore transaction and an audit line. Attempts are charged to their
 * source address (an IPv4 address; for IPv6 its /64, which one host can usually spread over) and
 * refused past `perMinute` (a burst of that many, refilled evenly over the minute). Refusals here
 * are counted, not audited one by one: auditing them would hand the writing back to the peer.
 */

/** Sources remembered at once; more are refused until some have been quiet long enough to forget. */
export const MAX_TRACKED_SOURCES = 10_000;
/** A full table is swept for quiet sources at most this often (a sweep walks all of it). */
const SWEEP_INTERVAL_MS = 1000;

export interface AttestRefusals {
  /** A source over its rate. */
  rate: number;
  /** A new source while the table was full of sources not yet quiet. */
  sources: number;
}

export class AttestRateLimiter {
  private readonly bySource = new Map<string, TokenBucket>();
  private sweptAt = -Infinity;
  readonly refused: AttestRefusals = { rate: 0, sources: 0 };

  constructor(
    private readonly perMinute: number,
    private readonly clock: Clock,
    private readonly maxSources = MAX_TRACKED_SOURCES,
  ) {
    if (!Number.isInteger(perMinute) || perMinute <= 0) throw new RangeError('perMinute must be a positive integer');
  }

  /** Takes one attempt for `address`; false: refuse it. */
  admit(address: string | undefined): boolean {
    const now = this.clock.now();
    const source = attestSource(address);
    let bucket = this.bySource.get(source);
    if (!bucket) {
      if (this.bySource.size >= this.maxSources && now - this.sweptAt >= SWEEP_INTERVAL_MS) {
        this.sweptAt = now;
        // A full bucket holds nothing a fresh one would not: forgetting its source changes no answer.
        for (const [s, b] of this.bySource) if (b.full(now)) this.bySource.delete(s);
      }
      if (this.bySource.size >= this.maxSources) {
        this.refused.sources++;
        return false;
      }
      bucket = new TokenBucket(this.perMinute / 60, now, this.perMinute);
      this.bySource.set(source, bucket);
    }
    if (bucket.take(now)) return true;
    this.refused.rate++;
    return false;
  }

  /** Sources remembered now (for tests). */
  get sources(): number {
    return this.bySource.size;
  }
}

/** The source an attempt is charged to: "v4:a.b.c.d", "v6:<first 64 bits>", or "unknown". */
export function attestSource(address: string | undefined): string {
  if (address === undefined || !ipaddr.isValid(address)) return 'unknown';
  // process(): an IPv4-mapped IPv6 address (a dual-stack listener's view of IPv4) is its IPv4 address.
  const parsed = ipaddr.process(address);
  if (parsed.kind() === 'ipv4') return `v4:${parsed.toString()}`;
  return `v6:${Buffer.from(parsed.toByteArray().slice(0, 8)).toString('hex')}`;
}
