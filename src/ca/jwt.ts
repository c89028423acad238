import { invalidArgument } from '../common/errors.js';
import { Secret } from '../common/secret.js';
import { CURVES, type SigningKey } from './keys.js';
import { pooledRandomBytes } from './random.js';
import { subjectPublicKeyBits } from './x509-template.js';

/*
 * JWT-SVIDs (SPIFFE JWT-SVID standard, shared/spec/pitfalls.md): JWS compact form, ES256/ES384
 * with raw r||s signatures, header {alg, kid, typ}, claims sub, aud (always an array), exp, iat,
 * iss and a unique jti. No nbf: it would equal iat, and iat already says "not before".
 */

export interface PublicJwk {
  kty: 'EC';
  crv: 'P-256' | 'P-384';
  x: string;
  y: string;
  kid: string;
  use?: 'jwt-svid';
}

export interface JwtMintRequest {
  spiffeId: string;
  audience: readonly string[];
  /** The `iss` claim. */
  issuer: string;
  /** Epoch ms. */
  now: number;
  ttlMs: number;
}

export interface JwtMintResult {
  token: Secret<string>;
  jti: string;
  /** Epoch ms, whole seconds (the iat claim). */
  issuedAt: number;
  /** Epoch ms, whole seconds (the exp claim). */
  expiresAt: number;
}

const b64url = (data: Buffer | string): string => Buffer.from(data).toString('base64url');

export const JTI_BYTES = 16;

/**
 * A jti is 128 random bits written as lowercase hex: unique enough, and unable to look like a
 * token or key to the audit trail's guard (base64url could spell "eyJ..." by chance).
 */
export function formatJti(random: Buffer): string {
  return random.toString('hex');
}

export function checkAudience(audience: readonly string[]): void {
  if (!Array.isArray(audience) || audience.length === 0) throw invalidArgument('JWT-SVID: audience must not be empty');
  for (const a of audience) {
    if (typeof a !== 'string' || a.length === 0) throw invalidArgument('JWT-SVID: audience values must be non-empty strings');
  }
}

/** A JWT signer for one key; the header is encoded once. */
export class JwtSigner {
  private readonly encodedHeader: string;

  constructor(readonly key: SigningKey) {
    this.encodedHeader = b64url(JSON.stringify({ alg: key.jwsAlg, kid: key.id, typ: 'JWT' }));
  }

  get kid(): string {
    return this.key.id;
  }

  mint(req: JwtMintRequest): JwtMintResult {
    checkAudience(req.audience);
    // Floored, never rounded up: py-spiffe rejects an iat even one second in the future.
    if (!Number.isFinite(req.ttlMs) || req.ttlMs < 1000) throw invalidArgument('JWT-SVID: TTL must be at least one second');
    const iat = Math.floor(req.now / 1000);
    const exp = Math.floor((req.now + req.ttlMs) / 1000);
    const jti = formatJti(pooledRandomBytes(JTI_BYTES));
    const claims = { sub: req.spiffeId, aud: [...req.audience], exp, iat, iss: req.issuer, jti };
    const signingInput = `${this.encodedHeader}.${b64url(JSON.stringify(claims))}`;
    const signature = this.key.sign(Buffer.from(signingInput, 'latin1'), 'ieee-p1363');
    return {
      token: new Secret(`${signingInput}.${signature.toString('base64url')}`),
      jti,
      issuedAt: iat * 1000,
      expiresAt: exp * 1000,
    };
  }
}

/**
 * The public JWK of an EC key. Coordinates are cut from the uncompressed point, so they always
 * have the full field length (go-spiffe rejects a set holding a coordinate with zeros trimmed).
 */
export function publicJwk(key: SigningKey): PublicJwk {
  if (key.algorithm === 'rsa') throw invalidArgument(`key ${key.id}: only EC keys are published as JWT keys`);
  const curve = CURVES[key.algorithm];
  const point = subjectPublicKeyBits(key.publicKeySpki);
  if (point.length !== 1 + 2 * curve.size || point[0] !== 0x04) {
    throw invalidArgument(`key ${key.id}: public key is not an uncompressed ${curve.jwkCrv} point`);
  }
  return {
    kty: 'EC',
    crv: curve.jwkCrv,
    x: b64url(point.subarray(1, 1 + curve.size)),
    y: b64url(point.subarray(1 + curve.size)),
    kid: key.id,
  };
}

/**
 * A JWK set as JSON text. `use: 'jwt-svid'` is added only for SPIFFE bundle documents (bundle
 * endpoint); the Workload API's JWT bundles carry plain keys, as SPIRE sends them.
 */
export function jwtKeySetJson(keys: readonly PublicJwk[], options: { withUse?: boolean } = {}): string {
  return JSON.stringify({
    keys: keys.map((k) => {
      const jwk: PublicJwk = { kty: k.kty, crv: k.crv, x: k.x, y: k.y, kid: k.kid };
      if (options.withUse) jwk.use = 'jwt-svid';
      return jwk;
    }),
  });
}
