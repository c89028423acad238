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

/** Another server's published trust material, decoded. */
export interface PeerAuthority {
  x509Authorities: Buffer[];
  jwtKeys: object[];
  crls: Buffer[];
}

function dedupe(items: Buffer[]): Buffer[] {
  const seen = new Set<string>();
  return items.filter((b) => {
    const key = b.toString('base64');
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

export const NO_FEDERATION: FederatedBundles = { x509: () => undefined, jwt: () => undefined, version: () => 0 };

/**
 * Bundles and CRLs as streams deliver them. CRLs are re-signed when revocations change (and before
 * they go stale), off the request path; bundles and the JWT key set are built once per change.
 * Each kind has its own version, so a revocation does not make JWT-bundle streams re-send, and a
 * CRL rebuilt for a revocation that put no new serial on it (a JWT-only or never-issued identity)
 * keeps its version: streams re-send a CRL only when it says something new.
 *
 * With several servers on one datastore, every server's published trust material (its roots, JWT
 * public keys and CRLs, see AuthorityRecord) joins this server's own, so each server delivers the
 * same bundle and an SVID minted by any of them verifies everywhere.
 */
export class TrustState implements TrustMaterial {
  private x509Version = 0;
  private jwtVersion = 0;
  private crlVersion = 0;
  private ownCrls: { crls: Buffer[]; revokedKey: string } | undefined;
  private crlCache: Buffer[] | undefined;
  private jwtCache: Buffer | undefined;
  private x509Cache: Buffer[] | undefined;
  private rebuilding: Promise<void> | undefined;
  private rebuildAgain = false;

  constructor(
    private readonly deps: {
      ca: TrustSourceCa;
      issuances: Pick<IssuanceStore, 'listRevokedUnexpired' | 'latestNotAfter'>;
      clock: Clock;
      federation?: FederatedBundles;
      revokedAt?: (spiffeId: string) => number | undefined;
      /** Trust material other servers of the trust domain published (never this server's own). */
      peers?: () => PeerAuthority[];
    },
  ) {}

  get trustDomainId(): string {
    return this.deps.ca.trustDomain.idString;
  }

  /**
   * The CA or the other servers' material changed: everything is rebuilt lazily, every version
   * grows. CRLs signed by a rotated CA need `rebuildCrls({ force: true })` as well.
   */
  invalidate(): void {
    this.x509Version++;
    this.jwtVersion++;
    this.crlVersion++;
    this.x509Cache = undefined;
    this.jwtCache = undefined;
    this.crlCache = undefined;
  }

  version(): number {
    return (this.x509Version + this.jwtVersion) * 1_000_003 + (this.deps.federation ?? NO_FEDERATION).version();
  }

  versions(): TrustVersions {
    return { x509: this.x509Version, jwt: this.jwtVersion, crl: this.crlVersion, federation: (this.deps.federation ?? NO_FEDERATION).version() };
  }

  /**
   * Re-signs this server's CRLs from the revoked serials still valid (a datastore read); the CRL
   * version grows only when the serials changed, or always with `force` (periodic re-signing, CA
   * rotation). Concurrent calls share one rebuild; a call made during one gets a fresh one after it.
   */
  rebuildCrls(options: { force?: boolean } = {}): Promise<void> {
    const force = options.force ?? false;
    if (this.rebuilding) {
      this.rebuildAgain = true;
      if (force) this.ownCrls = undefined;
      return this.rebuilding;
    }
    if (force) this.ownCrls = undefined;
    this.rebuilding = (async () => {
      try {
        do {
          this.rebuildAgain = false;
          const now = this.deps.clock.now();
          const revoked = (await this.deps.issuances.listRevokedUnexpired(now))
            .filter((r) => r.kind === 'x509')
            .map((r) => ({ serial: r.serial, issuerId: r.issuerId, revokedAt: this.deps.revokedAt?.(r.spiffeId) ?? now }));
          const revokedKey = revoked.map((r) => `${r.issuerId}/${r.serial}`).sort().join(',');
          if (this.ownCrls?.revokedKey !== revokedKey) {
            this.ownCrls = { crls: this.deps.ca.buildCrls(revoked), revokedKey };
            this.crlCache = undefined;
            this.crlVersion++;
          }
        } while (this.rebuildAgain);
      } finally {
        this.rebuilding = undefined;
      }
    })();
    return this.rebuilding;
  }

  /**
   * After revocations: a serial can join the CRLs only if one of the revoked identities holds an
   * issuance that has not expired yet, so otherwise nothing is re-read or re-signed. Ending a task
   * that never fetched an X.509-SVID (an admin's start/end pair, a task whose process exited
   * first) then costs one indexed lookup instead of a read of every revoked serial. Serials that
   * expired since the last build stay listed until the next rebuild (the periodic re-signing at the
   * latest), which is harmless.
   */
  async rebuildCrlsAfterRevoking(spiffeIds: readonly string[]): Promise<void> {
    const now = this.deps.clock.now();
    for (const spiffeId of spiffeIds) {
      const latest = await this.deps.issuances.latestNotAfter(spiffeId);
      if (latest !== undefined && latest > now) return this.rebuildCrls();
    }
  }

  ownX509Bundle(): Buffer[] {
    return (this.x509Cache ??= dedupe([...this.deps.ca.x509Bundle(), ...this.peers().flatMap((p) => p.x509Authorities)]));
  }

  ownJwtBundle(): Buffer {
    if (!this.jwtCache) {
      const keys: object[] = [...this.deps.ca.jwtKeys()];
      const kids = new Set(keys.map((k) => (k as { kid?: string }).kid));
      for (const key of this.peers().flatMap((p) => p.jwtKeys)) {
        const kid = (key as { kid?: string }).kid;
        if (!kids.has(kid)) {
          kids.add(kid);
          keys.push(key);
        }
      }
      this.jwtCache = Buffer.from(JSON.stringify({ keys }));
    }
    return this.jwtCache;
  }

  /** This server's CRLs only (what it publishes for the other servers). */
  ownCrlsOnly(): Buffer[] {
    return (this.ownCrls ??= { crls: this.deps.ca.buildCrls([]), revokedKey: '' }).crls;
  }

  crls(): Buffer[] {
    return (this.crlCache ??= dedupe([...this.ownCrlsOnly(), ...this.peers().flatMap((p) => p.crls)]));
  }

  private peers(): PeerAuthority[] {
    return this.deps.peers?.() ?? [];
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
