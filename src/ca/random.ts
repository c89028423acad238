import { randomBytes } from 'node:crypto';

/*
 * Serial numbers and jti values: one randomBytes() call costs about as much as an ECDSA signature
 * when made per certificate, so they are cut from a pooled block. Never used for key material,
 * which comes from OpenSSL's key generation directly.
 */
const POOL_SIZE = 8192;
let pool = Buffer.alloc(0);
let offset = 0;

/** `n` fresh random bytes (a copy; every pooled byte is handed out once). */
export function pooledRandomBytes(n: number): Buffer {
  if (n > POOL_SIZE) return randomBytes(n);
  if (offset + n > pool.length) {
    pool = randomBytes(POOL_SIZE);
    offset = 0;
  }
  const out = Buffer.allocUnsafe(n);
  pool.copy(out, 0, offset, offset + n);
  offset += n;
  return out;
}
