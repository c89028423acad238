import { verify as cryptoVerify, constants, type KeyObject } from 'node:crypto';
import { invalidArgument } from '../common/errors.js';
import { TrustDomain } from '../spiffe/spiffe-id.js';
import { KeyUsageFlags, normaliseSerial, type Certificate } from './certificate.js';
import { signedParts, type SignedParts } from './der.js';
import { crlFields, type CrlFields } from './x509-der.js';

/** One CRL as received: parsed, not yet trusted. */
class StoredCrl {
  readonly der: Buffer;
  readonly crl: CrlFields;
  readonly parts: SignedParts;
  readonly revoked: ReadonlySet<string>;
  /** Signature verdict per issuer certificate (base64 DER). */
  private readonly verdicts = new Map<string, boolean>();

  constructor(der: Uint8Array) {
    this.der = Buffer.from(der);
    this.parts = signedParts(this.der, 'CRL');
    try {
      this.crl = crlFields(this.der);
    } catch (err) {
      throw invalidArgument('CRL: not a parseable DER CRL', err);
    }
    this.revoked = new Set(this.crl.revokedSerials);
  }

  /** True when `issuer` signed this CRL; cached per issuer certificate. */
  signedBy(issuer: Certificate): boolean {
    const key = issuer.der.toString('base64');
    let verdict = this.verdicts.get(key);
    if (verdict === undefined) {
      verdict = this.checkSignature(issuer);
      this.verdicts.set(key, verdict);
    }
    return verdict;
  }

  private checkSignature(issuer: Certificate): boolean {
    // The CRL issuer name must be the certificate issuer's subject (RFC 5280 5.1.2.3).
    if (!this.crl.issuer.equals(issuer.subjectDer)) return false;
    // An issuer that states its key usages must allow CRL signing (RFC 5280 4.2.1.3).
    if (issuer.keyUsage !== undefined && !issuer.hasKeyUsage(KeyUsageFlags.cRLSign)) return false;
    if (!this.parts.innerAlgorithm.equals(this.parts.outerAlgorithm)) return false;
    return verifyWithAlgorithm(this.crl.algorithm, this.parts, issuer.publicKey);
  }
}

/** Signature algorithms by OID (RFC 5758, RFC 4055, RFC 8410); RSA-PSS, which needs its parameters, is not supported. */
const ALGORITHMS: Readonly<Record<string, { kind: 'ec' | 'rsa' | 'ed25519'; hash: string | null }>> = {
  '1.2.840.10045.4.3.2': { kind: 'ec', hash: 'sha256' },
  '1.2.840.10045.4.3.3': { kind: 'ec', hash: 'sha384' },
  '1.2.840.10045.4.3.4': { kind: 'ec', hash: 'sha512' },
  '1.2.840.113549.1.1.11': { kind: 'rsa', hash: 'sha256' },
  '1.2.840.113549.1.1.12': { kind: 'rsa', hash: 'sha384' },
  '1.2.840.113549.1.1.13': { kind: 'rsa', hash: 'sha512' },
  '1.3.101.112': { kind: 'ed25519', hash: null },
};

/** A synchronous node:crypto verification; an unknown algorithm or a key of another type never verifies. */
function verifyWithAlgorithm(oid: string, parts: SignedParts, key: KeyObject): boolean {
  const alg = ALGORITHMS[oid];
  if (!alg || key.asymmetricKeyType !== alg.kind) return false;
  try {
    switch (alg.kind) {
      case 'ec':
        return cryptoVerify(alg.hash, parts.tbs, { key, dsaEncoding: 'der' }, parts.signature);
      case 'rsa':
        return cryptoVerify(alg.hash, parts.tbs, { key, padding: constants.RSA_PKCS1_PADDING }, parts.signature);
      case 'ed25519':
        return cryptoVerify(null, parts.tbs, key, parts.signature);
    }
  } catch {
    return false;
  }
}

/** The scope for CRLs pushed without a trust domain (the Workload API's `crl` fields carry none). */
const ANY_TRUST_DOMAIN = '';

/**
 * Holds the latest CRLs, per trust domain, and answers "is this serial revoked by its issuer?".
 * A CRL is trusted only for the issuer whose key verifies its signature and whose subject is
 * its issuer name, so a CRL from one CA can never speak for another, nor a forged one for any.
 *
 * Every verified CRL of the issuer counts, whatever its dates: revocation never lapses, and
 * ignoring a list past its nextUpdate would let whoever delays CRL delivery un-revoke a
 * certificate. (Certificate holds, which a later CRL could lift, are not used by agentid.)
 * Call `update` whenever the Workload API pushes a new state.
 */
export class RevocationChecker {
  private readonly byTrustDomain = new Map<string, StoredCrl[]>();

  constructor(initial?: { crls: readonly Uint8Array[]; trustDomain?: TrustDomain | string }) {
    if (initial) this.update(initial.crls, initial.trustDomain);
  }

  /**
   * Replaces the CRLs of one trust domain (or, without one, the unscoped CRLs that apply to any
   * trust domain; safe because every CRL must still verify against the certificate's issuer).
   * An unparseable CRL rejects the whole update and the previous CRLs stay in force.
   */
  update(crls: readonly Uint8Array[], trustDomain?: TrustDomain | string): void {
    const parsed = crls.map((der, i) => {
      try {
        return new StoredCrl(der);
      } catch (err) {
        throw invalidArgument(`CRL update: element ${i} cannot be parsed`, err);
      }
    });
    this.byTrustDomain.set(scope(trustDomain), parsed);
  }

  clear(trustDomain?: TrustDomain | string): void {
    this.byTrustDomain.delete(scope(trustDomain));
  }

  /** Number of CRLs held, all scopes together. */
  get size(): number {
    let n = 0;
    for (const list of this.byTrustDomain.values()) n += list.length;
    return n;
  }

  /**
   * True when any CRL that `issuer` verifiably signed lists `serial` (hex). `issuer` must
   * already be trusted (an authority of the bundle, or an intermediate chained to one).
   */
  isRevoked(issuer: Certificate, serial: string, trustDomain?: TrustDomain | string): boolean {
    const wanted = normaliseSerial(serial);
    const lists = [this.byTrustDomain.get(ANY_TRUST_DOMAIN) ?? []];
    if (trustDomain !== undefined) lists.push(this.byTrustDomain.get(scope(trustDomain)) ?? []);
    return lists.some((list) => list.some((crl) => crl.revoked.has(wanted) && crl.signedBy(issuer)));
  }
}

function scope(trustDomain: TrustDomain | string | undefined): string {
  if (trustDomain === undefined) return ANY_TRUST_DOMAIN;
  return typeof trustDomain === 'string' ? TrustDomain.parse(trustDomain).name : trustDomain.name;
}

