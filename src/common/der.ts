import { invalidArgument } from './errors.js';

/*
 * Just enough DER for what crosses the wire as bytes: splitting concatenated certificates
 * (Workload API chains and bundles) and reaching the parts of a signed structure. Certificates
 * themselves are parsed by @peculiar/x509 or node:crypto. Shared by the public libraries.
 */

export interface Tlv {
  tag: number;
  /** Offset of the tag byte. */
  start: number;
  /** Offset of the first content byte. */
  contentStart: number;
  /** Offset one past the last content byte. */
  end: number;
}

/** Reads one definite-length TLV at `offset`; throws on truncation and on anything DER forbids. */
export function readTlv(data: Uint8Array, offset: number, what: string): Tlv {
  const start = offset;
  const tag = data[offset];
  if (tag === undefined) throw invalidArgument(`${what} is truncated`);
  // High-tag-number form never appears in the structures we read.
  if ((tag & 0x1f) === 0x1f) throw invalidArgument(`${what} has an unsupported DER tag`);
  offset += 1;
  const first = data[offset];
  if (first === undefined) throw invalidArgument(`${what} is truncated`);
  offset += 1;
  let length: number;
  if (first < 0x80) {
    length = first;
  } else if (first === 0x80) {
    throw invalidArgument(`${what} uses an indefinite length, which DER forbids`);
  } else {
    const count = first & 0x7f;
    // Four length bytes already describe 4 GiB; anything longer cannot be a certificate.
    if (count > 4) throw invalidArgument(`${what} has an oversized length field`);
    if (offset + count > data.length) throw invalidArgument(`${what} is truncated`);
    length = 0;
    for (let i = 0; i < count; i++) length = length * 256 + data[offset + i]!;
    if (data[offset] === 0 || length < 0x80) throw invalidArgument(`${what} has a non-minimal length, which DER forbids`);
    offset += count;
  }
  if (offset + length > data.length) throw invalidArgument(`${what} is truncated`);
  return { tag, start, contentStart: offset, end: offset + length };
}

/**
 * Splits concatenated DER SEQUENCEs into one Buffer each. Trailing bytes or a truncated element
 * reject the whole input: a silently shortened chain or bundle would change what is trusted.
 */
export function splitDer(data: Uint8Array, what: string): Buffer[] {
  const out: Buffer[] = [];
  let offset = 0;
  while (offset < data.length) {
    if (data[offset] !== 0x30) throw invalidArgument(`${what}: element ${out.length} at byte ${offset} is not a DER SEQUENCE`);
    const tlv = readTlv(data, offset, `${what}: element ${out.length}`);
    out.push(Buffer.from(data.subarray(tlv.start, tlv.end)));
    offset = tlv.end;
  }
  return out;
}

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----([\s\S]*?)-----END \1-----/g;

/** Every PEM block with the given label; anything else in the text is ignored. */
export function pemBlocks(text: string, label: string): Buffer[] {
  const out: Buffer[] = [];
  for (const m of text.matchAll(PEM_BLOCK)) {
    if (m[1] !== label) continue;
    const body = m[2]!.replace(/\s+/g, '');
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(body) || body.length % 4 !== 0) {
      throw invalidArgument(`PEM ${label}: body is not base64`);
    }
    out.push(Buffer.from(body, 'base64'));
  }
  return out;
}

/** PEM-encodes DER blocks ("CERTIFICATE", "X509 CRL", "PRIVATE KEY"), 64 characters a line. */
export function toPem(ders: Uint8Array | readonly Uint8Array[], label: string): string {
  const list = ders instanceof Uint8Array ? [ders] : ders;
  return list
    .map((der) => {
      const lines = Buffer.from(der).toString('base64').match(/.{1,64}/g) ?? [];
      return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
    })
    .join('');
}
