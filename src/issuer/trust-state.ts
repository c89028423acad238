import type { Clock } from '../common/clock.js';
import type { IssuanceStore } from '../datastore/types.js';
import type { TrustMaterial } from './trust.js';

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
 * (revocation, CA rotation), not per stream message.
 */
export class TrustState implements TrustMaterial {
  private own = 0;
  private crlCache: Buffer[] | undefined;
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

  /** Something changed (CA rotation, revocation, CRL refresh): rebuild lazily, bump the version. */
  invalidate(): void {
    this.own++;
    this.crlCache = undefined;
    this.jwtCache = undefined;
    this.x509Cache = undefined;
  }

  version(): number {
    return this.own * 1_000_003 + (this.deps.federation ?? NO_FEDERATION).version();
  }

  ownX509Bundle(): Buffer[] {
    return (this.x509Cache ??= this.deps.ca.x509Bundle());
  }

  ownJwtBundle(): Buffer {
    return (this.jwtCache ??= Buffer.from(JSON.stringify({ keys: this.deps.ca.jwtKeys() })));
  }

  crls(): Buffer[] {
    if (!this.crlCache) {
      const now = this.deps.clock.now();
      const revoked = this.deps.issuances
        .listRevokedUnexpired(now)
        .filter((r) => r.kind === 'x509')
        .map((r) => ({ serial: r.serial, issuerId: r.issuerId, revokedAt: this.deps.revokedAt?.(r.spiffeId) ?? now }));
      this.crlCache = this.deps.ca.buildCrls(revoked);
    }
    return this.crlCache;
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
