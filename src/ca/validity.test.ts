import { describe, expect, it } from 'vitest';
import { BACKDATE_MS, svidTtlWarning, svidValidity } from './validity.js';

const T = Date.UTC(2026, 0, 1, 12, 0, 0);

describe('svidValidity', () => {
  it.each([
    ['plain', T, 3_600_000, T + 86_400_000, T - BACKDATE_MS, T + 3_600_000],
    ['capped by the issuer', T, 3_600_000, T + 60_000, T - BACKDATE_MS, T + 60_000],
    ['sub-second now floors both bounds', T + 999, 3_600_000, T + 86_400_000, T - BACKDATE_MS, T + 3_600_000],
    ['issuer notAfter with sub-second part is never exceeded', T, 3_600_000, T + 60_500, T - BACKDATE_MS, T + 60_000],
  ])('%s', (_name, now, ttl, issuerNotAfter, notBefore, notAfter) => {
    const v = svidValidity(now, ttl, issuerNotAfter);
    expect(v).toEqual({ notBefore, notAfter });
    expect(v.notBefore % 1000).toBe(0);
    expect(v.notAfter % 1000).toBe(0);
    expect(v.notAfter).toBeLessThanOrEqual(issuerNotAfter);
  });
});

describe('svidTtlWarning', () => {
  it('is silent while the SVID TTL fits in 1/6 of the CA TTL', () => {
    expect(svidTtlWarning(4 * 3_600_000, 24 * 3_600_000)).toBeUndefined();
  });
  it('warns when the SVID TTL exceeds what the active CA guarantees', () => {
    expect(svidTtlWarning(4 * 3_600_000 + 1000, 24 * 3_600_000)).toMatch(/exceeds the 4h/);
  });
});
