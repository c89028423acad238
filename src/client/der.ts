import { invalidArgument } from '../common/errors.js';

const SEQUENCE = 0x30;

/**
 * Splits concatenated DER SEQUENCEs (the Workload API's encoding of certificate chains and
 * bundles) into one Buffer per element, by walking the outer length fields. Only definite
 * lengths are valid DER; trailing bytes or a truncated element reject the whole input, because
 * a silently shortened chain or bundle would change what a peer is trusted against.
 */
export function splitDer(data: Buffer, what: string): Buffer[] {
  const out: Buffer[] = [];
  let offset = 0;
  while (offset < data.length) {
    const start = offset;
    if (data[offset] !== SEQUENCE) {
      throw invalidArgument(`${what}: element ${out.length} at byte ${start} is not a DER SEQUENCE`);
    }
    offset += 1;
    const first = data[offset];
    if (first === undefined) throw invalidArgument(`${what}: element ${out.length} is truncated`);
    offset += 1;
    let length: number;
    if (first < 0x80) {
      length = first;
    } else if (first === 0x80) {
      throw invalidArgument(`${what}: element ${out.length} uses an indefinite length, which DER forbids`);
    } else {
      const count = first & 0x7f;
      // Four length bytes already describe 4 GiB; anything longer cannot be a certificate.
      if (count > 4) throw invalidArgument(`${what}: element ${out.length} has an oversized length field`);
      if (offset + count > data.length) throw invalidArgument(`${what}: element ${out.length} is truncated`);
      length = 0;
      for (let i = 0; i < count; i++) length = length * 256 + data[offset + i]!;
      if (data[offset] === 0 || length < 0x80) {
        throw invalidArgument(`${what}: element ${out.length} has a non-minimal length, which DER forbids`);
      }
      offset += count;
    }
    if (offset + length > data.length) throw invalidArgument(`${what}: element ${out.length} is truncated`);
    offset += length;
    out.push(Buffer.from(data.subarray(start, offset)));
  }
  return out;
}

/** PEM-encodes DER blocks ("CERTIFICATE", "X509 CRL", "PRIVATE KEY"), 64 characters a line. */
export function toPem(ders: Buffer | readonly Buffer[], label: string): string {
  const list = Buffer.isBuffer(ders) ? [ders] : ders;
  return list
    .map((der) => {
      const b64 = der.toString('base64');
      const lines: string[] = [];
      for (let i = 0; i < b64.length; i += 64) lines.push(b64.slice(i, i + 64));
      return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
    })
    .join('');
}
