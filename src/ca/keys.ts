import {
  createECDH,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  randomBytes,
  sign as cryptoSign,
  webcrypto,
  type KeyObject,
} from 'node:crypto';
import { failedPrecondition, invalidArgument } from '../common/errors.js';
import { Secret } from '../common/secret.js';
import { concatUnpooled } from '../common/buffers.js';
import * as der from './der.js';

/** Key types agentid generates. */
export type KeyType = 'ec-p256' | 'ec-p384';
/** Key types agentid can sign with: its own, plus RSA for an organisation's upstream CA key. */
export type KeyAlgorithm = KeyType | 'rsa';

interface CurveInfo {
  /** OpenSSL / createECDH name. */
  ecdhName: string;
  /** WebCrypto / JWK name. */
  jwkCrv: 'P-256' | 'P-384';
  curveOid: string;
  /** Private scalar and coordinate size in bytes. */
  size: number;
  hash: 'sha256' | 'sha384';
  sigAlgOid: string;
  jwsAlg: 'ES256' | 'ES384';
}

export const CURVES: Record<KeyType, CurveInfo> = {
  'ec-p256': {
    ecdhName: 'prime256v1',
    jwkCrv: 'P-256',
    curveOid: '1.2.840.10045.3.1.7',
    size: 32,
    hash: 'sha256',
    sigAlgOid: '1.2.840.10045.4.3.2',
    jwsAlg: 'ES256',
  },
  'ec-p384': {
    ecdhName: 'secp384r1',
    jwkCrv: 'P-384',
    curveOid: '1.3.132.0.34',
    size: 48,
    hash: 'sha384',
    sigAlgOid: '1.2.840.10045.4.3.3',
    jwsAlg: 'ES384',
  },
};

const OID_EC_PUBLIC_KEY = '1.2.840.10045.2.1';
const OID_SHA256_WITH_RSA = '1.2.840.113549.1.1.11';

export function isKeyType(value: unknown): value is KeyType {
  return value === 'ec-p256' || value === 'ec-p384';
}

/** A random identifier: 24 random bytes as 32 base64url characters. */
export function randomId(): string {
  return randomBytes(24).toString('base64url');
}

/**
 * A private key held as a handle. Callers sign through it; the private bytes stay inside the
 * KeyObject and leave only through exportPkcs8() (for writing a key file).
 */
export class SigningKey {
  readonly #privateKey: KeyObject;
  readonly publicKey: KeyObject;
  /** SubjectPublicKeyInfo DER. */
  readonly publicKeySpki: Buffer;
  /** AlgorithmIdentifier DER of the signatures this key makes in certificates and CRLs. */
  readonly signatureAlgorithmDer: Buffer;
  readonly #hash: 'sha256' | 'sha384';

  private constructor(
    readonly id: string,
    readonly algorithm: KeyAlgorithm,
    privateKey: KeyObject,
  ) {
    this.#privateKey = privateKey;
    this.publicKey = createPublicKey(privateKey);
    this.publicKeySpki = this.publicKey.export({ format: 'der', type: 'spki' });
    if (algorithm === 'rsa') {
      this.#hash = 'sha256';
      this.signatureAlgorithmDer = der.sequence(der.oid(OID_SHA256_WITH_RSA), der.derNull());
    } else {
      this.#hash = CURVES[algorithm].hash;
      // RFC 5758 §3.2: ECDSA signature AlgorithmIdentifiers carry no parameters.
      this.signatureAlgorithmDer = der.sequence(der.oid(CURVES[algorithm].sigAlgOid));
    }
  }

