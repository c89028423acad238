/**
 * A minimal DER encoder: just the types our certificates, keys and CRLs use.
 * Every function returns a complete TLV, so pieces compose by concatenation.
 */

export const TAG = {
  INTEGER: 0x02,
  BIT_STRING: 0x03,
  OCTET_STRING: 0x04,
  NULL: 0x05,
  OID: 0x06,
  UTF8_STRING: 0x0c,
  PRINTABLE_STRING: 0x13,
  IA5_STRING: 0x16,
  UTC_TIME: 0x17,
  GENERALIZED_TIME: 0x18,
  SEQUENCE: 0x30,
  SET: 0x31,
} as const;

/** The header (tag + definite length) of a TLV whose content is `length` bytes long. */
export function header(tag: number, length: number): Buffer {
  if (!Number.isInteger(length) || length < 0) throw new RangeError(`DER: bad length ${length}`);
  if (length < 0x80) return Buffer.from([tag, length]);
  const bytes: number[] = [];
  for (let n = length; n > 0; n = Math.floor(n / 256)) bytes.unshift(n & 0xff);
  if (bytes.length > 4) throw new RangeError('DER: content longer than 4 GiB');
  return Buffer.from([tag, 0x80 | bytes.length, ...bytes]);
}

export function tlv(tag: number, ...content: Buffer[]): Buffer {
  const body = content.length === 1 ? content[0]! : Buffer.concat(content);
  return Buffer.concat([header(tag, body.length), body]);
}

export const sequence = (...content: Buffer[]): Buffer => tlv(TAG.SEQUENCE, ...content);
export const set = (...content: Buffer[]): Buffer => tlv(TAG.SET, ...content);
export const octetString = (content: Buffer): Buffer => tlv(TAG.OCTET_STRING, content);
export const derNull = (): Buffer => Buffer.from([TAG.NULL, 0]);

/** [n] EXPLICIT (constructed context tag). */
export const explicit = (n: number, ...content: Buffer[]): Buffer => tlv(0xa0 | n, ...content);
/** [n] IMPLICIT over a primitive value. */
export const implicitPrimitive = (n: number, content: Buffer): Buffer => tlv(0x80 | n, content);

/** BIT STRING with no unused bits (keys, signatures, and flag bytes we pad ourselves). */
export function bitString(content: Buffer, unusedBits = 0): Buffer {
  return tlv(TAG.BIT_STRING, Buffer.from([unusedBits]), content);
}

export function boolean(value: boolean): Buffer {
  return Buffer.from([0x01, 0x01, value ? 0xff : 0x00]);
}

/**
 * INTEGER from unsigned big-endian magnitude bytes: strips redundant leading zeros and adds one
 * when the top bit is set, so the value stays positive and minimally encoded.
 */
export function unsignedInteger(magnitude: Buffer): Buffer {
  let start = 0;
  while (start < magnitude.length - 1 && magnitude[start] === 0) start++;
  const trimmed = magnitude.subarray(start);
  if (trimmed.length === 0) return Buffer.from([TAG.INTEGER, 1, 0]);
  return (trimmed[0]! & 0x80) !== 0
    ? tlv(TAG.INTEGER, Buffer.from([0]), trimmed)
    : tlv(TAG.INTEGER, trimmed);
}

export function smallInteger(value: number): Buffer {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`DER: bad integer ${value}`);
  const bytes: number[] = [];
  for (let n = value; n > 0; n = Math.floor(n / 256)) bytes.unshift(n & 0xff);
  return unsignedInteger(Buffer.from(bytes.length ? bytes : [0]));
}

const OID_CACHE = new Map<string, Buffer>();

/** OBJECT IDENTIFIER; encodings are cached (a handful of OIDs are encoded per certificate). */
export function oid(dotted: string): Buffer {
  let encoded = OID_CACHE.get(dotted);
  if (!encoded) {
    encoded = encodeOid(dotted);
    if (OID_CACHE.size < 256) OID_CACHE.set(dotted, encoded);
  }
  return encoded;
}

function encodeOid(dotted: string): Buffer {
  const parts = dotted.split('.').map((p) => {
    if (!/^\d+$/.test(p)) throw new RangeError(`DER: bad OID ${dotted}`);
    return Number(p);
  });
  if (parts.length < 2 || parts[0]! > 2 || (parts[0]! < 2 && parts[1]! > 39)) {
    throw new RangeError(`DER: bad OID ${dotted}`);
  }
  const arcs = [parts[0]! * 40 + parts[1]!, ...parts.slice(2)];
  const bytes: number[] = [];
  for (const arc of arcs) {
    if (!Number.isSafeInteger(arc)) throw new RangeError(`DER: bad OID ${dotted}`);
    const groups: number[] = [];
    let n = arc;
    do {
      groups.unshift(n % 128);
      n = Math.floor(n / 128);
    } while (n > 0);
    groups.forEach((g, i) => bytes.push(i < groups.length - 1 ? g | 0x80 : g));
  }
  return tlv(TAG.OID, Buffer.from(bytes));
}

