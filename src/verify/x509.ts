import { isAgentIdError } from '../common/errors.js';
import { SpiffeId, TrustDomain } from '../spiffe/spiffe-id.js';
import { X509Bundle, type X509BundleSource } from './bundle.js';
import { Certificate, KeyUsageFlags, UNDERSTOOD_CRITICAL_EXTENSIONS } from './certificate.js';
import { refuse, VerificationError } from './errors.js';
import type { RevocationChecker } from './revocation.js';

export interface X509VerifyOptions {
  /** Milliseconds since the epoch; validity bounds are inclusive (RFC 5280 4.1.2.5). */
  now: number;
  /** When given, every certificate on the path below the anchor is checked against its issuer's CRLs. */
  crls?: RevocationChecker;
  /** Longest accepted presented chain, leaf included (default 8). */
  maxChainLength?: number;
}

export interface VerifiedX509Svid {
  readonly spiffeId: SpiffeId;
  readonly leaf: Certificate;
  /** The verified path: leaf, intermediates, then the bundle authority it chains to. */
  readonly chain: readonly Certificate[];
}

const DEFAULT_MAX_CHAIN = 8;

/**
 * Verifies an X.509-SVID chain (DER, leaf first) against the bundle of the leaf's own trust
 * domain, checking every rule itself: the SPIFFE leaf rules (X509-SVID spec 4, 5), CA flags
 * and key usage on the path, signatures link by link, validity of every certificate at `now`,
 * path length constraints, unknown critical extensions and revocation.
 * Throws VerificationError (code permission_denied) with a stable `reason`.
 */
export function verifyX509Svid(
  chainDer: readonly Uint8Array[],
  bundles: X509BundleSource | X509Bundle,
  opts: X509VerifyOptions,
): VerifiedX509Svid {
  const max = opts.maxChainLength ?? DEFAULT_MAX_CHAIN;
  if (chainDer.length === 0) throw refuse('malformed', 'X.509-SVID: the chain is empty');
  if (chainDer.length > max) throw refuse('malformed', `X.509-SVID: chain of ${chainDer.length} certificates exceeds the limit of ${max}`);
  const presented = chainDer.map((der, i) => {
    try {
      return new Certificate(der);
    } catch (err) {
      throw refuse('malformed', `X.509-SVID: certificate ${i} of the chain cannot be parsed`, err);
    }
  });
  const leaf = presented[0]!;
  const spiffeId = checkLeaf(leaf);

  const bundle = selectBundle(bundles, spiffeId.trustDomain);
  const path = buildPath(presented, bundle);
  const anchor = path[path.length - 1]!;

  for (let i = 1; i < path.length; i++) checkSigningCertificate(path[i]!, i === path.length - 1 ? 'trust anchor' : 'intermediate');
  checkPathLength(path);
  for (const cert of path) {
    const unknown = cert.criticalExtensions.filter((oid) => !UNDERSTOOD_CRITICAL_EXTENSIONS.has(oid));
    if (unknown.length > 0) {
      throw refuse('unknown_critical_extension', `X.509-SVID: ${role(cert, leaf, anchor)} has unsupported critical extension ${unknown.join(', ')}`);
    }
  }
  for (const cert of path) checkValidity(cert, opts.now, role(cert, leaf, anchor));

  const verified = { spiffeId, leaf, chain: path };
  if (opts.crls) checkPathRevocation(verified, opts.crls);
  return verified;
}

/**
 * The revocation step of verifyX509Svid alone: every certificate on a verified path below the
 * anchor against its issuer's CRLs. A path that verified under other CRLs (same bundle, same
 * moment) verifies under `crls` exactly when this passes; throws VerificationError `revoked`.
 */
export function checkPathRevocation(verified: VerifiedX509Svid, crls: RevocationChecker): void {
  const { chain: path, leaf, spiffeId } = verified;
  const anchor = path[path.length - 1]!;
  for (let i = 0; i < path.length - 1; i++) {
    const cert = path[i]!;
    if (crls.isRevoked(path[i + 1]!, cert.serial, spiffeId.trustDomain)) {
      throw refuse('revoked', `X.509-SVID: ${role(cert, leaf, anchor)} serial ${cert.serial} is revoked by its issuer's CRL`);
    }
  }
}

function role(cert: Certificate, leaf: Certificate, anchor: Certificate): string {
  if (cert === leaf) return 'leaf';
  if (cert === anchor) return `trust anchor "${cert.describe()}"`;
  return `intermediate "${cert.describe()}"`;
}

