import { EventEmitter } from 'node:events';
import type { Clock } from '../common/clock.js';
import type { Secret } from '../common/secret.js';
import type { SpiffeId } from '../spiffe/spiffe-id.js';
import type { MintedX509, SvidMinter } from './svid-cache.js';
import type { TrustMaterial } from './trust.js';
import { renewalTime } from './renewal.js';

/**
 * agentid's own X.509-SVID (spiffe://<td>/agentid/server), for the TLS listeners it serves itself
 * (bundle endpoint with the https_spiffe profile, mTLS admin API). Shaped like a Workload API
 * X509Source so the verify/ TLS helpers take it as is; renewed at half-life by the scheduler.
 */
export class ServerSvidSource extends EventEmitter {
  private current: MintedX509;
  private renewAt: number;

  constructor(
    private readonly deps: {
      spiffeId: SpiffeId;
      ttlMs: number;
      minter: Pick<SvidMinter, 'mintX509Svid'>;
      trust: TrustMaterial;
      clock: Clock;
      random?: () => number;
    },
  ) {
    super();
    this.current = this.mint();
    this.renewAt = this.nextRenewal();
  }

  getX509Svid(): { chainDer: Buffer[]; keyPkcs8Der: Secret<Buffer>; spiffeId: string; notAfter: number } {
    return { chainDer: this.current.chainDer, keyPkcs8Der: this.current.privateKeyPkcs8, spiffeId: this.current.spiffeId, notAfter: this.current.notAfter };
  }

  getBundles(): Map<string, Buffer[]> {
    return new Map([[this.deps.trust.trustDomainId, this.deps.trust.ownX509Bundle()]]);
  }

  getCrls(): Buffer[] {
    return this.deps.trust.crls();
  }

  /** Re-mints when due (or when forced, after a CA rotation); returns the next renewal time. */
  renew(force = false): number {
    if (force || this.deps.clock.now() >= this.renewAt) {
      this.current = this.mint();
      this.renewAt = this.nextRenewal();
      this.emit('update');
    }
    return this.renewAt;
  }

  /** Trust material changed (CRLs, bundle): listeners reload. */
  trustChanged(): void {
    this.emit('update');
  }

  private mint(): MintedX509 {
    return this.deps.minter.mintX509Svid({ spiffeId: this.deps.spiffeId, ttlMs: this.deps.ttlMs });
  }

  private nextRenewal(): number {
    return renewalTime(this.current.notBefore, this.current.notAfter, (this.deps.random ?? Math.random)());
  }
}
