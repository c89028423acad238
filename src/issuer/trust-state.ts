import type { Clock } from '../common/clock.js';
import type { IssuanceStore } from '../datastore/types.js';
import type { TrustMaterial, TrustVersions } from './trust.js';

/** The CA views trust material is built from (ca/authority.ts). */
export interface TrustSourceCa {
  trustDomain: { idString: string };
  x509Bundle(): Buffer[];
  jwtKeys(): object[];
  buildCrls(revoked: { serial: string; issuerId: string; revokedAt: number }[]): Buffer[];
}

/** Foreign trust domains' bundles (federation); empty when none is configured. */
export interface FederatedBundles {
  x509(trustDomain: string): Buffer[] | undefined;
  jwt(trustDomain: string): Buffer | undefined;
  version(): number;
}

export const NO_FEDERATION: FederatedBundles = { x509: () => undefined, jwt: () => undefined, version: () => 0 };

/**
 * Bundles and CRLs as streams deliver them. CRLs and the JWT key set are built once per change
 * (revocation, CA rotation), not per stream message. Each kind has its own version, so a revocation
 * does not make JWT-bundle streams re-send, and a CRL rebuilt for a revocation that put no new
 * serial on it (a JWT-only or never-issued identity) keeps its version: streams re-send a CRL only
 * when it says something new.
 */
export class TrustState implements TrustMaterial {
  private x509Version = 0;
  private jwtVersion = 0;
  private crlVersion = 0;
  private crlCache: { crls: Buffer[]; revokedKey: string } | undefined;
  /** The deny list changed: rebuild the CRLs only if their revoked serials changed. */
  private crlStale = false;
  private jwtCache: Buffer | undefined;
  private x509Cache: Buffer[] | undefined;

  constructor(
    private readonly deps: {
      ca: TrustSourceCa;
      issuances: Pick<IssuanceStore, 'listRevokedUnexpired'>;
      clock: Clock;
      federation?: FederatedBundles;
      revokedAt?: (spiffeId: string) => number | undefined;
    },
  ) {}

  get trustDomainId(): string {
    return this.deps.ca.trustDomain.idString;
  }

  /** The CA changed (rotation): everything is rebuilt lazily, every version grows. */
  invalidate(): void {
    this.x509Version++;
    this.jwtVersion++;
    this.x509Cache = undefined;
    this.jwtCache = undefined;
    this.refreshCrls();
  }

  /** CRLs are re-signed (before they go stale), even when no serial changed. */
  refreshCrls(): void {
    this.crlCache = undefined;
  }

  /** The deny list changed. */
  revocationsChanged(): void {
    this.crlStale = true;
  }

  version(): number {
    return (this.x509Version + this.jwtVersion) * 1_000_003 + (this.deps.federation ?? NO_FEDERATION).version();
  }

  versions(): TrustVersions {
    this.crls();
    return { x509: this.x509Version, jwt: this.jwtVersion, crl: this.crlVersion, federation: (this.deps.federation ?? NO_FEDERATION).version() };
  }

  ownX509Bundle(): Buffer[] {
    return (this.x509Cache ??= this.deps.ca.x509Bundle());
  }

  ownJwtBundle(): Buffer {
    return (this.jwtCache ??= Buffer.from(JSON.stringify({ keys: this.deps.ca.jwtKeys() })));
  }

  crls(): Buffer[] {
    if (!this.crlCache || this.crlStale) {
      this.crlStale = false;
      const now = this.deps.clock.now();
      const revoked = this.deps.issuances
        .listRevokedUnexpired(now)
        .filter((r) => r.kind === 'x509')
        .map((r) => ({ serial: r.serial, issuerId: r.issuerId, revokedAt: this.deps.revokedAt?.(r.spiffeId) ?? now }));
      const revokedKey = revoked.map((r) => `${r.issuerId}/${r.serial}`).sort().join(',');
      if (this.crlCache?.revokedKey !== revokedKey) {
        this.crlCache = { crls: this.deps.ca.buildCrls(revoked), revokedKey };
        this.crlVersion++;
      }
    }
    return this.crlCache.crls;
  }

  federatedX509(trustDomains: Iterable<string>): Map<string, Buffer[]> {
    const out = new Map<string, Buffer[]>();
    const fed = this.deps.federation ?? NO_FEDERATION;
    for (const td of [...trustDomains].sort()) {
      const certs = fed.x509(td);
      if (certs) out.set(`spiffe://${td}`, certs);
    }
    return out;
  }

  federatedJwt(trustDomains: Iterable<string>): Map<string, Buffer> {
    const out = new Map<string, Buffer>();
    const fed = this.deps.federation ?? NO_FEDERATION;
    for (const td of [...trustDomains].sort()) {
      const set = fed.jwt(td);
      if (set) out.set(`spiffe://${td}`, set);
    }
    return out;
  }
}
