import { X509Certificate, createPrivateKey, type KeyObject } from 'node:crypto';
import { AgentIdError, internal } from '../common/errors.js';
import { Secret } from '../common/secret.js';
import { SpiffeId, TrustDomain } from '../spiffe/spiffe-id.js';
import { splitDer } from './der.js';
import type { JwkSet, JwtBundles, JwtSvid, ValidatedJwtSvid, X509Bundles, X509Context, X509Svid } from './types.js';

/*
 * Raw messages as @grpc/proto-loader hands them over (keepCase, defaults: true, oneofs: true).
 * Every field is treated as untrusted: a decode failure rejects the whole message, so a consumer
 * never sees a half-applied update.
 */
export interface RawX509Svid {
  spiffe_id?: string;
  x509_svid?: Buffer;
  x509_svid_key?: Buffer;
  bundle?: Buffer;
  hint?: string;
}
export interface RawX509SvidResponse {
  svids?: RawX509Svid[];
  crl?: Buffer[];
  federated_bundles?: Record<string, Buffer>;
}
export interface RawX509BundlesResponse {
  crl?: Buffer[];
  bundles?: Record<string, Buffer>;
}
export interface RawJwtSvid {
  spiffe_id?: string;
  svid?: string;
  hint?: string;
}
export interface RawJwtSvidResponse {
  svids?: RawJwtSvid[];
}
export interface RawJwtBundlesResponse {
  bundles?: Record<string, Buffer>;
}
/*
 * google.protobuf.Struct comes from protobufjs's bundled copy of struct.proto, whose field names
 * are camelCase (numberValue, kind: 'numberValue') even with keepCase. Both spellings are read.
 */
export interface RawStructValue {
  kind?: string;
  nullValue?: unknown;
  numberValue?: number;
  stringValue?: string;
  boolValue?: boolean;
  structValue?: RawStruct;
  listValue?: { values?: RawStructValue[] };
  null_value?: unknown;
  number_value?: number;
  string_value?: string;
  bool_value?: boolean;
  struct_value?: RawStruct;
  list_value?: { values?: RawStructValue[] };
}
export interface RawStruct {
  fields?: Record<string, RawStructValue>;
}
export interface RawValidateJwtSvidResponse {
  spiffe_id?: string;
  claims?: RawStruct | null;
}

function malformed(message: string, field: string, detail: string): AgentIdError {
  return internal(`Workload API sent a malformed ${message}: ${field}: ${detail}`);
}

function detailOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function parseCertificates(data: Buffer | undefined, message: string, field: string): { der: Buffer[]; certs: X509Certificate[] } {
  let der: Buffer[];
  try {
    der = splitDer(data ?? Buffer.alloc(0), field);
  } catch (err) {
    throw internal(`Workload API sent a malformed ${message}: ${detailOf(err)}`);
  }
  if (der.length === 0) throw malformed(message, field, 'holds no certificates');
  const certs = der.map((d, i) => {
    try {
      return new X509Certificate(d);
    } catch {
      throw malformed(message, `${field}[${i}]`, 'is not a valid DER certificate');
    }
  });
  return { der, certs };
}

function parseCrls(list: Buffer[] | undefined, message: string, field: string): Buffer[] {
  return (list ?? []).map((crl, i) => {
    let parts: Buffer[];
    try {
      parts = splitDer(crl, `${field}[${i}]`);
    } catch (err) {
      throw internal(`Workload API sent a malformed ${message}: ${detailOf(err)}`);
    }
    if (parts.length !== 1) throw malformed(message, `${field}[${i}]`, 'must hold exactly one DER CRL');
    return parts[0]!;
  });
}

/** Map keys must name a trust domain; both "spiffe://td" and a bare "td" normalise to "spiffe://td". */
function trustDomainKey(key: string, message: string, field: string): string {
  try {
    return TrustDomain.parse(key).idString;
  } catch (err) {
    throw malformed(message, `${field} key`, detailOf(err));
  }
}

function decodeCertBundleMap(map: Record<string, Buffer> | undefined, message: string, field: string): Map<string, Buffer[]> {
  const out = new Map<string, Buffer[]>();
  for (const [key, value] of Object.entries(map ?? {})) {
    const td = trustDomainKey(key, message, field);
    if (out.has(td)) throw malformed(message, field, `trust domain ${td} appears twice`);
    out.set(td, parseCertificates(value, message, `${field}[${td}]`).der);
  }
  return out;
}

