import { invalidArgument } from '../common/errors.js';
import { readTlv, type Tlv } from '../common/der.js';

/*
 * The few X.509 and CRL fields the verifier reads, straight from DER (RFC 5280 4.1 and 5.1).
 * node:crypto's X509Certificate checks signatures and exposes the public key but not the
 * extensions' structure (its `keyUsage` is really the EKU), and a general ASN.1 library would
 * cost the public libraries their load time and a global polyfill: this reader stays small.
 */

const TAG = { BOOLEAN: 0x01, INTEGER: 0x02, BIT_STRING: 0x03, OCTET_STRING: 0x04, OID: 0x06, UTC_TIME: 0x17, GENERALIZED_TIME: 0x18, SEQUENCE: 0x30 } as const;

/** Children of a constructed TLV, in order. */
export function children(der: Uint8Array, parent: Tlv, what: string): Tlv[] {
  const out: Tlv[] = [];
  let offset = parent.contentStart;
  while (offset < parent.end) {
    const t = readTlv(der, offset, what);
    if (t.end > parent.end) throw invalidArgument(`${what}: element overruns its parent`);
    out.push(t);
    offset = t.end;
  }
  return out;
}

const bytes = (der: Uint8Array, t: Tlv) => Buffer.from(der.subarray(t.contentStart, t.end));
const whole = (der: Uint8Array, t: Tlv) => Buffer.from(der.subarray(t.start, t.end));

function expectTag(t: Tlv | undefined, tag: number, what: string): Tlv {
  if (!t || t.tag !== tag) throw invalidArgument(`${what} is missing or has the wrong type`);
  return t;
}

/** Dotted OID text from DER content bytes. */
export function oidText(content: Uint8Array): string {
  if (content.length === 0) throw invalidArgument('OID is empty');
  const arcs: number[] = [];
  let value = 0;
  for (const b of content) {
    value = value * 128 + (b & 0x7f);
    if (value > Number.MAX_SAFE_INTEGER) throw invalidArgument('OID arc is too large');
    if ((b & 0x80) === 0) {
      arcs.push(value);
      value = 0;
    }
  }
  if ((content[content.length - 1]! & 0x80) !== 0) throw invalidArgument('OID is truncated');
  const first = arcs.shift()!;
  const head = first < 40 ? [0, first] : first < 80 ? [1, first - 40] : [2, first - 80];
  return [...head, ...arcs].join('.');
}

/** Lowercase hex of an INTEGER's content without leading zeros, the form CRL lookups compare. */
export function serialHex(content: Uint8Array): string {
  const s = Buffer.from(content).toString('hex').replace(/^0+/, '');
  return s === '' ? '0' : s;
}

/** UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ), as RFC 5280 4.1.2.5 allows them. */
export function timeOf(der: Uint8Array, t: Tlv, what: string): number {
  const text = bytes(der, t).toString('latin1');
  const m = t.tag === TAG.UTC_TIME ? /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(text) : t.tag === TAG.GENERALIZED_TIME ? /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(text) : null;
  if (!m) throw invalidArgument(`${what}: not a UTCTime or GeneralizedTime in Zulu`);
  let year = Number(m[1]);
  if (t.tag === TAG.UTC_TIME) year += year >= 50 ? 1900 : 2000;
  return Date.UTC(year, Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6]));
}

export interface Extension {
  oid: string;
  critical: boolean;
  /** The extnValue OCTET STRING's content (the extension's own DER). */
  value: Buffer;
}

export interface CertificateFields {
  serial: string;
  issuer: Buffer;
  subject: Buffer;
  notBefore: number;
  notAfter: number;
  extensions: Extension[];
}

/** The TBSCertificate fields the verifier needs. */
export function certificateFields(der: Uint8Array): CertificateFields {
  const what = 'certificate';
  const outer = readTlv(der, 0, what);
  if (outer.tag !== TAG.SEQUENCE || outer.end !== der.length) throw invalidArgument(`${what}: not a single DER SEQUENCE`);
  const tbs = expectTag(children(der, outer, what)[0], TAG.SEQUENCE, `${what}: tbsCertificate`);
  const f = children(der, tbs, `${what}: tbsCertificate`);
  let i = 0;
  if (f[i]?.tag === 0xa0) i++; // [0] version
  const serial = expectTag(f[i++], TAG.INTEGER, `${what}: serialNumber`);
  expectTag(f[i++], TAG.SEQUENCE, `${what}: signature algorithm`);
  const issuer = expectTag(f[i++], TAG.SEQUENCE, `${what}: issuer`);
  const validity = children(der, expectTag(f[i++], TAG.SEQUENCE, `${what}: validity`), `${what}: validity`);
  const subject = expectTag(f[i++], TAG.SEQUENCE, `${what}: subject`);
  expectTag(f[i++], TAG.SEQUENCE, `${what}: subjectPublicKeyInfo`);
  const extensions: Extension[] = [];
  for (; i < f.length; i++) {
    if (f[i]!.tag !== 0xa3) continue; // [1] and [2] unique identifiers carry nothing we read
    const list = expectTag(children(der, f[i]!, `${what}: extensions`)[0], TAG.SEQUENCE, `${what}: extensions`);
    for (const ext of children(der, list, `${what}: extension`)) {
      const parts = children(der, expectTag(ext, TAG.SEQUENCE, `${what}: extension`), `${what}: extension`);
      const oid = oidText(bytes(der, expectTag(parts[0], TAG.OID, `${what}: extension OID`)));
      let j = 1;
      let critical = false;
      if (parts[j]?.tag === TAG.BOOLEAN) critical = der[parts[j++]!.contentStart] !== 0;
      const value = bytes(der, expectTag(parts[j], TAG.OCTET_STRING, `${what}: extension ${oid} value`));
      if (parts.length !== j + 1) throw invalidArgument(`${what}: extension ${oid} has extra fields`);
      extensions.push({ oid, critical, value });
    }
  }
  if (validity.length !== 2) throw invalidArgument(`${what}: validity must hold notBefore and notAfter`);
  return {
    serial: serialHex(bytes(der, serial)),
    issuer: whole(der, issuer),
    subject: whole(der, subject),
    notBefore: timeOf(der, validity[0]!, `${what}: notBefore`),
    notAfter: timeOf(der, validity[1]!, `${what}: notAfter`),
    extensions,
  };
}

