import { describe, expect, it } from 'vitest';
import { applyToItems, nextRotationAt, planRotation, type RotationState, type SlotItem } from './rotation.js';

const H = 3_600_000;
const item = (id: string, slot: SlotItem['slot'], notBefore: number, ttl: number): SlotItem => ({
  id,
  slot,
  notBefore,
  notAfter: notBefore + ttl,
});
const state = (x509: SlotItem[], extra: Partial<RotationState> = {}): RotationState => ({
  x509,
  // Long-lived, so only the list under test has anything due.
  jwt: [item('j1', 'active', 0, 1000 * H)],
  jwtKeepAfterExpiryMs: H,
  ...extra,
});

describe('planRotation', () => {
  it.each([
    ['nothing before half-life', [item('a', 'active', 0, 24 * H)], 11 * H, []],
    ['prepares at half-life', [item('a', 'active', 0, 24 * H)], 12 * H, [{ type: 'create', kind: 'x509', activate: false }]],
    [
      'activates the prepared one at 1/6 left',
      [item('a', 'active', 0, 24 * H), item('b', 'prepared', 12 * H, 24 * H)],
      20 * H,
      [{ type: 'activate', kind: 'x509', id: 'b' }],
    ],
    [
      'keeps waiting between prepare and activate',
      [item('a', 'active', 0, 24 * H), item('b', 'prepared', 12 * H, 24 * H)],
      19 * H,
      [],
    ],
    [
      'keeps a retired CA until it expires',
      [item('a', 'retired', 0, 24 * H), item('b', 'active', 20 * H, 24 * H)],
      24 * H - 1,
      [],
    ],
    [
      'removes a retired CA once expired',
      [item('a', 'retired', 0, 24 * H), item('b', 'active', 20 * H, 24 * H)],
      24 * H,
      [{ type: 'remove', kind: 'x509', id: 'a' }],
    ],
    ['creates an active one on first start', [], 0, [{ type: 'create', kind: 'x509', activate: true }]],
    [
      'replaces an expired active one (server was down)',
      [item('a', 'active', 0, 24 * H)],
      30 * H,
      [{ type: 'create', kind: 'x509', activate: true }],
    ],
    [
      'past 1/6 with nothing prepared, a signing CA is created active at once',
      [item('a', 'active', 0, 24 * H)],
      21 * H,
      [{ type: 'create', kind: 'x509', activate: true }],
    ],
  ] as const)('x509: %s', (_name, x509, now, expected) => {
    expect(planRotation(state([...x509]), now)).toEqual(expected);
  });

  it('JWT keys and roots past 1/6 with nothing prepared get a prepared one first (peers must learn it)', () => {
    const s: RotationState = {
      root: [item('r', 'active', 0, 24 * H)],
      x509: [item('a', 'active', 20 * H, 24 * H)],
      jwt: [item('j', 'active', 0, 24 * H)],
      jwtKeepAfterExpiryMs: H,
    };
    expect(planRotation(s, 21 * H)).toEqual([
      { type: 'create', kind: 'root', activate: false },
      { type: 'create', kind: 'jwt', activate: false },
    ]);
  });

  it('keeps a retired JWT key published until notAfter + max JWT TTL', () => {
    const s = state([item('a', 'active', 0, 1000 * H)], {
      jwt: [item('old', 'retired', 0, 24 * H), item('new', 'active', 24 * H, 24 * H)],
    });
    expect(planRotation(s, 24 * H + H - 1)).toEqual([]);
    expect(planRotation(s, 25 * H)).toEqual([{ type: 'remove', kind: 'jwt', id: 'old' }]);
  });
});

describe('rotation over time', () => {
  it('always has an active item, one prepared at most, and activates only prepared ones', () => {
    let s: RotationState = { root: [], x509: [], jwt: [], jwtKeepAfterExpiryMs: H };
    let counter = 0;
    const ttl = { root: 240 * H, x509: 24 * H, jwt: 24 * H };
    for (let now = 0; now < 1000 * H; ) {
      for (const action of planRotation(s, now)) {
        const list = action.kind;
        const key = list === 'root' ? 'root' : list;
        const current = (s[key] ?? []) as SlotItem[];
        const created = action.type === 'create' ? item(`i${counter++}`, 'prepared', now, ttl[list]) : undefined;
        s = { ...s, [key]: applyToItems(current, action, created) };
      }
      for (const list of [s.root!, s.x509, s.jwt]) {
        const active = list.filter((i) => i.slot === 'active');
        expect(active).toHaveLength(1);
        expect(now).toBeLessThan(active[0]!.notAfter);
        expect(list.filter((i) => i.slot === 'prepared').length).toBeLessThanOrEqual(1);
      }
      // No retired CA lingers past expiry; no retired JWT key past expiry + max TTL.
      expect(s.x509.every((i) => i.slot !== 'retired' || now < i.notAfter)).toBe(true);
      expect(s.jwt.every((i) => i.slot !== 'retired' || now < i.notAfter + H)).toBe(true);
      const next = nextRotationAt(s);
      expect(next).toBeGreaterThan(now);
      expect(planRotation(s, next - 1)).toEqual([]);
      expect(planRotation(s, next).length).toBeGreaterThan(0);
      now = next;
    }
  });
});