/** The URI SANs of a certificate, from Node's rendering (values with special characters are JSON-quoted). */
function uriSans(cert: X509Certificate): string[] {
  const text = cert.subjectAltName;
  if (!text) return [];
  const out: string[] = [];
  const entry = /(?:^|, )([A-Za-z][A-Za-z ]*):("(?:[^"\\]|\\.)*"|[^,]*)/g;
  let m: RegExpExecArray | null;
  while ((m = entry.exec(text)) !== null) {
    if (m[1] !== 'URI') continue;
    const raw = m[2]!;
    out.push(raw.startsWith('"') ? (JSON.parse(raw) as string) : raw);
  }
  return out;
}

function decodeX509Svid(raw: RawX509Svid, i: number): X509Svid {
  const message = 'X509SVIDResponse';
  const field = `svids[${i}]`;
  let id: SpiffeId;
  try {
    id = SpiffeId.parse(raw.spiffe_id ?? '');
  } catch (err) {
    throw malformed(message, `${field}.spiffe_id`, detailOf(err));
  }
  const spiffeId = id.toString();
  const chain = parseCertificates(raw.x509_svid, message, `${field}.x509_svid`);
  const leaf = chain.certs[0]!;
  const uris = uriSans(leaf);
  if (uris.length !== 1 || uris[0] !== spiffeId) {
    throw malformed(message, `${field}.x509_svid`, `leaf certificate must carry exactly one URI SAN equal to ${spiffeId}`);
  }
  const keyDer = raw.x509_svid_key ?? Buffer.alloc(0);
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: keyDer, format: 'der', type: 'pkcs8' });
  } catch {
    // No cause attached: the parser's error must not carry key bytes into logs.
    throw malformed(message, `${field}.x509_svid_key`, 'is not an unencrypted PKCS#8 DER private key');
  }
  if (!leaf.checkPrivateKey(key)) {
    throw malformed(message, `${field}.x509_svid_key`, 'does not match the leaf certificate public key');
  }
  const notAfter = Date.parse(leaf.validTo);
  if (Number.isNaN(notAfter)) throw malformed(message, `${field}.x509_svid`, 'leaf notAfter is unreadable');
  return {
    spiffeId,
    chainDer: chain.der,
    keyPkcs8Der: new Secret(Buffer.from(keyDer)),
    bundleDer: parseCertificates(raw.bundle, message, `${field}.bundle`).der,
    hint: raw.hint ?? '',
    notAfter,
  };
}

export function decodeX509Context(raw: RawX509SvidResponse): X509Context {
  const svids = (raw.svids ?? []).map(decodeX509Svid);
  if (svids.length === 0) throw malformed('X509SVIDResponse', 'svids', 'must hold at least one SVID');
  return {
    svids,
    crls: parseCrls(raw.crl, 'X509SVIDResponse', 'crl'),
    federatedBundles: decodeCertBundleMap(raw.federated_bundles, 'X509SVIDResponse', 'federated_bundles'),
  };
}

export function decodeX509Bundles(raw: RawX509BundlesResponse): X509Bundles {
  const bundles = decodeCertBundleMap(raw.bundles, 'X509BundlesResponse', 'bundles');
  if (bundles.size === 0) throw malformed('X509BundlesResponse', 'bundles', 'must hold at least the own trust domain');
  return { bundles, crls: parseCrls(raw.crl, 'X509BundlesResponse', 'crl') };
}

function decodeJwkSet(data: Buffer | undefined, field: string): JwkSet {
  const message = 'JWTBundlesResponse';
  let parsed: unknown;
  try {
    parsed = JSON.parse((data ?? Buffer.alloc(0)).toString('utf8'));
  } catch {
    throw malformed(message, field, 'is not JSON');
  }
  const keys = (parsed as { keys?: unknown } | null)?.keys;
  if (typeof parsed !== 'object' || parsed === null || !Array.isArray(keys)) {
    throw malformed(message, field, 'is not a JWK Set (no "keys" array)');
  }
  keys.forEach((k: unknown, i) => {
    const jwk = k as { kid?: unknown; kty?: unknown } | null;
    if (typeof jwk !== 'object' || jwk === null) throw malformed(message, `${field}.keys[${i}]`, 'is not an object');
    // go-spiffe rejects a whole set when one key lacks a kid: a JWT names its key by kid only.
    if (typeof jwk.kid !== 'string' || jwk.kid === '') throw malformed(message, `${field}.keys[${i}]`, 'has no "kid"');
    if (typeof jwk.kty !== 'string' || jwk.kty === '') throw malformed(message, `${field}.keys[${i}]`, 'has no "kty"');
  });
  return { keys: keys as JwkSet['keys'] };
}

