/**
 * agentid/verify: SPIFFE X.509-SVID and JWT-SVID verification, bundles, CRL enforcement,
 * authorizers and Node TLS helpers. Depends only on agentid's spiffe/ and common/ modules.
 */
export {
  BundleSet,
  JwtBundle,
  X509Bundle,
  parseSpiffeBundle,
  publicJwk,
  toSpiffeBundleDocument,
  type JwtAuthority,
  type JwtBundleSource,
  type SpiffeBundle,
  type SpiffeBundleDocumentInput,
  type X509BundleSource,
} from './bundle.js';
export { Certificate } from './certificate.js';
export { splitDer, toPem, pemBlocks } from './der.js';
export { VerificationError, isVerificationError, type VerificationReason } from './errors.js';
export { verifyX509Svid, type VerifiedX509Svid, type X509VerifyOptions } from './x509.js';
export { RevocationChecker } from './revocation.js';
export {
  JWT_SVID_ALGORITHMS,
  MAX_JWT_BYTES,
  verifyJwtSvid,
  VerifiedSignatures,
  type JwtSvidAlgorithm,
  type JwtVerifyOptions,
  type VerifiedJwtSvid,
} from './jwt.js';
export {
  allOf,
  anyOf,
  authorizeAny,
  authorizeId,
  authorizeMemberOf,
  authorizeOneOf,
  authorizePathPrefix,
  authorizeTaskOf,
  not,
  type AuthorizeResult,
  type Authorizer,
} from './authorize.js';
export {
  clientTlsOptions,
  peerChainDer,
  peerIdentity,
  serverTlsOptions,
  type SpiffeClientTls,
  type SpiffeServerTls,
  type SpiffeTlsConfig,
  type X509SvidSource,
} from './tls.js';