  static generate(type: KeyType, id: string = randomId()): SigningKey {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: CURVES[type].ecdhName });
    return new SigningKey(id, type, privateKey);
  }

  /**
   * Wraps a loaded private key. `what` names the key in errors (a file path, never key bytes).
   * Accepts EC P-256, EC P-384 and RSA (2048 bits or more).
   */
  static fromKeyObject(privateKey: KeyObject, id: string, what: string): SigningKey {
    if (privateKey.type !== 'private') throw failedPrecondition(`${what}: not a private key`);
    const details = privateKey.asymmetricKeyDetails ?? {};
    if (privateKey.asymmetricKeyType === 'ec') {
      const curve = details.namedCurve;
      const type = (Object.keys(CURVES) as KeyType[]).find((t) => CURVES[t].ecdhName === curve);
      if (!type) throw failedPrecondition(`${what}: EC curve ${curve ?? 'unknown'} is not supported (use P-256 or P-384)`);
      return new SigningKey(id, type, privateKey);
    }
    if (privateKey.asymmetricKeyType === 'rsa') {
      if ((details.modulusLength ?? 0) < 2048) throw failedPrecondition(`${what}: RSA keys must have at least 2048 bits`);
      return new SigningKey(id, 'rsa', privateKey);
    }
    throw failedPrecondition(
      `${what}: key type ${privateKey.asymmetricKeyType ?? 'unknown'} is not supported (use EC P-256, P-384 or RSA)`,
    );
  }

  /** Parses a PEM or DER private key (PKCS#8, SEC1 or PKCS#1). Encrypted keys are refused. */
  static fromPrivateKeyBytes(bytes: Buffer, id: string, what: string): SigningKey {
    let key: KeyObject;
    try {
      const isPem = bytes.subarray(0, 64).toString('latin1').includes('-----BEGIN');
      if (isPem && bytes.includes('ENCRYPTED')) {
        throw failedPrecondition(`${what}: encrypted private keys are not supported`);
      }
      key = isPem ? createPrivateKey({ key: bytes, format: 'pem' }) : createPrivateKey({ key: bytes, format: 'der', type: 'pkcs8' });
    } catch (err) {
      if (err instanceof Error && err.name === 'AgentIdError') throw err;
      // The cause (an OpenSSL decoder message) is left out: it is noise, and key parsers should
      // never get a chance to echo input bytes into our logs.
      throw failedPrecondition(`${what}: not a readable private key (expected unencrypted PKCS#8, SEC1 or PKCS#1 PEM)`);
    }
    return SigningKey.fromKeyObject(key, id, what);
  }

  /** The same key under another ID (IDs of CA keys derive from the public key, known after generation). */
  withId(id: string): SigningKey {
    return new SigningKey(id, this.algorithm, this.#privateKey);
  }

  get jwsAlg(): 'ES256' | 'ES384' {
    if (this.algorithm === 'rsa') throw invalidArgument(`key ${this.id}: RSA keys do not sign JWT-SVIDs`);
    return CURVES[this.algorithm].jwsAlg;
  }

  /**
   * Signs `data` with the key's hash (SHA-256 for P-256 and RSA, SHA-384 for P-384).
   * ECDSA signatures are DER by default (X.509, CRLs); JWS needs 'ieee-p1363' (raw r||s).
   */
  sign(data: Uint8Array, encoding: 'der' | 'ieee-p1363' = 'der'): Buffer {
    // Passing the bare KeyObject for the default encoding skips option parsing on the hot path.
    if (this.algorithm === 'rsa' || encoding === 'der') return cryptoSign(this.#hash, data, this.#privateKey);
    return cryptoSign(this.#hash, data, { key: this.#privateKey, dsaEncoding: encoding });
  }

  /** The one way out for private bytes: unencrypted PKCS#8 DER, for writing a 0600 key file. */
  exportPkcs8(): Secret<Buffer> {
    return new Secret(this.#privateKey.export({ format: 'der', type: 'pkcs8' }));
  }

  /**
   * A non-extractable WebCrypto key for @peculiar/x509 (CA certificates). The bytes cross only
   * into the same process's crypto engine and cannot be exported back.
   */
  async webCryptoKey(): Promise<{ key: webcrypto.CryptoKey; algorithm: webcrypto.EcdsaParams | webcrypto.RsaHashedImportParams }> {
    const pkcs8 = this.exportPkcs8().reveal();
    try {
      if (this.algorithm === 'rsa') {
        const algorithm = { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' };
        const key = await webcrypto.subtle.importKey('pkcs8', pkcs8, algorithm, false, ['sign']);
        return { key, algorithm };
      }
      const curve = CURVES[this.algorithm];
      const key = await webcrypto.subtle.importKey(
        'pkcs8',
        pkcs8,
        { name: 'ECDSA', namedCurve: curve.jwkCrv },
        false,
        ['sign'],
      );
      return { key, algorithm: { name: 'ECDSA', hash: curve.hash === 'sha256' ? 'SHA-256' : 'SHA-384' } };
    } finally {
      pkcs8.fill(0);
    }
  }

  toJSON(): object {
    return { id: this.id, algorithm: this.algorithm };
  }
}

// ---------------------------------------------------------------------------------------------
// Fast leaf keys: raw ECDH key generation wrapped in fixed DER prefixes. Node 20's key encoders
// cost more than a signature (shared/design.md, "Hot path"), so the DER is assembled by hand.

interface LeafKeyLayout {
  spkiPrefix: Buffer;
  pkcs8Prefix: Buffer;
  pkcs8Middle: Buffer;
  size: number;
  pointSize: number;
}

function leafKeyLayout(type: KeyType): LeafKeyLayout {
  const curve = CURVES[type];
  const pointSize = 1 + 2 * curve.size;
  const algId = der.sequence(der.oid(OID_EC_PUBLIC_KEY), der.oid(curve.curveOid));
  const point = Buffer.alloc(pointSize, 0x04);
  const scalar = Buffer.alloc(curve.size, 0x01);
  const spki = der.sequence(algId, der.bitString(point));
  // RFC 5915 ECPrivateKey inside RFC 5958 PrivateKeyInfo, laid out as OpenSSL and Go write it:
  // curve parameters only in the outer AlgorithmIdentifier, public key included as [1].
  const ecPrivateKey = der.sequence(der.smallInteger(1), der.octetString(scalar), der.explicit(1, der.bitString(point)));
  const pkcs8 = der.sequence(der.smallInteger(0), algId, der.octetString(ecPrivateKey));
  const spkiPrefix = spki.subarray(0, spki.length - pointSize);
  // Locate the pieces by searching for the placeholder bytes rather than by length arithmetic.
  const pkcs8Prefix = pkcs8.subarray(0, pkcs8.indexOf(scalar));
  const pkcs8Middle = pkcs8.subarray(pkcs8Prefix.length + curve.size, pkcs8.length - pointSize);
  return { spkiPrefix: Buffer.from(spkiPrefix), pkcs8Prefix: Buffer.from(pkcs8Prefix), pkcs8Middle: Buffer.from(pkcs8Middle), size: curve.size, pointSize };
}

const LEAF_LAYOUTS: Record<KeyType, LeafKeyLayout> = {
  'ec-p256': leafKeyLayout('ec-p256'),
  'ec-p384': leafKeyLayout('ec-p384'),
};

const LEAF_ECDH: Partial<Record<KeyType, ReturnType<typeof createECDH>>> = {};

export interface LeafKeyPair {
  /** SubjectPublicKeyInfo DER. */
  spki: Buffer;
  /** Uncompressed EC point (0x04 || x || y), a view into `spki`. */
  publicPoint: Buffer;
  /** Unencrypted PKCS#8 PrivateKeyInfo DER. */
  pkcs8: Secret<Buffer>;
}

/** Generates a leaf key pair at raw ECDH speed, already DER-encoded. */
export function generateLeafKeyPair(type: KeyType = 'ec-p256'): LeafKeyPair {
  // One ECDH object per curve: generateKeys() makes a fresh pair on every call, and constructing
  // the object costs a third of the generation itself.
  const ecdh = (LEAF_ECDH[type] ??= createECDH(CURVES[type].ecdhName));
  const point = ecdh.generateKeys();
  const scalar = ecdh.getPrivateKey();
  try {
    return encodeLeafKeyPair(type, scalar, point);
  } finally {
    scalar.fill(0);
  }
}

/** Wraps a raw scalar and uncompressed point in SPKI and PKCS#8 DER. */
export function encodeLeafKeyPair(type: KeyType, rawScalar: Buffer, point: Buffer): LeafKeyPair {
  const layout = LEAF_LAYOUTS[type];
  if (point.length !== layout.pointSize || point[0] !== 0x04 || rawScalar.length > layout.size) {
    throw new Error('EC key of unexpected size');
  }
  // Node 20 drops leading zero bytes of the scalar (about 1 key in 256); ECPrivateKey requires
  // the fixed length ceiling(log2(n)/8), so pad it back.
  const pad = Buffer.alloc(layout.size - rawScalar.length);
  const spki = Buffer.concat([layout.spkiPrefix, point]);
  // Its own memory (buffers.ts): a cached SVID's key would otherwise pin a shared 8 KiB slab.
  const pkcs8 = concatUnpooled([layout.pkcs8Prefix, pad, rawScalar, layout.pkcs8Middle, point]);
  return { spki, publicPoint: spki.subarray(layout.spkiPrefix.length), pkcs8: new Secret(pkcs8) };
}

/**
 * Checks a public key sent by a per-host agent for an SVID: the exact SPKI DER layout this CA
 * writes for `type` (uncompressed point), and a point on the curve (node:crypto refuses others).
 * Returns the SPKI unchanged; throws invalid_argument otherwise.
 */
export function checkLeafSpki(spki: Buffer, type: KeyType = 'ec-p256'): Buffer {
  const layout = LEAF_LAYOUTS[type];
  const shaped =
    spki.length === layout.spkiPrefix.length + layout.pointSize &&
    spki.subarray(0, layout.spkiPrefix.length).equals(layout.spkiPrefix) &&
    spki[layout.spkiPrefix.length] === 0x04;
  if (!shaped) throw invalidArgument(`public key: must be a ${type} SubjectPublicKeyInfo (DER, uncompressed point)`);
  try {
    createPublicKey({ key: spki, format: 'der', type: 'spki' });
  } catch {
    throw invalidArgument('public key: the point is not on the curve');
  }
  return spki;
}
