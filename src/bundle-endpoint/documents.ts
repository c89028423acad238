import { invalidArgument } from '../common/errors.js';
import type { TrustDomain } from '../spiffe/spiffe-id.js';
import { JwtBundle, X509Bundle, publicJwk, toSpiffeBundleDocument } from '../verify/bundle.js';

/** What the endpoint reads on every request; the composition root backs it with the CA and TrustState. */
export interface BundleTrustSource {
  /** DER CA certificates of the own trust domain. */
  x509Authorities(): Buffer[];
  /** Public JWT keys (JWK objects, each with kid), as CertificateAuthority.jwtKeys() returns them. */
  jwtKeys(): object[];
  /** spiffe_sequence: a non-negative integer that grows whenever either list above changes. */
  sequence(): number;
  /** Current DER CRLs, one per signing CA. */
  crls(): Buffer[];
}

/**
 * spiffe_sequence from the CA's two persisted versions: both only grow, so their sum grows with
 * every change of either list. One definition for the endpoint and `agentid bundle show`.
 */
export const bundleSequence = (ca: { x509BundleVersion(): number; jwtKeysVersion(): number }) => ca.x509BundleVersion() + ca.jwtKeysVersion();

const ALG_BY_CURVE: Record<string, string> = { 'P-256': 'ES256', 'P-384': 'ES384', 'P-521': 'ES512' };

/** Whole seconds, at least one: a zero refresh hint would tell consumers to poll in a loop. */
export function refreshHintSeconds(refreshHintMs: number): number {
  if (!Number.isFinite(refreshHintMs) || refreshHintMs <= 0) {
    throw invalidArgument('bundle endpoint: refresh hint must be a positive duration');
  }
  return Math.max(1, Math.round(refreshHintMs / 1000));
}

/**
 * The OIDC issuer. OIDC Discovery 1.0 section 3 requires https with no query or fragment. The
 * discovery document repeats `issuer` verbatim (relying parties compare it byte for byte with the
 * tokens' `iss`); `base` has any trailing "/" removed, as section 4 does before appending the
 * well-known path, and `pathPrefix` is its path, under which discovery and keys are served.
 */
export function parseIssuer(issuer: string): { issuer: string; base: string; pathPrefix: string } {
  let url: URL;
  try {
    url = new URL(issuer);
  } catch (err) {
    throw invalidArgument(`bundle endpoint: JWT issuer ${JSON.stringify(issuer)} is not a URL`, err);
  }
  if (url.protocol !== 'https:') throw invalidArgument('bundle endpoint: JWT issuer must be an https URL (OIDC Discovery 3)');
  if (url.search !== '' || url.hash !== '' || issuer.includes('?') || issuer.includes('#')) {
    throw invalidArgument('bundle endpoint: JWT issuer must not have a query or fragment (OIDC Discovery 3)');
  }
  if (url.username !== '' || url.password !== '') throw invalidArgument('bundle endpoint: JWT issuer must not carry userinfo');
  return { issuer, base: issuer.replace(/\/+$/, ''), pathPrefix: url.pathname.replace(/\/+$/, '') };
}

export interface Documents {
  /** SPIFFE bundle document (SPIFFE Trust Domain and Bundle spec 4). */
  bundle: string;
  /** OIDC JWK set: JWT keys only, with use "sig" and alg, as OIDC relying parties expect. */
  keys: string;
  /** OIDC discovery document. */
  openidConfiguration: string;
}

/**
 * Builds the JSON documents from the trust source. The JWT keys go through JwtBundle.fromJwkSet,
 * which refuses private members, and are re-exported from the imported public key, so a JWK
 * object carrying "d" can never reach the wire.
 */
export function buildDocuments(input: {
  trustDomain: TrustDomain;
  x509Authorities: Buffer[];
  jwtKeys: object[];
  sequence: number;
  refreshHintSeconds: number;
  issuer: { issuer: string; base: string };
}): Documents {
  const x509 = X509Bundle.fromDer(input.trustDomain, input.x509Authorities);
  const jwt = JwtBundle.fromJwkSet(input.trustDomain, { keys: input.jwtKeys });
  const bundle = toSpiffeBundleDocument({ x509, jwt, sequence: input.sequence, refreshHintSeconds: input.refreshHintSeconds });

  const algs = new Set<string>();
  const oidcKeys = [...jwt.authorities.values()].map((a) => {
    const jwk: Record<string, unknown> = { ...publicJwk(a.key), kid: a.kid, use: 'sig' };
    const alg = jwk.kty === 'EC' ? ALG_BY_CURVE[String(jwk.crv)] : undefined;
    if (alg) {
      jwk.alg = alg;
      algs.add(alg);
    }
    return jwk;
  });
  const openidConfiguration = {
    issuer: input.issuer.issuer,
    jwks_uri: `${input.issuer.base}/keys`,
    response_types_supported: ['id_token'],
    subject_types_supported: ['public'],
    // The field is REQUIRED and non-empty; ES256 is what agentid's JWT keys sign with by default.
    id_token_signing_alg_values_supported: algs.size > 0 ? [...algs].sort() : ['ES256'],
  };
  return { bundle, keys: JSON.stringify({ keys: oidcKeys }), openidConfiguration: JSON.stringify(openidConfiguration) };
}

/** `{ "crls": [<standard base64 DER>, ...] }`, in the order of trust.crls(). */
export function crlListDocument(crls: readonly Buffer[]): string {
  return JSON.stringify({ crls: crls.map((c) => c.toString('base64')) });
}