/** basicConstraints: SEQUENCE { cA BOOLEAN DEFAULT FALSE, pathLenConstraint INTEGER OPTIONAL }. */
export function basicConstraintsOf(value: Buffer): { ca: boolean; pathLength: number | undefined } {
  const what = 'basicConstraints';
  const seq = expectTag(readTlv(value, 0, what), TAG.SEQUENCE, what);
  let ca = false;
  let pathLength: number | undefined;
  for (const t of children(value, seq, what)) {
    if (t.tag === TAG.BOOLEAN) ca = value[t.contentStart] !== 0;
    else if (t.tag === TAG.INTEGER) {
      const n = bytes(value, t);
      if (n.length > 4 || (n[0]! & 0x80) !== 0) throw invalidArgument(`${what}: pathLenConstraint out of range`);
      pathLength = n.reduce((acc, b) => acc * 256 + b, 0);
    } else throw invalidArgument(`${what}: unexpected field`);
  }
  return { ca, pathLength };
}

/**
 * keyUsage BIT STRING as flags, bit n (RFC 5280 4.2.1.3 numbering) = 1 << n: digitalSignature 1,
 * keyCertSign 32, cRLSign 64 (the same numbers @peculiar/x509's KeyUsageFlags uses).
 */
export function keyUsageOf(value: Buffer): number {
  const t = expectTag(readTlv(value, 0, 'keyUsage'), TAG.BIT_STRING, 'keyUsage');
  const content = bytes(value, t);
  if (content.length < 1) throw invalidArgument('keyUsage: empty BIT STRING');
  let flags = 0;
  for (let byte = 1; byte < content.length; byte++) {
    for (let bit = 0; bit < 8; bit++) if (content[byte]! & (0x80 >> bit)) flags |= 1 << ((byte - 1) * 8 + bit);
  }
  return flags;
}

/** URIs of a subjectAltName (GeneralName uniformResourceIdentifier, [6] IMPLICIT IA5String). */
export function sanUrisOf(value: Buffer): string[] {
  const seq = expectTag(readTlv(value, 0, 'subjectAltName'), TAG.SEQUENCE, 'subjectAltName');
  return children(value, seq, 'subjectAltName').filter((t) => t.tag === 0x86).map((t) => bytes(value, t).toString('latin1'));
}

/** keyIdentifier of an authorityKeyIdentifier ([0] IMPLICIT OCTET STRING), hex. */
export function authorityKeyIdOf(value: Buffer): string | undefined {
  const seq = expectTag(readTlv(value, 0, 'authorityKeyIdentifier'), TAG.SEQUENCE, 'authorityKeyIdentifier');
  const id = children(value, seq, 'authorityKeyIdentifier').find((t) => t.tag === 0x80);
  return id ? bytes(value, id).toString('hex') : undefined;
}

/** subjectKeyIdentifier OCTET STRING, hex. */
export function subjectKeyIdOf(value: Buffer): string {
  return bytes(value, expectTag(readTlv(value, 0, 'subjectKeyIdentifier'), TAG.OCTET_STRING, 'subjectKeyIdentifier')).toString('hex');
}

export interface CrlFields {
  issuer: Buffer;
  /** The signature AlgorithmIdentifier's OID. */
  algorithm: string;
  revokedSerials: string[];
}

/** The TBSCertList fields revocation needs (RFC 5280 5.1). */
export function crlFields(der: Uint8Array): CrlFields {
  const what = 'CRL';
  const outer = readTlv(der, 0, what);
  if (outer.tag !== TAG.SEQUENCE || outer.end !== der.length) throw invalidArgument(`${what}: not a single DER SEQUENCE`);
  const tbs = expectTag(children(der, outer, what)[0], TAG.SEQUENCE, `${what}: tbsCertList`);
  const f = children(der, tbs, `${what}: tbsCertList`);
  let i = 0;
  if (f[i]?.tag === TAG.INTEGER) i++; // version
  const alg = children(der, expectTag(f[i++], TAG.SEQUENCE, `${what}: signature`), `${what}: signature`);
  const algorithm = oidText(bytes(der, expectTag(alg[0], TAG.OID, `${what}: signature OID`)));
  const issuer = expectTag(f[i++], TAG.SEQUENCE, `${what}: issuer`);
  timeOf(der, f[i++]!, `${what}: thisUpdate`);
  if (f[i] && (f[i]!.tag === TAG.UTC_TIME || f[i]!.tag === TAG.GENERALIZED_TIME)) timeOf(der, f[i++]!, `${what}: nextUpdate`);
  const revokedSerials: string[] = [];
  if (f[i]?.tag === TAG.SEQUENCE) {
    for (const entry of children(der, f[i]!, `${what}: revokedCertificates`)) {
      const parts = children(der, expectTag(entry, TAG.SEQUENCE, `${what}: revoked entry`), `${what}: revoked entry`);
      revokedSerials.push(serialHex(bytes(der, expectTag(parts[0], TAG.INTEGER, `${what}: revoked serial`))));
    }
  }
  return { issuer: whole(der, issuer), algorithm, revokedSerials };
}
