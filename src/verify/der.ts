import { invalidArgument } from '../common/errors.js';

/*
 * Just enough DER to split concatenated certificates and to reach the signed part of a
 * certificate or CRL. Everything else is parsed by @peculiar/x509 or node:crypto.
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

/** Reads one definite-length TLV at `offset`; throws on truncation or non-minimal lengths. */
export function readTlv(data: Uint8Array, offset: number, what: string): Tlv {
  const start = offset;
  const tag = data[offset];
  if (tag === undefined) throw invalidArgument(`${what}: truncated DER`);
  // High-tag-number form never appears in the structures we read.
  if ((tag & 0x1f) === 0x1f) throw invalidArgument(`${what}: unsupported DER tag`);
  offset += 1;
  const first = data[offset];
  if (first === undefined) throw invalidArgument(`${what}: truncated DER`);
  offset += 1;
  let length: number;
  if (first < 0x80) {
    length = first;
  } else if (first === 0x80) {
    throw invalidArgument(`${what}: indefinite length is not DER`);
  } else {
    const count = first & 0x7f;
    if (count > 4) throw invalidArgument(`${what}: DER length field too large`);
    if (offset + count > data.length) throw invalidArgument(`${what}: truncated DER`);
    length = 0;
    for (let i = 0; i < count; i++) length = length * 256 + data[offset + i]!;
    if (data[offset] === 0 || length < 0x80) throw invalidArgument(`${what}: non-minimal DER length`);
    offset += count;
  }
  if (offset + length > data.length) throw invalidArgument(`${what}: truncated DER`);
  return { tag, start, contentStart: offset, end: offset + length };
}

/**
 * Splits concatenated DER SEQUENCEs (the Workload API's chain and bundle encoding). Trailing
 * garbage rejects the whole input: a silently shortened bundle changes what is trusted.
 */
export function splitDer(data: Uint8Array, what: string): Buffer[] {
  const out: Buffer[] = [];
  let offset = 0;
  while (offset < data.length) {
    const tlv = readTlv(data, offset, `${what}: element ${out.length}`);
    if (tlv.tag !== 0x30) throw invalidArgument(`${what}: element ${out.length} is not a DER SEQUENCE`);
    out.push(Buffer.from(data.subarray(tlv.start, tlv.end)));
    offset = tlv.end;
  }
  return out;
}

export interface SignedParts {
  /** The to-be-signed SEQUENCE, tag and length included. */
  tbs: Buffer;
  /** The outer AlgorithmIdentifier, tag and length included. */
  outerAlgorithm: Buffer;
  /** The AlgorithmIdentifier inside the TBS (must equal the outer one, RFC 5280 4.1.1.2 / 5.1.1.2). */
  innerAlgorithm: Buffer;
  signature: Buffer;
}

/** Certificate and CertificateList share the shape SEQUENCE { tbs, algorithm, BIT STRING }. */
export function signedParts(der: Uint8Array, what: string): SignedParts {
  const outer = readTlv(der, 0, what);
  if (outer.tag !== 0x30 || outer.end !== der.length) throw invalidArgument(`${what}: not a single DER SEQUENCE`);
  const tbs = readTlv(der, outer.contentStart, what);
  const alg = readTlv(der, tbs.end, what);
  const sig = readTlv(der, alg.end, what);
  if (tbs.tag !== 0x30 || alg.tag !== 0x30 || sig.tag !== 0x03 || sig.end !== outer.end) {
    throw invalidArgument(`${what}: not a signed X.509 structure`);
  }
  if (der[sig.contentStart] !== 0) throw invalidArgument(`${what}: signature has unused bits`);
  // Inside the TBS: an optional version (INTEGER for CRLs, [0] for certificates) precedes the algorithm.
  let inner = readTlv(der, tbs.contentStart, what);
  if (inner.tag === 0x02 || inner.tag === 0xa0) inner = readTlv(der, inner.end, what);
  // Certificates carry a serial INTEGER before the algorithm.
  if (inner.tag === 0x02) inner = readTlv(der, inner.end, what);
  if (inner.tag !== 0x30) throw invalidArgument(`${what}: TBS has no signature algorithm`);
  const slice = (t: Tlv) => Buffer.from(der.subarray(t.start, t.end));
  return {
    tbs: slice(tbs),
    outerAlgorithm: slice(alg),
    innerAlgorithm: slice(inner),
    signature: Buffer.from(der.subarray(sig.contentStart + 1, sig.end)),
  };
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

export function toPem(der: Uint8Array, label: string): string {
  const b64 = Buffer.from(der).toString('base64');
  const lines = b64.match(/.{1,64}/g) ?? [];
  return `-----BEGIN ${label}-----\n${lines.join('\n')}\n-----END ${label}-----\n`;
}
