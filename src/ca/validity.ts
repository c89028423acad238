import { formatDuration } from '../common/duration.js';

/**
 * Certificate validity maths, pure. Times are epoch milliseconds; results are whole seconds
 * (multiples of 1000) because certificates and JWTs carry seconds.
 */

/**
 * How far notBefore is set into the past so that a peer whose clock runs a little behind ours
 * already accepts a fresh SVID. SPIRE uses the same 10 s; more would only widen the window in
 * which a certificate is valid before it existed.
 */
export const BACKDATE_MS = 10_000;

export interface Validity {
  notBefore: number;
  notAfter: number;
}

const floorSeconds = (ms: number): number => Math.floor(ms / 1000) * 1000;

/**
 * Validity of an SVID minted at `now` for `ttlMs`: backdated by BACKDATE_MS, and never outliving
 * the issuer (notAfter is capped at `issuerNotAfter`). Both bounds are floored to whole seconds,
 * so notAfter never exceeds the issuer's even when the issuer's has a sub-second part.
 */
export function svidValidity(now: number, ttlMs: number, issuerNotAfter: number): Validity {
  return {
    notBefore: floorSeconds(now - BACKDATE_MS),
    notAfter: floorSeconds(Math.min(now + ttlMs, issuerNotAfter)),
  };
}

/**
 * A signing CA is activated when 1/6 of its lifetime is left, so that is all the remaining
 * validity an SVID can count on. A longer SVID TTL means SVIDs get cut short at the CA's expiry.
 */
export function svidTtlWarning(svidTtlMs: number, caTtlMs: number): string | undefined {
  const guaranteed = Math.floor(caTtlMs / 6);
  if (svidTtlMs <= guaranteed) return undefined;
  return (
    `SVID TTL ${formatDuration(svidTtlMs)} exceeds the ${formatDuration(guaranteed)} that the active signing CA guarantees ` +
    `(1/6 of the CA TTL ${formatDuration(caTtlMs)}); SVIDs will be cut short at the CA's expiry`
  );
}
