/**
 * Hand-built HTTP/2 bytes for tests of hostile clients: Node's own client refuses to send some
 * of what an attacker can (a header block far over the peer's limits).
 */
function hpackInt(value: number, prefixBits: number, firstByteFlags: number): Buffer {
  const max = (1 << prefixBits) - 1;
  if (value < max) return Buffer.from([firstByteFlags | value]);
  const out = [firstByteFlags | max];
  value -= max;
  while (value >= 128) { out.push((value & 0x7f) | 0x80); value >>= 7; }
  out.push(value);
  return Buffer.from(out);
}
function literal(name: string, value: string): Buffer {
  return Buffer.concat([Buffer.from([0x00]), hpackInt(name.length, 7, 0), Buffer.from(name), hpackInt(value.length, 7, 0), Buffer.from(value)]);
}
function frame(type: number, flags: number, stream: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3); h[3] = type; h[4] = flags; h.writeUInt32BE(stream, 5);
  return Buffer.concat([h, payload]);
}
/** Bytes of an HTTP/2 connection whose first request carries one header of `size` bytes. */
export function oversizedHeaderBytes(size: number): Buffer {
  const block = Buffer.concat([
    literal(':method', 'POST'), literal(':scheme', 'http'), literal(':path', '/SpiffeWorkloadAPI/FetchX509SVID'),
    literal(':authority', 'localhost'), literal('content-type', 'application/grpc'), literal('x-big', 'a'.repeat(size)),
  ]);
  const frames = [Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), frame(4, 0, 0, Buffer.alloc(0))];
  for (let off = 0; off < block.length; off += 16384) {
    const chunk = block.subarray(off, off + 16384);
    const last = off + 16384 >= block.length;
    frames.push(frame(off === 0 ? 1 : 9, last ? 0x4 : 0, 1, chunk));
  }
  return Buffer.concat(frames);
}
