import { createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto';
import { invalidArgument } from '../common/errors.js';
import { TrustDomain } from '../spiffe/spiffe-id.js';
import { Certificate, parseCertificates } from './certificate.js';
import { pemBlocks, toPem } from './der.js';

type TrustDomainLike = TrustDomain | string;

function td(value: TrustDomainLike): TrustDomain {
  return typeof value === 'string' ? TrustDomain.parse(value) : value;
}

/** The X.509 authorities (CA certificates) of exactly one trust domain. */
export class X509Bundle {
  readonly trustDomain: TrustDomain;
  readonly authorities: readonly Certificate[];

  constructor(trustDomain: TrustDomainLike, authorities: readonly Certificate[]) {
    this.trustDomain = td(trustDomain);
    const unique: Certificate[] = [];
    for (const a of authorities) if (!unique.some((u) => u.equals(a))) unique.push(a);
    this.authorities = unique;
  }

  /** Concatenated DER (the Workload API encoding) or a list of DER certificates. */
  static fromDer(trustDomain: TrustDomainLike, der: Uint8Array | readonly Uint8Array[]): X509Bundle {
    const t = td(trustDomain);
    return new X509Bundle(t, parseCertificates(der, `X.509 bundle for ${t.name}`));
  }

  static fromPem(trustDomain: TrustDomainLike, pem: string): X509Bundle {
    const t = td(trustDomain);
    const ders = pemBlocks(pem, 'CERTIFICATE');
    if (ders.length === 0) throw invalidArgument(`X.509 bundle for ${t.name}: no CERTIFICATE block in PEM`);
    return new X509Bundle(t, parseCertificates(ders, `X.509 bundle for ${t.name}`));
  }

  get authoritiesDer(): Buffer[] {
    return this.authorities.map((a) => a.der);
  }

  /** Concatenated DER, as X509SVID.bundle and the bundles maps carry it. */
  toDer(): Buffer {
    return Buffer.concat(this.authoritiesDer);
  }

  toPem(): string {
    return this.authorities.map((a) => toPem(a.der, 'CERTIFICATE')).join('');
  }
}

export interface JwtAuthority {
  readonly kid: string;
  readonly jwk: JsonWebKey;
  readonly key: KeyObject;
}

const JWK_SET_MAX_BYTES = 1024 * 1024;
const EC_COORD_BYTES: Record<string, number> = { 'P-256': 32, 'P-384': 48, 'P-521': 66 };
const SUPPORTED_KTY = new Set(['EC', 'RSA', 'OKP']);

function parseJson(input: string | Uint8Array | object, what: string): unknown {
  if (typeof input === 'object' && !(input instanceof Uint8Array)) return input;
  const text = typeof input === 'string' ? input : Buffer.from(input).toString('utf8');
  if (Buffer.byteLength(text) > JWK_SET_MAX_BYTES) throw invalidArgument(`${what}: larger than ${JWK_SET_MAX_BYTES} bytes`);
  try {
    return JSON.parse(text);
  } catch (err) {
    throw invalidArgument(`${what}: not valid JSON`, err);
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function keysArray(doc: unknown, what: string): Record<string, unknown>[] {
  if (!isRecord(doc)) throw invalidArgument(`${what}: must be a JSON object`);
  const keys = doc.keys;
  if (!Array.isArray(keys)) throw invalidArgument(`${what}: "keys" must be an array`);
  return keys.map((k, i) => {
    if (!isRecord(k)) throw invalidArgument(`${what}: keys[${i}] must be an object`);
    return k;
  });
}

const B64URL = /^[A-Za-z0-9_-]*$/;

/** Imports a public JWK, refusing private members and trimmed EC coordinates (go-spiffe rejects those). */
function importPublicJwk(jwk: Record<string, unknown>, what: string): KeyObject {
  for (const member of ['d', 'p', 'q', 'dp', 'dq', 'qi', 'k']) {
    if (member in jwk) throw invalidArgument(`${what}: must be a public key, but has private member "${member}"`);
  }
  if (jwk.kty === 'EC') {
    const size = EC_COORD_BYTES[String(jwk.crv)];
    if (size === undefined) throw invalidArgument(`${what}: unsupported EC curve ${JSON.stringify(jwk.crv)}`);
    for (const c of ['x', 'y'] as const) {
      const v = jwk[c];
      if (typeof v !== 'string' || !B64URL.test(v) || Buffer.from(v, 'base64url').length !== size) {
        throw invalidArgument(`${what}: EC coordinate "${c}" must be ${size} bytes of base64url (leading zeros kept)`);
      }
    }
  }
  try {
    return createPublicKey({ key: jwk as JsonWebKey, format: 'jwk' });
  } catch (err) {
    throw invalidArgument(`${what}: not a usable public key`, err);
  }
}

/** The JWT signing keys of exactly one trust domain, by key ID. */
export class JwtBundle {
  readonly trustDomain: TrustDomain;
  readonly authorities: ReadonlyMap<string, JwtAuthority>;

  constructor(trustDomain: TrustDomainLike, authorities: Iterable<JwtAuthority> = []) {
    this.trustDomain = td(trustDomain);
    const map = new Map<string, JwtAuthority>();
    for (const a of authorities) {
      if (map.has(a.kid)) throw invalidArgument(`JWT bundle for ${this.trustDomain.name}: key ID "${a.kid}" appears twice`);
      map.set(a.kid, a);
    }
    this.authorities = map;
  }

  /**
   * Parses an RFC 7517 JWK Set (JSON text, bytes or an already parsed object). Like go-spiffe,
   * one key without a `kid` rejects the whole set: a JWT-SVID names its key by kid, so a
   * kid-less key can never verify anything and signals a broken producer. Keys of an unknown
   * `kty` are skipped (SPIFFE bundle spec 4.2.1); keys for another use are refused.
   */
  static fromJwkSet(trustDomain: TrustDomainLike, input: string | Uint8Array | object): JwtBundle {
    const t = td(trustDomain);
    const what = `JWT bundle for ${t.name}`;
    const keys = keysArray(parseJson(input, what), what);
    const out: JwtAuthority[] = [];
    keys.forEach((k, i) => {
      const kw = `${what}: keys[${i}]`;
      if (typeof k.kid !== 'string' || k.kid === '') {
        throw invalidArgument(`${kw}: every JWT key must have a non-empty "kid"; the whole set is refused`);
      }
      if (k.use !== undefined && k.use !== 'jwt-svid' && k.use !== 'sig') {
        throw invalidArgument(`${kw}: "use" is ${JSON.stringify(k.use)}, a JWT bundle holds only jwt-svid keys`);
      }
      if (typeof k.kty !== 'string') throw invalidArgument(`${kw}: "kty" is required`);
      if (!SUPPORTED_KTY.has(k.kty)) return;
      out.push({ kid: k.kid, jwk: k as JsonWebKey, key: importPublicJwk(k, kw) });
    });
    return new JwtBundle(t, out);
  }

  findKey(kid: string): JwtAuthority | undefined {
    return this.authorities.get(kid);
  }

  /** Plain JWK Set, as FetchJWTBundles carries it. */
  toJwkSet(): { keys: JsonWebKey[] } {
    return { keys: [...this.authorities.values()].map((a) => ({ ...publicJwk(a.key), kid: a.kid })) };
  }
}

export interface X509BundleSource {
  getX509Bundle(trustDomain: TrustDomain): X509Bundle | undefined;
}
export interface JwtBundleSource {
  getJwtBundle(trustDomain: TrustDomain): JwtBundle | undefined;
}

/**
 * Bundles keyed by trust domain. A lookup only ever returns the bundle recorded for that
 * trust domain (SPIFFE bundle spec 3: validators must pick the SVID's own trust domain).
 */
export class BundleSet implements X509BundleSource, JwtBundleSource {
  private readonly x509 = new Map<string, X509Bundle>();
  private readonly jwt = new Map<string, JwtBundle>();

  constructor(bundles: Iterable<X509Bundle | JwtBundle> = []) {
    for (const b of bundles) this.add(b);
  }

  /** Adds or replaces the bundle of that kind for its trust domain. */
  add(bundle: X509Bundle | JwtBundle): this {
    if (bundle instanceof X509Bundle) this.x509.set(bundle.trustDomain.name, bundle);
    else this.jwt.set(bundle.trustDomain.name, bundle);
    return this;
  }

  remove(trustDomain: TrustDomainLike): void {
    const name = td(trustDomain).name;
    this.x509.delete(name);
    this.jwt.delete(name);
  }

  getX509Bundle(trustDomain: TrustDomainLike): X509Bundle | undefined {
    return this.x509.get(td(trustDomain).name);
  }

  getJwtBundle(trustDomain: TrustDomainLike): JwtBundle | undefined {
    return this.jwt.get(td(trustDomain).name);
  }

  get x509Bundles(): X509Bundle[] {
    return [...this.x509.values()];
  }

  get jwtBundles(): JwtBundle[] {
    return [...this.jwt.values()];
  }

  /** From the Workload API maps: keys "spiffe://<td>" (or bare names), values concatenated DER or DER lists. */
  static fromX509Map(map: ReadonlyMap<string, Uint8Array | readonly Uint8Array[]>): BundleSet {
    const set = new BundleSet();
    for (const [key, der] of map) set.add(X509Bundle.fromDer(TrustDomain.parse(key), der));
    return set;
  }

  static fromJwtMap(map: ReadonlyMap<string, string | Uint8Array | object>): BundleSet {
    const set = new BundleSet();
    for (const [key, jwks] of map) set.add(JwtBundle.fromJwkSet(TrustDomain.parse(key), jwks));
    return set;
  }
}

/** A parsed SPIFFE bundle document (SPIFFE Trust Domain and Bundle spec 4). */
export interface SpiffeBundle {
  readonly trustDomain: TrustDomain;
  readonly x509: X509Bundle;
  readonly jwt: JwtBundle;
  readonly sequence: number | undefined;
  readonly refreshHintSeconds: number | undefined;
}

const STD_BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

function optionalInteger(doc: Record<string, unknown>, name: string, what: string): number | undefined {
  const v = doc[name];
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw invalidArgument(`${what}: "${name}" must be a non-negative JSON integer`);
  }
  return v;
}

/**
 * Parses a SPIFFE bundle document. x509-svid keys carry exactly one certificate in `x5c`
 * (standard base64) whose public key must be the JWK's; jwt-svid keys must have a `kid`.
 * Keys of an unknown kty or use are ignored, as the spec requires.
 */
export function parseSpiffeBundle(trustDomain: TrustDomainLike, input: string | Uint8Array | object): SpiffeBundle {
  const t = td(trustDomain);
  const what = `SPIFFE bundle for ${t.name}`;
  const doc = parseJson(input, what);
  const keys = keysArray(doc, what);
  const record = doc as Record<string, unknown>;
  const certs: Certificate[] = [];
  const jwtKeys: JwtAuthority[] = [];
  keys.forEach((k, i) => {
    const kw = `${what}: keys[${i}]`;
    if (typeof k.kty !== 'string') throw invalidArgument(`${kw}: "kty" is required`);
    if (!SUPPORTED_KTY.has(k.kty)) return;
    if (k.use === 'x509-svid') {
      const x5c = k.x5c;
      if (!Array.isArray(x5c) || x5c.length !== 1 || typeof x5c[0] !== 'string') {
        throw invalidArgument(`${kw}: an x509-svid key must carry exactly one certificate in "x5c"`);
      }
      const b64 = x5c[0];
      if (!STD_BASE64.test(b64) || b64.length % 4 !== 0) {
        throw invalidArgument(`${kw}: "x5c" must be standard base64 (RFC 7517 4.7), not base64url`);
      }
      const [cert] = parseCertificates([Buffer.from(b64, 'base64')], kw);
      const key = importPublicJwk(k, kw);
      if (!key.equals(cert!.publicKey)) throw invalidArgument(`${kw}: the JWK and its x5c certificate hold different keys`);
      certs.push(cert!);
    } else if (k.use === 'jwt-svid') {
      if (typeof k.kid !== 'string' || k.kid === '') throw invalidArgument(`${kw}: a jwt-svid key must have a non-empty "kid"`);
      jwtKeys.push({ kid: k.kid, jwk: k as JsonWebKey, key: importPublicJwk(k, kw) });
    }
  });
  return {
    trustDomain: t,
    x509: new X509Bundle(t, certs),
    jwt: new JwtBundle(t, jwtKeys),
    sequence: optionalInteger(record, 'spiffe_sequence', what),
    refreshHintSeconds: optionalInteger(record, 'spiffe_refresh_hint', what),
  };
}

/** JWK of a public key with EC coordinates padded to the curve size (go-spiffe rejects trimmed ones). */
export function publicJwk(key: KeyObject): JsonWebKey {
  const jwk = key.export({ format: 'jwk' });
  if (jwk.kty === 'EC' && typeof jwk.crv === 'string') {
    const size = EC_COORD_BYTES[jwk.crv];
    if (size !== undefined) {
      for (const c of ['x', 'y'] as const) {
        const raw = Buffer.from(jwk[c] ?? '', 'base64url');
        jwk[c] = Buffer.concat([Buffer.alloc(Math.max(0, size - raw.length)), raw]).toString('base64url');
      }
    }
  }
  return jwk;
}

export interface SpiffeBundleDocumentInput {
  x509?: X509Bundle;
  jwt?: JwtBundle;
  /** Monotonic revision; emitted as a JSON integer. */
  sequence?: number;
  /** Suggested refresh interval in whole seconds; emitted as a JSON integer. */
  refreshHintSeconds?: number;
}

/** Serializes a SPIFFE bundle document (JSON text). */
export function toSpiffeBundleDocument(input: SpiffeBundleDocumentInput): string {
  if (input.x509 && input.jwt && !input.x509.trustDomain.equals(input.jwt.trustDomain)) {
    throw invalidArgument('SPIFFE bundle: the X.509 and JWT bundles belong to different trust domains');
  }
  const keys: JsonWebKey[] = [];
  for (const cert of input.x509?.authorities ?? []) {
    keys.push({ ...publicJwk(cert.publicKey), use: 'x509-svid', x5c: [cert.der.toString('base64')] });
  }
  for (const a of input.jwt?.authorities.values() ?? []) {
    keys.push({ ...publicJwk(a.key), use: 'jwt-svid', kid: a.kid });
  }
  const doc: Record<string, unknown> = { keys };
  for (const [name, v] of [['spiffe_sequence', input.sequence], ['spiffe_refresh_hint', input.refreshHintSeconds]] as const) {
    if (v === undefined) continue;
    if (!Number.isSafeInteger(v) || v < 0) throw invalidArgument(`SPIFFE bundle: ${name} must be a non-negative integer`);
    doc[name] = v;
  }
  return JSON.stringify(doc);
}
