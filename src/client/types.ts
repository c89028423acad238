import type { JsonWebKey } from 'node:crypto';
import type { Secret } from '../common/secret.js';

/** One X.509-SVID as delivered by FetchX509SVID, decoded and checked for internal consistency. */
export interface X509Svid {
  /** The SVID's SPIFFE ID; equals the leaf certificate's only URI SAN. */
  readonly spiffeId: string;
  /** DER certificates, leaf first, then intermediates. */
  readonly chainDer: Buffer[];
  /** Unencrypted PKCS#8 DER private key of the leaf. */
  readonly keyPkcs8Der: Secret<Buffer>;
  /** DER CA certificates of the SVID's own trust domain. */
  readonly bundleDer: Buffer[];
  /** Operator hint ("" when unset). */
  readonly hint: string;
  /** Leaf notAfter, milliseconds since the epoch. */
  readonly notAfter: number;
}

export interface X509Context {
  /** Order as sent; svids[0] is the default identity (Workload API §8). */
  readonly svids: X509Svid[];
  /** DER CRLs. */
  readonly crls: Buffer[];
  /** Foreign trust domains only, keyed "spiffe://<td>"; values are DER CA certificates. */
  readonly federatedBundles: Map<string, Buffer[]>;
}

/** FetchX509Bundles: every trust domain the workload may trust, its own included. */
export interface X509Bundles {
  /** Keyed "spiffe://<td>"; values are DER CA certificates. */
  readonly bundles: Map<string, Buffer[]>;
  readonly crls: Buffer[];
}

/** An RFC 7517 JWK Set as carried by FetchJWTBundles; every key has a kid and a kty. */
export interface JwkSet {
  readonly keys: (JsonWebKey & { kid: string; kty: string })[];
}

/** FetchJWTBundles: keyed "spiffe://<td>". */
export type JwtBundles = Map<string, JwkSet>;

export interface JwtSvid {
  readonly spiffeId: string;
  /** The JWS compact token; wrapped so it never lands in a log by accident. */
  readonly token: Secret<string>;
  readonly hint: string;
  /** The token's exp claim, milliseconds since the epoch. */
  readonly expiresAt: number;
  /** The token's aud claim, always as a list. */
  readonly audience: string[];
}

export interface JwtSvidParams {
  /** At least one audience; each one goes into the aud claim. */
  audience: string[];
  /** Ask for this identity only; otherwise the server returns every entitled one. */
  spiffeId?: string;
}

export interface ValidatedJwtSvid {
  readonly spiffeId: string;
  /** The token's claims as the server decoded them (JSON numbers arrive as doubles). */
  readonly claims: Record<string, unknown>;
}
