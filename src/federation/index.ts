export {
  FEDERATION_LIMITS,
  Federation,
  type BundleSource,
  type FederationDeps,
  type FederationRelationship,
  type FederationStatus,
} from './federation.js';
export { httpsFetch, type BundleFetcher, type FetchRequest } from './fetch.js';
