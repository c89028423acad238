export { startBundleEndpoint, type BundleEndpoint, type BundleEndpointDeps } from './server.js';
export { buildDocuments, bundleSequence, crlListDocument, parseIssuer, refreshHintSeconds, type BundleTrustSource, type Documents } from './documents.js';