export function decodeJwtBundles(raw: RawJwtBundlesResponse): JwtBundles {
  const out: JwtBundles = new Map();
  for (const [key, value] of Object.entries(raw.bundles ?? {})) {
    const td = trustDomainKey(key, 'JWTBundlesResponse', 'bundles');
    if (out.has(td)) throw malformed('JWTBundlesResponse', 'bundles', `trust domain ${td} appears twice`);
    out.set(td, decodeJwkSet(value, `bundles[${td}]`));
  }
  if (out.size === 0) throw malformed('JWTBundlesResponse', 'bundles', 'must hold at least the own trust domain');
  return out;
}

/** Reads the payload without checking the signature: only to learn exp and aud for caching. */
function unverifiedClaims(token: string, field: string): Record<string, unknown> {
  const parts = token.split('.');
  if (parts.length !== 3 || parts.some((p) => p === '')) {
    throw malformed('JWTSVIDResponse', field, 'is not a JWS compact serialization');
  }
  let payload: unknown;
  try {
    payload = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8'));
  } catch {
    throw malformed('JWTSVIDResponse', field, 'payload is not base64url JSON');
  }
  if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) {
    throw malformed('JWTSVIDResponse', field, 'payload is not a JSON object');
  }
  return payload as Record<string, unknown>;
}

function decodeJwtSvid(raw: RawJwtSvid, i: number): JwtSvid {
  const field = `svids[${i}]`;
  let spiffeId: string;
  try {
    spiffeId = SpiffeId.parse(raw.spiffe_id ?? '').toString();
  } catch (err) {
    throw malformed('JWTSVIDResponse', `${field}.spiffe_id`, detailOf(err));
  }
  const token = raw.svid ?? '';
  const claims = unverifiedClaims(token, `${field}.svid`);
  if (claims.sub !== spiffeId) throw malformed('JWTSVIDResponse', `${field}.svid`, `sub claim must equal ${spiffeId}`);
  if (typeof claims.exp !== 'number' || !Number.isFinite(claims.exp)) {
    throw malformed('JWTSVIDResponse', `${field}.svid`, 'exp claim must be a number');
  }
  const aud = typeof claims.aud === 'string' ? [claims.aud] : claims.aud;
  if (!Array.isArray(aud) || aud.length === 0 || !aud.every((a) => typeof a === 'string')) {
    throw malformed('JWTSVIDResponse', `${field}.svid`, 'aud claim must be a string or a list of strings');
  }
  return {
    spiffeId,
    token: new Secret(token),
    hint: raw.hint ?? '',
    expiresAt: claims.exp * 1000,
    audience: aud as string[],
  };
}

export function decodeJwtSvids(raw: RawJwtSvidResponse): JwtSvid[] {
  const svids = (raw.svids ?? []).map(decodeJwtSvid);
  if (svids.length === 0) throw malformed('JWTSVIDResponse', 'svids', 'must hold at least one SVID');
  return svids;
}

function structValue(v: RawStructValue | undefined): unknown {
  if (!v) return null;
  const kind = v.kind ?? Object.keys(v).find((k) => k !== 'kind' && (v as Record<string, unknown>)[k] !== undefined);
  switch (kind) {
    case 'numberValue':
    case 'number_value':
      return v.numberValue ?? v.number_value ?? 0;
    case 'stringValue':
    case 'string_value':
      return v.stringValue ?? v.string_value ?? '';
    case 'boolValue':
    case 'bool_value':
      return v.boolValue ?? v.bool_value ?? false;
    case 'structValue':
    case 'struct_value':
      return structToJson(v.structValue ?? v.struct_value);
    case 'listValue':
    case 'list_value':
      return ((v.listValue ?? v.list_value)?.values ?? []).map(structValue);
    default:
      return null;
  }
}

/** google.protobuf.Struct -> plain JSON object. */
export function structToJson(s: RawStruct | null | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(s?.fields ?? {})) out[k] = structValue(v);
  return out;
}

export function decodeValidateResponse(raw: RawValidateJwtSvidResponse): ValidatedJwtSvid {
  let spiffeId: string;
  try {
    spiffeId = SpiffeId.parse(raw.spiffe_id ?? '').toString();
  } catch (err) {
    throw malformed('ValidateJWTSVIDResponse', 'spiffe_id', detailOf(err));
  }
  return { spiffeId, claims: structToJson(raw.claims) };
}
