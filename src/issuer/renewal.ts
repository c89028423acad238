/**
 * When to replace an SVID: at half its lifetime, pulled earlier by up to `jitterFraction` of the
 * lifetime so that SVIDs minted together (a restart, a CA rotation) do not all renew in the same tick.
 * `random` is in [0, 1).
 */
export function renewalTime(notBefore: number, notAfter: number, random: number, jitterFraction = 0.1): number {
  const lifetime = Math.max(0, notAfter - notBefore);
  return notBefore + Math.floor(lifetime * (0.5 - jitterFraction * random));
}

/** The lifetime an SVID may have: its own TTL, never past a cap (task end + buffer, entry expiry). */
export function cappedTtl(now: number, ttlMs: number, notAfterCap: number | null): number {
  if (notAfterCap === null) return ttlMs;
  return Math.max(0, Math.min(ttlMs, notAfterCap - now));
}
