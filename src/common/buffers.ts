/*
 * Node hands out small Buffers (under 4 KiB) as slices of shared 8 KiB slabs, and one slice kept
 * alive keeps its whole slab. Bytes held for long (an SVID's certificate and key while it is
 * cached, an encoded stream response while streams hold it) go into memory of their own, or each
 * would pin a slab that is mostly garbage from other allocations: with 1,000 cached identities,
 * megabytes.
 */

/** `bytes` in memory of its own (the same Buffer when it already is). */
export function unpooled(bytes: Buffer): Buffer {
  if (bytes.byteOffset === 0 && bytes.buffer.byteLength === bytes.length) return bytes;
  const own = Buffer.allocUnsafeSlow(bytes.length);
  bytes.copy(own);
  return own;
}

/** Buffer.concat into memory of its own (never a slice of a shared slab). */
export function concatUnpooled(list: readonly Buffer[]): Buffer {
  let length = 0;
  for (const b of list) length += b.length;
  const out = Buffer.allocUnsafeSlow(length);
  let at = 0;
  for (const b of list) at += b.copy(out, at);
  return out;
}