function checkLeaf(leaf: Certificate): SpiffeId {
  if (leaf.uriSans.length === 0) throw refuse('no_uri_san', 'X.509-SVID: the leaf must have exactly one URI SAN, it has none');
  if (leaf.uriSans.length > 1) {
    throw refuse('two_uri_sans', `X.509-SVID: the leaf must have exactly one URI SAN, it has ${leaf.uriSans.length}`);
  }
  let id: SpiffeId;
  try {
    id = SpiffeId.parse(leaf.uriSans[0]!);
  } catch (err) {
    const detail = isAgentIdError(err) ? err.message : 'invalid';
    throw refuse('bad_spiffe_id', `X.509-SVID: the leaf's URI SAN is not a valid SPIFFE ID (${detail})`, err);
  }
  if (leaf.isCa) throw refuse('leaf_is_ca', `X.509-SVID ${id}: the leaf must have basicConstraints CA=false`);
  if (!leaf.hasKeyUsage(KeyUsageFlags.digitalSignature)) {
    throw refuse('bad_key_usage', `X.509-SVID ${id}: the leaf's keyUsage must include digitalSignature`);
  }
  if (leaf.hasKeyUsage(KeyUsageFlags.keyCertSign) || leaf.hasKeyUsage(KeyUsageFlags.cRLSign)) {
    throw refuse('bad_key_usage', `X.509-SVID ${id}: the leaf's keyUsage must not include keyCertSign or cRLSign`);
  }
  return id;
}

function selectBundle(bundles: X509BundleSource | X509Bundle, td: TrustDomain): X509Bundle {
  if (bundles instanceof X509Bundle) {
    if (!bundles.trustDomain.equals(td)) {
      throw refuse('wrong_trust_domain', `X.509-SVID: the SVID is in trust domain ${td.name} but the bundle is for ${bundles.trustDomain.name}`);
    }
    return bundles;
  }
  const bundle = bundles.getX509Bundle(td);
  if (!bundle) throw refuse('no_bundle', `X.509-SVID: no X.509 bundle for trust domain ${td.name}`);
  if (!bundle.trustDomain.equals(td)) {
    throw refuse('wrong_trust_domain', `X.509-SVID: the bundle source returned trust domain ${bundle.trustDomain.name} for ${td.name}`);
  }
  if (bundle.authorities.length === 0) throw refuse('no_bundle', `X.509-SVID: the X.509 bundle for ${td.name} is empty`);
  return bundle;
}

/**
 * Walks the presented chain in order from the leaf, stopping at the first certificate that an
 * authority of the bundle verifiably signed. Each presented link must be named and signed by the
 * next certificate. Certificates after the anchor point (a root sent along) are not used.
 */
function buildPath(presented: readonly Certificate[], bundle: X509Bundle): Certificate[] {
  const path: Certificate[] = [presented[0]!];
  for (let i = 0; ; i++) {
    const current = path[path.length - 1]!;
    const anchor = bundle.authorities.find((a) => current.issuedBy(a) && current.signedBy(a));
    if (anchor) {
      // A presented copy of the anchor itself ends the path there; the bundle's copy is the one trusted.
      const last = path.length > 1 && path[path.length - 1]!.equals(anchor) ? path.length - 1 : path.length;
      return [...path.slice(0, last), anchor];
    }
    const next = presented[i + 1];
    if (!next) {
      throw refuse('untrusted', `X.509-SVID: the chain does not lead to an authority of the ${bundle.trustDomain.name} bundle`);
    }
    if (!current.issuedBy(next)) {
      throw refuse('untrusted', `X.509-SVID: certificate ${i + 1} of the chain did not issue certificate ${i} (names or key identifiers differ)`);
    }
    if (!current.signedBy(next)) {
      throw refuse('bad_signature', `X.509-SVID: the signature on certificate ${i} does not verify with certificate ${i + 1}'s key`);
    }
    path.push(next);
  }
}

function checkSigningCertificate(cert: Certificate, what: string): void {
  if (!cert.isCa) throw refuse('not_ca', `X.509-SVID: ${what} "${cert.describe()}" must have basicConstraints CA=true`);
  if (!cert.hasKeyUsage(KeyUsageFlags.keyCertSign)) {
    throw refuse('bad_key_usage', `X.509-SVID: ${what} "${cert.describe()}" must have keyUsage keyCertSign`);
  }
}

/** RFC 5280 6.1.4 (l), (m): pathLenConstraint counts the non-self-issued intermediates below a CA. */
function checkPathLength(path: readonly Certificate[]): void {
  let below = 0;
  for (let i = 1; i < path.length; i++) {
    const ca = path[i]!;
    const limit = ca.basicConstraints?.pathLength;
    if (limit !== undefined && below > limit) {
      throw refuse('path_len_exceeded', `X.509-SVID: "${ca.describe()}" allows ${limit} intermediate(s) below it, the path has ${below}`);
    }
    if (!ca.selfIssued) below++;
  }
}

function checkValidity(cert: Certificate, now: number, what: string): void {
  if (now < cert.notBefore) {
    throw refuse('not_yet_valid', `X.509-SVID: ${what} is not valid before ${new Date(cert.notBefore).toISOString()}`);
  }
  if (now > cert.notAfter) {
    throw refuse('expired', `X.509-SVID: ${what} expired at ${new Date(cert.notAfter).toISOString()}`);
  }
}

export { VerificationError };
