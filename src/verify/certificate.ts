import 'reflect-metadata';
import { X509Certificate as NodeX509, type KeyObject } from 'node:crypto';
import {
  AuthorityKeyIdentifierExtension,
  BasicConstraintsExtension,
  KeyUsageFlags,
  KeyUsagesExtension,
  SubjectAlternativeNameExtension,
  SubjectKeyIdentifierExtension,
  X509Certificate as PeculiarX509,
} from '@peculiar/x509';
import { invalidArgument } from '../common/errors.js';
import { splitDer } from './der.js';

const OID_BASIC_CONSTRAINTS = '2.5.29.19';
const OID_KEY_USAGE = '2.5.29.15';
const OID_SAN = '2.5.29.17';
/** Critical extensions this verifier understands; any other critical one rejects the certificate (RFC 5280 4.2). */
export const UNDERSTOOD_CRITICAL_EXTENSIONS: ReadonlySet<string> = new Set([
  OID_BASIC_CONSTRAINTS,
  OID_KEY_USAGE,
  OID_SAN,
  '2.5.29.37', // extended key usage
  '2.5.29.14', // subject key identifier
  '2.5.29.35', // authority key identifier
]);

export { KeyUsageFlags };

/**
 * One parsed certificate. @peculiar/x509 reads the extensions (node:crypto's `keyUsage` is
 * really the EKU), node:crypto checks signatures synchronously so TLS hooks can use them.
 */
export class Certificate {
  readonly der: Buffer;
  readonly node: NodeX509;
  readonly parsed: PeculiarX509;
  readonly notBefore: number;
  readonly notAfter: number;
  /** Lowercase hex without leading zeros, the form CRL lookups compare. */
  readonly serial: string;
  /** undefined when the extension is absent. */
  readonly basicConstraints: { ca: boolean; pathLength: number | undefined } | undefined;
  /** KeyUsageFlags bits; undefined when the extension is absent. */
  readonly keyUsage: number | undefined;
  readonly uriSans: readonly string[];
  readonly criticalExtensions: readonly string[];

  constructor(der: Uint8Array) {
    this.der = Buffer.from(der);
    try {
      this.node = new NodeX509(this.der);
      this.parsed = new PeculiarX509(this.der);
    } catch (err) {
      throw invalidArgument('certificate: not a parseable DER X.509 certificate', err);
    }
    const seen = new Set<string>();
    for (const ext of this.parsed.extensions) {
      if (seen.has(ext.type)) throw invalidArgument(`certificate: extension ${ext.type} appears twice (RFC 5280 4.2)`);
      seen.add(ext.type);
    }
    this.notBefore = this.parsed.notBefore.getTime();
    this.notAfter = this.parsed.notAfter.getTime();
    this.serial = normaliseSerial(this.parsed.serialNumber);
    const bc = this.parsed.getExtension(BasicConstraintsExtension);
    this.basicConstraints = bc ? { ca: bc.ca, pathLength: bc.pathLength } : undefined;
    const ku = this.parsed.getExtension(KeyUsagesExtension);
    this.keyUsage = ku ? ku.usages : undefined;
    let uris: string[] = [];
    try {
      const san = this.parsed.getExtension(SubjectAlternativeNameExtension);
      uris = san ? san.names.items.filter((n) => n.type === 'url').map((n) => n.value) : [];
    } catch (err) {
      throw invalidArgument('certificate: subjectAltName cannot be parsed', err);
    }
    this.uriSans = uris;
    this.criticalExtensions = this.parsed.extensions.filter((e) => e.critical).map((e) => e.type);
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
    return this.node.subject === this.node.issuer && Buffer.compare(subjectDer(this), issuerDer(this)) === 0;
  }

  /**
   * Name (and AKI/SKI) linkage only; the signature is checked by `signedBy`. Not node's
   * checkIssued: that also demands keyCertSign, which would hide the real reason for a refusal.
   */
  issuedBy(issuer: Certificate): boolean {
    if (Buffer.compare(issuerDer(this), subjectDer(issuer)) !== 0) return false;
    const aki = this.parsed.getExtension(AuthorityKeyIdentifierExtension)?.keyId;
    const ski = issuer.parsed.getExtension(SubjectKeyIdentifierExtension)?.keyId;
    return aki === undefined || ski === undefined || aki.toLowerCase() === ski.toLowerCase();
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

function subjectDer(c: Certificate): Buffer {
  return Buffer.from(c.parsed.subjectName.toArrayBuffer());
}
function issuerDer(c: Certificate): Buffer {
  return Buffer.from(c.parsed.issuerName.toArrayBuffer());
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
