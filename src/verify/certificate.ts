import { X509Certificate as NodeX509, type KeyObject } from 'node:crypto';
import { invalidArgument } from '../common/errors.js';
import { splitDer } from './der.js';
import {
  authorityKeyIdOf, basicConstraintsOf, certificateFields, keyUsageOf, sanUrisOf, subjectKeyIdOf, type Extension,
} from './x509-der.js';

const OID_BASIC_CONSTRAINTS = '2.5.29.19';
const OID_KEY_USAGE = '2.5.29.15';
const OID_SAN = '2.5.29.17';
const OID_SKI = '2.5.29.14';
const OID_AKI = '2.5.29.35';
/** Critical extensions this verifier understands; any other critical one rejects the certificate (RFC 5280 4.2). */
export const UNDERSTOOD_CRITICAL_EXTENSIONS: ReadonlySet<string> = new Set([
  OID_BASIC_CONSTRAINTS,
  OID_KEY_USAGE,
  OID_SAN,
  '2.5.29.37', // extended key usage
  OID_SKI,
  OID_AKI,
]);

/** keyUsage bits (RFC 5280 4.2.1.3): bit n is 1 << n. */
export const KeyUsageFlags = Object.freeze({
  digitalSignature: 1,
  nonRepudiation: 2,
  keyEncipherment: 4,
  dataEncipherment: 8,
  keyAgreement: 16,
  keyCertSign: 32,
  cRLSign: 64,
  encipherOnly: 128,
  decipherOnly: 256,
});
export type KeyUsageFlags = (typeof KeyUsageFlags)[keyof typeof KeyUsageFlags];

/**
 * One parsed certificate. The extensions come from our own small DER reader (x509-der.ts;
 * node:crypto's `keyUsage` is really the EKU); node:crypto checks signatures synchronously so
 * TLS hooks can use them.
 */
export class Certificate {
  readonly der: Buffer;
  readonly node: NodeX509;
  readonly notBefore: number;
  readonly notAfter: number;
  /** Lowercase hex without leading zeros, the form CRL lookups compare. */
  readonly serial: string;
  /** DER Names, compared byte for byte for chaining (RFC 5280 7.1 allows binary comparison). */
  readonly subjectDer: Buffer;
  readonly issuerDer: Buffer;
  /** undefined when the extension is absent. */
  readonly basicConstraints: { ca: boolean; pathLength: number | undefined } | undefined;
  /** KeyUsageFlags bits; undefined when the extension is absent. */
  readonly keyUsage: number | undefined;
  readonly uriSans: readonly string[];
  readonly criticalExtensions: readonly string[];
  readonly subjectKeyId: string | undefined;
  readonly authorityKeyId: string | undefined;

  constructor(der: Uint8Array) {
    this.der = Buffer.from(der);
    let fields;
    try {
      this.node = new NodeX509(this.der);
      fields = certificateFields(this.der);
    } catch (err) {
      throw invalidArgument('certificate: not a parseable DER X.509 certificate', err);
    }
    const byOid = new Map<string, Extension>();
    for (const ext of fields.extensions) {
      if (byOid.has(ext.oid)) throw invalidArgument(`certificate: extension ${ext.oid} appears twice (RFC 5280 4.2)`);
      byOid.set(ext.oid, ext);
    }
    const read = <T>(oid: string, name: string, f: (v: Buffer) => T): T | undefined => {
      const ext = byOid.get(oid);
      if (!ext) return undefined;
      try {
        return f(ext.value);
      } catch (err) {
        throw invalidArgument(`certificate: ${name} cannot be parsed`, err);
      }
    };
    this.notBefore = fields.notBefore;
    this.notAfter = fields.notAfter;
    this.serial = fields.serial;
    this.subjectDer = fields.subject;
    this.issuerDer = fields.issuer;
    this.basicConstraints = read(OID_BASIC_CONSTRAINTS, 'basicConstraints', basicConstraintsOf);
    this.keyUsage = read(OID_KEY_USAGE, 'keyUsage', keyUsageOf);
    this.uriSans = read(OID_SAN, 'subjectAltName', sanUrisOf) ?? [];
    this.subjectKeyId = read(OID_SKI, 'subjectKeyIdentifier', subjectKeyIdOf);
    this.authorityKeyId = read(OID_AKI, 'authorityKeyIdentifier', authorityKeyIdOf);
    this.criticalExtensions = fields.extensions.filter((e) => e.critical).map((e) => e.oid);
  }

  get publicKey(): KeyObject {
    return this.node.publicKey;
  }

  get isCa(): boolean {
    return this.basicConstraints?.ca === true;
  }

  hasKeyUsage(flag: KeyUsageFlags): boolean {
    return this.keyUsage !== undefined && (this.keyUsage & flag) !== 0;
  }

  /** Subject and issuer names equal: a self-issued certificate (RFC 5280 6.1, path length counting). */
  get selfIssued(): boolean {
    return this.subjectDer.equals(this.issuerDer);
  }

  /**
   * Name (and AKI/SKI) linkage only; the signature is checked by `signedBy`. Not node's
   * checkIssued: that also demands keyCertSign, which would hide the real reason for a refusal.
   */
  issuedBy(issuer: Certificate): boolean {
    if (!this.issuerDer.equals(issuer.subjectDer)) return false;
    const aki = this.authorityKeyId;
    const ski = issuer.subjectKeyId;
    return aki === undefined || ski === undefined || aki === ski;
  }

  signedBy(issuer: Certificate): boolean {
    try {
      return this.node.verify(issuer.publicKey);
    } catch {
      return false;
    }
  }

  /** Human label for messages: subject CN or the SPIFFE ID, never key material. */
  describe(): string {
    return this.uriSans[0] ?? this.node.subject.replace(/\n/g, ', ');
  }

  equals(other: Certificate): boolean {
    return this.der.equals(other.der);
  }
}

export function normaliseSerial(hex: string): string {
  const s = hex.toLowerCase().replace(/^0+/, '');
  return s === '' ? '0' : s;
}

/** Accepts one DER certificate, concatenated DER, or a list of DER certificates. */
export function parseCertificates(input: Uint8Array | readonly Uint8Array[], what: string): Certificate[] {
  const ders = input instanceof Uint8Array ? splitDer(input, what) : input.flatMap((d) => splitDer(d, what));
  return ders.map((der, i) => {
    try {
      return new Certificate(der);
    } catch (err) {
      throw invalidArgument(`${what}: certificate ${i} cannot be parsed`, err);
    }
  });
}
