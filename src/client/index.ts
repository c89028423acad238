export { ENDPOINT_SOCKET_ENV, parseEndpointAddress, resolveEndpointAddress, type EndpointAddress } from './address.js';
export { splitDer, toPem } from './der.js';
export { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from './follow.js';
export {
  BundleSource,
  JwtSource,
  X509Source,
  type BundleSourceOptions,
  type BundleUpdate,
  type JwtSourceOptions,
  type SourceEvents,
  type SourceOptions,
  type X509SourceOptions,
} from './sources.js';
export type {
  JwkSet,
  JwtBundles,
  JwtSvid,
  JwtSvidParams,
  ValidatedJwtSvid,
  X509Bundles,
  X509Context,
  X509Svid,
} from './types.js';
export {
  fromGrpcError,
  SECURITY_HEADER,
  WorkloadApiClient,
  WorkloadApiError,
  type CallOptions,
  type WorkloadApiClientOptions,
  type WorkloadMethod,
} from './workload-client.js';
