export { startBundleEndpoint, type BundleEndpoint, type BundleEndpointDeps } from './server.js';
export { buildDocuments, crlListDocument, parseIssuer, refreshHintSeconds, type BundleTrustSource, type Documents } from './documents.js';
