import { describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { AttestRateLimiter, attestSource } from './attest-limiter.js';

const clockAt = () => new ManualClock();

describe('attest rate limiter', () => {
  it('allows a burst of perMinute, then one more per 60/perMinute seconds', async () => {
    const clock = clockAt();
    const limiter = new AttestRateLimiter(6, clock);
    for (let i = 0; i < 6; i++) expect(limiter.admit('10.0.0.1')).toBe(true);
    expect(limiter.admit('10.0.0.1')).toBe(false);
    await clock.advance(9_999);
    expect(limiter.admit('10.0.0.1')).toBe(false);
    await clock.advance(1);
    expect(limiter.admit('10.0.0.1')).toBe(true);
    expect(limiter.admit('10.0.0.1')).toBe(false);
    expect(limiter.refused).toEqual({ rate: 3, sources: 0 });
  });

  it('charges an IPv4-mapped address to its IPv4 address and an IPv6 address to its /64', () => {
    expect(attestSource('::ffff:192.0.2.7')).toBe(attestSource('192.0.2.7'));
    expect(attestSource('2001:db8:1:2::1')).toBe(attestSource('2001:db8:1:2:ffff:ffff:ffff:ffff'));
    expect(attestSource('2001:db8:1:2::1')).not.toBe(attestSource('2001:db8:1:3::1'));
    expect(attestSource(undefined)).toBe('unknown');
    expect(attestSource('not an address')).toBe('unknown');

    const limiter = new AttestRateLimiter(1, clockAt());
    expect(limiter.admit('2001:db8:1:2::1')).toBe(true);
    expect(limiter.admit('2001:db8:1:2::99')).toBe(false);
    expect(limiter.admit('2001:db8:1:3::1')).toBe(true);
  });

  it('refuses new sources while the table is full, and forgets sources once they are quiet', async () => {
    const clock = clockAt();
    const limiter = new AttestRateLimiter(2, clock, 3);
    for (const a of ['10.0.0.1', '10.0.0.2', '10.0.0.3']) {
      expect(limiter.admit(a)).toBe(true);
      expect(limiter.admit(a)).toBe(true);
    }
    expect(limiter.admit('10.0.0.4')).toBe(false);
    expect(limiter.refused.sources).toBe(1);
    // A known source is judged by its own bucket, empty here.
    expect(limiter.admit('10.0.0.1')).toBe(false);
    expect(limiter.refused.rate).toBe(1);
    // 30 s later each bucket has one token back, none is full: still no room.
    await clock.advance(30_000);
    expect(limiter.admit('10.0.0.4')).toBe(false);
    // A minute after their last attempt the buckets are full again: the sources are forgotten.
    await clock.advance(30_000);
    expect(limiter.admit('10.0.0.4')).toBe(true);
    expect(limiter.sources).toBe(1);
  });

  it('rejects a limit that is not a positive integer', () => {
    expect(() => new AttestRateLimiter(0, clockAt())).toThrow(RangeError);
    expect(() => new AttestRateLimiter(1.5, clockAt())).toThrow(RangeError);
  });
});
