/**
 * The trust material streams carry besides SVIDs. Implemented by the composition root from the CA,
 * the revocation list and federation; the hub only reads it.
 */
export interface TrustMaterial {
  trustDomainId: string;
  /** DER CA certificates of the own trust domain. */
  ownX509Bundle(): Buffer[];
  /** JWK set JSON (JWT keys only, each with kid) of the own trust domain. */
  ownJwtBundle(): Buffer;
  /** Current DER CRLs of the own trust domain's signing CAs. */
  crls(): Buffer[];
  /** Foreign trust domains' bundles, by "spiffe://<td>" key, limited to the given trust domain names. */
  federatedX509(trustDomains: Iterable<string>): Map<string, Buffer[]>;
  federatedJwt(trustDomains: Iterable<string>): Map<string, Buffer>;
  /** Grows whenever a bundle (own or federated, X.509 or JWT) changes; CRLs are not counted. */
  version(): number;
  /** Per kind, each growing when its content changes, so a stream re-sends only what changed. */
  versions(): TrustVersions;
}

export interface TrustVersions {
  /** Own X.509 bundle. */
  x509: number;
  /** Own JWT key set. */
  jwt: number;
  crl: number;
  /** Any federated trust domain's bundle. */
  federation: number;
}
