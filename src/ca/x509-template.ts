import { createHash } from 'node:crypto';
import { invalidArgument } from '../common/errors.js';
import * as der from './der.js';
import type { SigningKey } from './keys.js';
import { pooledRandomBytes } from './random.js';

/*
 * X.509-SVID leaves from a pre-encoded DER template. Everything that is the same for every leaf
 * of one signing CA (version, signature algorithm, issuer, subject, fixed extensions, AKI) is
 * encoded once; per leaf only the serial, validity, key, SKI and SAN are encoded and spliced in.
 *
 * Leaf profile (SPIFFE X.509-SVID, shared/spec/pitfalls.md):
 *   subject            O=agentid (non-empty, so the SAN stays non-critical per RFC 5280 §4.2.1.6)
 *   basicConstraints   critical, CA=false
 *   keyUsage           critical, digitalSignature
 *   extKeyUsage        serverAuth, clientAuth
 *   subjectKeyId       SHA-1 of the subjectPublicKey bits (RFC 5280 §4.2.1.2 method 1)
 *   authorityKeyId     keyIdentifier = the signing CA's SKI
 *   subjectAltName     exactly one URI (the SPIFFE ID), then optional DNS names
 */

export const OID = {
  organizationName: '2.5.4.10',
  basicConstraints: '2.5.29.19',
  keyUsage: '2.5.29.15',
  extKeyUsage: '2.5.29.37',
  subjectKeyIdentifier: '2.5.29.14',
  authorityKeyIdentifier: '2.5.29.35',
  subjectAltName: '2.5.29.17',
  serverAuth: '1.3.6.1.5.5.7.3.1',
  clientAuth: '1.3.6.1.5.5.7.3.2',
  crlNumber: '2.5.29.20',
} as const;

export const LEAF_SUBJECT_ORGANIZATION = 'agentid';

/** Issuer-side inputs, taken from the signing CA's certificate as it is encoded there. */
export interface TemplateIssuer {
  key: SigningKey;
  /** The CA certificate (DER): its subject bytes become the leaf's issuer, byte for byte. */
  certDer: Buffer;
  /** The CA's subject key identifier, copied into each leaf's AKI. */
  subjectKeyId: Buffer;
}

export interface LeafRequest {
  spiffeId: string;
  dnsNames?: readonly string[];
  /** Epoch ms; encoded in whole seconds. */
  notBefore: number;
  notAfter: number;
  /** SubjectPublicKeyInfo DER of the leaf key. */
  spki: Buffer;
}

export interface MintedLeaf {
  certDer: Buffer;
  tbsDer: Buffer;
  /** Lowercase hex, no leading zeros beyond what DER carries. */
  serial: string;
}

export const SERIAL_BYTES = 16;

/**
 * 16 random bytes with the top two bits set to 01: the INTEGER is positive, needs no leading
 * zero byte (so its length is fixed and the encoding minimal), and keeps 126 bits of entropy
 * (CA/B Forum asks for 64).
 */
export function randomSerial(): Buffer {
  const serial = pooledRandomBytes(SERIAL_BYTES);
  serial[0] = (serial[0]! & 0x3f) | 0x40;
  return serial;
}

const DNS_NAME = /^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;

export function checkDnsName(name: string): void {
  if (name.length === 0 || name.length > 253 || !DNS_NAME.test(name)) {
    throw invalidArgument(
      `DNS name ${JSON.stringify(name.slice(0, 80))}: must be a lowercase host name (letters, digits, "-", dots; optional leading "*.")`,
    );
  }
}

export class X509SvidTemplate {
  private readonly head: Buffer;
  private readonly subject: Buffer;
  private readonly fixedExtensions: Buffer;
  private readonly akiExtension: Buffer;
  private readonly sigAlgAndIssuer: Buffer;

  constructor(private readonly issuer: TemplateIssuer) {
    const parts = der.certificateParts(issuer.certDer);
    // [0] EXPLICIT INTEGER 2 (v3), then serial is spliced in.
    this.head = der.explicit(0, der.smallInteger(2));
    this.subject = der.sequence(
      der.set(der.sequence(der.oid(OID.organizationName), der.utf8String(LEAF_SUBJECT_ORGANIZATION))),
    );
    this.fixedExtensions = Buffer.concat([
      der.extension(OID.basicConstraints, true, der.sequence()),
      // digitalSignature is bit 0: one content byte 0x80 with 7 unused bits.
      der.extension(OID.keyUsage, true, der.bitString(Buffer.from([0x80]), 7)),
      der.extension(OID.extKeyUsage, false, der.sequence(der.oid(OID.serverAuth), der.oid(OID.clientAuth))),
    ]);
    this.akiExtension = der.extension(
      OID.authorityKeyIdentifier,
      false,
      der.sequence(der.implicitPrimitive(0, issuer.subjectKeyId)),
    );
    this.sigAlgAndIssuer = Buffer.concat([issuer.key.signatureAlgorithmDer, parts.subject]);
  }

  mint(req: LeafRequest): MintedLeaf {
    if (!(req.notAfter > req.notBefore)) throw invalidArgument('X.509-SVID: notAfter must be after notBefore');
    const serial = randomSerial();
    const ski = createHash('sha1').update(subjectPublicKeyBits(req.spki)).digest();
    const names = [der.ia5String(req.spiffeId, 0x86)];
    for (const dns of req.dnsNames ?? []) {
      checkDnsName(dns);
      names.push(der.ia5String(dns, 0x82));
    }
    const extensions = der.explicit(
      3,
      der.sequence(
        this.fixedExtensions,
        der.extension(OID.subjectKeyIdentifier, false, der.octetString(ski)),
        this.akiExtension,
        der.extension(OID.subjectAltName, false, der.sequence(...names)),
      ),
    );
    const tbs = der.sequence(
      this.head,
      der.tlv(der.TAG.INTEGER, serial),
      this.sigAlgAndIssuer,
      der.sequence(der.time(req.notBefore), der.time(req.notAfter)),
      this.subject,
      req.spki,
      extensions,
    );
    const signature = this.issuer.key.sign(tbs);
    const certDer = der.sequence(tbs, this.issuer.key.signatureAlgorithmDer, der.bitString(signature));
    return { certDer, tbsDer: tbs, serial: serial.toString('hex') };
  }
}

/** The subjectPublicKey BIT STRING's bits (without the unused-bits byte) of an SPKI. */
export function subjectPublicKeyBits(spki: Buffer): Buffer {
  const outer = der.readTlv(spki);
  const [, bits] = der.children(spki, outer);
  if (!bits || bits.tag !== der.TAG.BIT_STRING) throw invalidArgument('SubjectPublicKeyInfo is malformed');
  return spki.subarray(bits.contentStart + 1, bits.end);
}
