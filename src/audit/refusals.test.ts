import { describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { silentLogger } from '../common/logger.js';
import type { AttestationRefusedEvent } from './events.js';
import { RefusalAggregator } from './refusals.js';

const T0 = Date.UTC(2026, 0, 1);

function setup(maxKeys?: number) {
  const clock = new ManualClock(T0);
  const lines: AttestationRefusedEvent[] = [];
  const agg = new RefusalAggregator({ append: (e) => lines.push(e), clock, logger: silentLogger(), intervalMs: 60_000, maxKeys });
  return { clock, lines, agg };
}

describe('RefusalAggregator', () => {
  it('writes the first refusal of a (uid, reason) at once and one counted line per interval after', async () => {
    const { clock, lines, agg } = setup();
    for (let i = 0; i < 10_000; i++) agg.refused({ pid: 100 + i, uid: 1001, reason: 'FetchX509SVID: no identity' });
    agg.refused({ pid: 7, uid: 1002, reason: 'FetchX509SVID: no identity' });
    expect(lines).toEqual([
      { type: 'attestation.refused', outcome: 'denied', pid: 100, uid: 1001, reason: 'FetchX509SVID: no identity' },
      { type: 'attestation.refused', outcome: 'denied', pid: 7, uid: 1002, reason: 'FetchX509SVID: no identity' },
    ]);
    await clock.advance(60_000);
    expect(lines.slice(2)).toEqual([
      { type: 'attestation.refused', outcome: 'denied', pid: 10_099, uid: 1001, reason: 'FetchX509SVID: no identity', count: 9_999, since: T0 },
    ]);
    // Still refused in the next interval: summarized again, not written one by one.
    agg.refused({ pid: 5, uid: 1001, reason: 'FetchX509SVID: no identity' });
    expect(lines).toHaveLength(3);
    await clock.advance(60_000);
    expect(lines.slice(3)).toEqual([expect.objectContaining({ uid: 1001, count: 1, since: T0 + 60_000 })]);
    // A whole quiet interval forgets the pair: the next refusal is written at once again.
    await clock.advance(60_000);
    agg.refused({ pid: 6, uid: 1001, reason: 'FetchX509SVID: no identity' });
    expect(lines.at(-1)).toEqual({ type: 'attestation.refused', outcome: 'denied', pid: 6, uid: 1001, reason: 'FetchX509SVID: no identity' });
  });

  it('bounds the pairs it tracks: a uid cycling reasons is summed under one overflow reason', async () => {
    const { clock, lines, agg } = setup(100);
    for (let i = 0; i < 1000; i++) agg.refused({ pid: 1, uid: 1001, reason: `exe /tmp/copy-${i}` });
    expect(lines).toHaveLength(17);
    expect(lines.at(-1)!.reason).toMatch(/too many distinct reasons/);
    // Another uid still gets its own line.
    agg.refused({ pid: 2, uid: 1002, reason: 'exe /usr/bin/app' });
    expect(lines.at(-1)).toMatchObject({ uid: 1002, reason: 'exe /usr/bin/app' });
    await clock.advance(60_000);
    expect(lines.at(-1)).toMatchObject({ uid: 1001, count: 983, reason: expect.stringMatching(/too many distinct reasons/) });
    // Quiet reasons are forgotten, so the uid's budget frees up again.
    await clock.advance(60_000);
    await clock.advance(60_000);
    agg.refused({ pid: 1, uid: 1001, reason: 'exe /tmp/new' });
    expect(lines.at(-1)).toMatchObject({ uid: 1001, reason: 'exe /tmp/new' });
  });

  it('withholds a reason the audit log would refuse, and survives a failing sink', () => {
    const clock = new ManualClock(T0);
    const lines: AttestationRefusedEvent[] = [];
    let full = true;
    const agg = new RefusalAggregator({
      append: (e) => {
        if (full) throw new Error('ENOSPC');
        lines.push(e);
      },
      clock,
      logger: silentLogger(),
      intervalMs: 1000,
    });
    expect(() => agg.refused({ pid: 1, uid: 5, reason: 'exe /tmp/eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl' })).not.toThrow();
    full = false;
    agg.refused({ pid: 1, uid: 6, reason: 'exe /tmp/eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl' });
    expect(lines[0]!.reason).toMatch(/details withheld/);
    agg.refused({ pid: 2, uid: 6, reason: 'again' });
    agg.close();
    expect(lines).toHaveLength(2);
  });
});