export function utf8String(text: string): Buffer {
  return tlv(TAG.UTF8_STRING, Buffer.from(text, 'utf8'));
}

export function ia5String(text: string, tag: number = TAG.IA5_STRING): Buffer {
  // IA5 is 7-bit ASCII; refusing anything else keeps a name from changing meaning in transit.
  if (!/^[\x00-\x7f]*$/.test(text)) throw new RangeError('DER: IA5String must be ASCII');
  return tlv(tag, Buffer.from(text, 'latin1'));
}

const pad2 = (n: number): string => (n < 10 ? `0${n}` : String(n));

/**
 * RFC 5280 §4.1.2.5: UTCTime for years 1950-2049, GeneralizedTime from 2050 on; both in Z form
 * with seconds and no fractions. Sub-second parts are floored.
 */
export function time(ms: number): Buffer {
  if (!Number.isFinite(ms)) throw new RangeError('DER: time is not finite');
  const d = new Date(Math.floor(ms / 1000) * 1000);
  const year = d.getUTCFullYear();
  if (year < 1950 || year > 9999) throw new RangeError(`DER: year ${year} cannot be encoded in a certificate`);
  const rest =
    pad2(d.getUTCMonth() + 1) +
    pad2(d.getUTCDate()) +
    pad2(d.getUTCHours()) +
    pad2(d.getUTCMinutes()) +
    pad2(d.getUTCSeconds()) +
    'Z';
  return year < 2050
    ? tlv(TAG.UTC_TIME, Buffer.from(pad2(year % 100) + rest, 'latin1'))
    : tlv(TAG.GENERALIZED_TIME, Buffer.from(String(year) + rest, 'latin1'));
}

/** Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING } */
export function extension(extnId: string, critical: boolean, value: Buffer): Buffer {
  // DER forbids encoding a DEFAULT value, so a non-critical extension omits the boolean.
  return critical
    ? sequence(oid(extnId), boolean(true), octetString(value))
    : sequence(oid(extnId), octetString(value));
}

/** One TLV found by the reader: tag, and where its header and content lie in the buffer. */
export interface Tlv {
  tag: number;
  start: number;
  contentStart: number;
  end: number;
}

/** Reads the TLV at `offset` (definite lengths only, as DER requires). */
export function readTlv(buf: Buffer, offset = 0): Tlv {
  if (offset + 2 > buf.length) throw new RangeError('DER: truncated');
  const tag = buf[offset]!;
  if ((tag & 0x1f) === 0x1f) throw new RangeError('DER: multi-byte tags are not supported');
  const first = buf[offset + 1]!;
  let length = first;
  let contentStart = offset + 2;
  if (first & 0x80) {
    const n = first & 0x7f;
    if (n === 0 || n > 4) throw new RangeError('DER: unsupported length encoding');
    if (contentStart + n > buf.length) throw new RangeError('DER: truncated');
    length = 0;
    for (let i = 0; i < n; i++) length = length * 256 + buf[contentStart + i]!;
    contentStart += n;
  }
  const end = contentStart + length;
  if (end > buf.length) throw new RangeError('DER: truncated');
  return { tag, start: offset, contentStart, end };
}

/** The TLVs directly inside a constructed TLV. */
export function children(buf: Buffer, parent: Tlv): Tlv[] {
  const out: Tlv[] = [];
  for (let at = parent.contentStart; at < parent.end; ) {
    const child = readTlv(buf, at);
    out.push(child);
    at = child.end;
  }
  return out;
}

export const bytesOf = (buf: Buffer, t: Tlv): Buffer => buf.subarray(t.start, t.end);
export const contentOf = (buf: Buffer, t: Tlv): Buffer => buf.subarray(t.contentStart, t.end);

/** Fields of a DER certificate needed to issue under it, as the exact bytes it carries. */
export function certificateParts(cert: Buffer): { tbs: Buffer; subject: Buffer; issuer: Buffer; spki: Buffer } {
  const root = readTlv(cert);
  if (root.end !== cert.length) throw new RangeError('DER: trailing bytes after certificate');
  const tbsTlv = children(cert, root)[0];
  if (!tbsTlv) throw new RangeError('DER: empty certificate');
  const fields = children(cert, tbsTlv);
  // version is [0] EXPLICIT and optional; skip it so the indexes below are fixed.
  const f = fields[0]?.tag === 0xa0 ? fields.slice(1) : fields;
  const [, , issuer, , subject, spki] = f;
  if (!issuer || !subject || !spki) throw new RangeError('DER: certificate has too few fields');
  return { tbs: bytesOf(cert, tbsTlv), issuer: bytesOf(cert, issuer), subject: bytesOf(cert, subject), spki: bytesOf(cert, spki) };
}
