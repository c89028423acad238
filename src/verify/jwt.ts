import { constants, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { invalidArgument, isAgentIdError } from '../common/errors.js';
import { deepFreeze } from '../common/freeze.js';
import { SpiffeId } from '../spiffe/spiffe-id.js';
import { JwtBundle, type JwtBundleSource } from './bundle.js';
import { refuse } from './errors.js';

/** Asymmetric JWS algorithms of the JWT-SVID spec (3). `none` and HS* can never be enabled. */
export const JWT_SVID_ALGORITHMS = ['ES256', 'ES384', 'ES512', 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512'] as const;
export type JwtSvidAlgorithm = (typeof JWT_SVID_ALGORITHMS)[number];

export interface JwtVerifyOptions {
  /** The token's aud must contain at least one of these. */
  audience: string | string[];
  /** Milliseconds since the epoch. */
  now: number;
  /** Subset of JWT_SVID_ALGORITHMS (default: all of them). */
  allowedAlgs?: readonly JwtSvidAlgorithm[];
  /** Tolerated clock difference for exp, nbf and iat (default 30 s). */
  skewMs?: number;
  /** Called with the token's SPIFFE ID (string form) after every other check; true refuses. */
  revoked?: (spiffeId: string) => boolean;
  /**
   * Tokens whose signature already verified against these same bundles (see VerifiedSignatures).
   * A token found here skips only the signature computation; every other check runs as usual.
   */
  verifiedSignatures?: VerifiedSignatures;
}

/**
 * Remembers which whole tokens had a good signature, for a verifier that sees the same token many
 * times (a service checking each request's bearer token). The token string covers header (alg,
 * kid), payload and signature, so the same string verifies the same way against the same key.
 * Each is kept with its decoded header, claims and SPIFFE ID (frozen: every caller is handed the
 * same objects), so a repeat skips the decoding too; every check that depends on the options, the
 * bundle, the time or revocation still runs. Use one memo per bundle set and drop it when the
 * bundles change: a key removed from a bundle must stop vouching for tokens at once. Bounded: when
 * full it starts over.
 */
export class VerifiedSignatures {
  private readonly tokens = new Map<string, VerifiedJwtSvid>();

  constructor(private readonly capacity = 4096) {
    if (!Number.isSafeInteger(capacity) || capacity <= 0) throw invalidArgument('VerifiedSignatures: capacity must be a positive integer');
  }

  has(token: string): boolean {
    return this.tokens.has(token);
  }

  get(token: string): VerifiedJwtSvid | undefined {
    return this.tokens.get(token);
  }

  /** `token`'s signature verified; `decoded` is what verifyJwtSvid read from it. */
  add(token: string, decoded: VerifiedJwtSvid): void {
    if (this.tokens.size >= this.capacity) this.tokens.clear();
    this.tokens.set(token, Object.freeze({ spiffeId: decoded.spiffeId, claims: deepFreeze(decoded.claims), header: deepFreeze(decoded.header) }));
  }

  get size(): number {
    return this.tokens.size;
  }
}

export interface VerifiedJwtSvid {
  readonly spiffeId: SpiffeId;
  readonly claims: Readonly<Record<string, unknown>>;
  readonly header: Readonly<Record<string, unknown>>;
}

export const MAX_JWT_BYTES = 16 * 1024;
const DEFAULT_SKEW_MS = 30_000;
const B64URL = /^[A-Za-z0-9_-]*$/;

interface AlgSpec {
  hash: string;
  kind: 'ec' | 'rsa' | 'pss';
  curve?: string;
}
const ALGS: Record<JwtSvidAlgorithm, AlgSpec> = {
  ES256: { hash: 'sha256', kind: 'ec', curve: 'prime256v1' },
  ES384: { hash: 'sha384', kind: 'ec', curve: 'secp384r1' },
  ES512: { hash: 'sha512', kind: 'ec', curve: 'secp521r1' },
  RS256: { hash: 'sha256', kind: 'rsa' },
  RS384: { hash: 'sha384', kind: 'rsa' },
  RS512: { hash: 'sha512', kind: 'rsa' },
  PS256: { hash: 'sha256', kind: 'pss' },
  PS384: { hash: 'sha384', kind: 'pss' },
  PS512: { hash: 'sha512', kind: 'pss' },
};
const MIN_RSA_BITS = 2048;

/** Strict base64url: no padding, no foreign characters, canonical trailing bits. */
function decodePart(part: string, what: string): Buffer {
  if (!B64URL.test(part) || part.length % 4 === 1) throw refuse('malformed', `JWT-SVID: ${what} is not base64url`);
  const bytes = Buffer.from(part, 'base64url');
  if (bytes.toString('base64url') !== part) throw refuse('malformed', `JWT-SVID: ${what} is not canonical base64url`);
  return bytes;
}

function decodeObject(part: string, what: string): Record<string, unknown> {
  const text = decodePart(part, what).toString('utf8');
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw refuse('malformed', `JWT-SVID: ${what} is not JSON`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw refuse('malformed', `JWT-SVID: ${what} must be a JSON object`);
  }
  return value as Record<string, unknown>;
}

function numericDate(claims: Record<string, unknown>, name: string): number | undefined {
  const v = claims[name];
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw refuse('malformed', `JWT-SVID: "${name}" must be a NumericDate`);
  return v * 1000;
}

function keyFits(key: KeyObject, spec: AlgSpec): boolean {
  if (spec.kind === 'ec') return key.asymmetricKeyType === 'ec' && key.asymmetricKeyDetails?.namedCurve === spec.curve;
  if (key.asymmetricKeyType !== 'rsa' && !(spec.kind === 'pss' && key.asymmetricKeyType === 'rsa-pss')) return false;
  return (key.asymmetricKeyDetails?.modulusLength ?? 0) >= MIN_RSA_BITS;
}

function checkSignature(spec: AlgSpec, input: Buffer, key: KeyObject, signature: Buffer): boolean {
  try {
    if (spec.kind === 'ec') return cryptoVerify(spec.hash, input, { key, dsaEncoding: 'ieee-p1363' }, signature);
    if (spec.kind === 'rsa') return cryptoVerify(spec.hash, input, { key, padding: constants.RSA_PKCS1_PADDING }, signature);
    return cryptoVerify(
      spec.hash,
      input,
      { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_DIGEST },
      signature,
    );
  } catch {
    return false;
  }
}

/**
 * Verifies a JWT-SVID (JWT-SVID spec 3-5): compact JWS, an allowed asymmetric alg, a `kid`
 * found in the JWT bundle of the `sub`'s own trust domain, a matching key type, the signature,
 * then sub, aud, exp (required), nbf and iat with skew, and finally revocation.
 * Throws VerificationError (code permission_denied) with a stable `reason`.
 */
export function verifyJwtSvid(
  token: string,
  bundles: JwtBundleSource | JwtBundle,
  opts: JwtVerifyOptions,
): VerifiedJwtSvid {
  const audiences = typeof opts.audience === 'string' ? [opts.audience] : opts.audience;
  if (audiences.length === 0 || audiences.some((a) => typeof a !== 'string' || a === '')) {
    throw invalidArgument('verifyJwtSvid: audience must name at least one non-empty audience');
  }
  const allowed = new Set<string>(opts.allowedAlgs ?? JWT_SVID_ALGORITHMS);
  for (const alg of allowed) {
    if (!(alg in ALGS)) throw invalidArgument(`verifyJwtSvid: algorithm ${alg} cannot be allowed; only ${JWT_SVID_ALGORITHMS.join(', ')}`);
  }
  const skew = opts.skewMs ?? DEFAULT_SKEW_MS;

  // A token verified before against these bundles (the memo's promise): its parts are already
  // decoded and checked for form; what depends on the options, the bundle, the time or
  // revocation is checked again below.
  const remembered = opts.verifiedSignatures?.get(token);
  let parts: [string, string, string] | undefined;
  let header: Record<string, unknown>;
  if (remembered) {
    header = remembered.header as Record<string, unknown>;
  } else {
    if (typeof token !== 'string' || token.length === 0) throw refuse('malformed', 'JWT-SVID: token is empty');
    if (token.length > MAX_JWT_BYTES) throw refuse('malformed', `JWT-SVID: token is longer than ${MAX_JWT_BYTES} bytes`);
    const split = token.split('.');
    if (split.length !== 3) throw refuse('malformed', 'JWT-SVID: must be a JWS compact serialization with three parts');
    parts = split as [string, string, string];
    header = decodeObject(parts[0], 'header');
  }
  const alg = header.alg;
  if (typeof alg !== 'string' || !allowed.has(alg)) {
    throw refuse('bad_alg', `JWT-SVID: alg ${JSON.stringify(alg)} is not allowed; allowed: ${[...allowed].join(', ')}`);
  }
  const spec = ALGS[alg as JwtSvidAlgorithm];
  if (header.typ !== undefined && header.typ !== 'JWT' && header.typ !== 'JOSE') {
    throw refuse('bad_typ', `JWT-SVID: typ must be absent, "JWT" or "JOSE", not ${JSON.stringify(header.typ)}`);
  }
  if (header.crit !== undefined) throw refuse('malformed', 'JWT-SVID: header has "crit" extensions this verifier does not understand');
  const kid = header.kid;
  if (typeof kid !== 'string' || kid === '') throw refuse('no_kid', 'JWT-SVID: header must name its key with "kid"');

  let claims: Record<string, unknown>;
  let spiffeId: SpiffeId;
  if (remembered) {
    claims = remembered.claims as Record<string, unknown>;
    spiffeId = remembered.spiffeId;
  } else {
    claims = decodeObject(parts![1], 'payload');
    if (typeof claims.sub !== 'string') throw refuse('missing_claim', 'JWT-SVID: "sub" claim is required');
    try {
      spiffeId = SpiffeId.parse(claims.sub);
    } catch (err) {
      const detail = isAgentIdError(err) ? err.message : 'invalid';
      throw refuse('bad_spiffe_id', `JWT-SVID: "sub" is not a valid SPIFFE ID (${detail})`, err);
    }
  }

  const td = spiffeId.trustDomain;
  let bundle: JwtBundle | undefined;
  if (bundles instanceof JwtBundle) {
    if (!bundles.trustDomain.equals(td)) {
      throw refuse('wrong_trust_domain', `JWT-SVID: ${spiffeId} is in trust domain ${td.name} but the bundle is for ${bundles.trustDomain.name}`);
    }
    bundle = bundles;
  } else {
    bundle = bundles.getJwtBundle(td);
    if (!bundle) throw refuse('no_bundle', `JWT-SVID: no JWT bundle for trust domain ${td.name}`);
    if (!bundle.trustDomain.equals(td)) {
      throw refuse('wrong_trust_domain', `JWT-SVID: the bundle source returned trust domain ${bundle.trustDomain.name} for ${td.name}`);
    }
  }
  const authority = bundle.findKey(kid);
  if (!authority) throw refuse('unknown_kid', `JWT-SVID: key ${JSON.stringify(kid)} is not in the JWT bundle of ${td.name}`);
  if (authority.jwk.alg !== undefined && authority.jwk.alg !== alg) {
    throw refuse('bad_alg', `JWT-SVID: key ${kid} is for ${authority.jwk.alg}, the token says ${alg}`);
  }
  if (!keyFits(authority.key, spec)) throw refuse('bad_alg', `JWT-SVID: key ${kid} cannot be used with ${alg}`);
  if (!remembered) {
    const [h, p, s] = parts!;
    const signature = decodePart(s, 'signature');
    if (!checkSignature(spec, Buffer.from(`${h}.${p}`), authority.key, signature)) {
      throw refuse('bad_signature', `JWT-SVID: signature does not verify with key ${kid}`);
    }
    opts.verifiedSignatures?.add(token, { spiffeId, claims, header });
  }

  const aud = claims.aud;
  const tokenAud = typeof aud === 'string' ? [aud] : Array.isArray(aud) && aud.every((a) => typeof a === 'string') ? (aud as string[]) : undefined;
  if (!tokenAud || tokenAud.length === 0) throw refuse('missing_claim', 'JWT-SVID: "aud" must be a string or an array of strings');
  if (!tokenAud.some((a) => audiences.includes(a))) {
    throw refuse('bad_audience', `JWT-SVID: aud does not include ${audiences.map((a) => JSON.stringify(a)).join(' or ')}`);
  }
  const exp = numericDate(claims, 'exp');
  if (exp === undefined) throw refuse('missing_claim', 'JWT-SVID: "exp" claim is required');
  if (opts.now >= exp + skew) throw refuse('expired', `JWT-SVID: expired at ${new Date(exp).toISOString()}`);
  const nbf = numericDate(claims, 'nbf');
  if (nbf !== undefined && opts.now + skew < nbf) throw refuse('not_yet_valid', `JWT-SVID: not valid before ${new Date(nbf).toISOString()}`);
  const iat = numericDate(claims, 'iat');
  if (iat !== undefined && opts.now + skew < iat) throw refuse('issued_in_future', `JWT-SVID: issued in the future (${new Date(iat).toISOString()})`);

  if (opts.revoked?.(spiffeId.toString())) throw refuse('revoked', `JWT-SVID: ${spiffeId} is revoked`);
  return remembered ?? { spiffeId, claims, header };
}
