import type { TrustDomain } from '../spiffe/spiffe-id.js';
import type { Clock } from '../common/clock.js';
import { BundleSet, JwtBundle, VerifiedSignatures, verifyJwtSvid } from '../verify/index.js';
import type { TrustMaterial } from './trust.js';

/**
 * ValidateJWTSVID: verifies a token against the own trust domain's JWT keys (every server's, see
 * TrustState) or, for a federated trust domain, that domain's keys only, and refuses revoked IDs.
 * The parsed key sets are rebuilt when the trust version changes, not per call. Tokens whose
 * signature verified are remembered with the key set they verified against and forgotten with it
 * (a service validating the same bearer token on every request pays for one signature check);
 * every other rule (audience, expiry, revocation) is checked on every call.
 */
export class JwtValidator {
  private parsed: { version: number; set: BundleSet; verified: VerifiedSignatures } | undefined;

  constructor(
    private readonly deps: {
      trustDomain: TrustDomain;
      trust: TrustMaterial;
      federation: { jwt(trustDomain: string): Buffer | undefined };
      federatedTrustDomains: readonly string[];
      isRevoked: (spiffeId: string) => boolean;
      clock: Clock;
    },
  ) {}

  validate(token: string, audience: string): { spiffeId: string; claims: Record<string, unknown> } {
    const { set, verified } = this.bundles();
    const result = verifyJwtSvid(token, set, {
      audience,
      now: this.deps.clock.now(),
      revoked: (id: string) => this.deps.isRevoked(id),
      verifiedSignatures: verified,
    });
    return { spiffeId: result.spiffeId.toString(), claims: result.claims as Record<string, unknown> };
  }

  private bundles(): { set: BundleSet; verified: VerifiedSignatures } {
    const { trust, trustDomain, federation } = this.deps;
    if (this.parsed?.version !== trust.version()) {
      const set = new BundleSet();
      set.add(JwtBundle.fromJwkSet(trustDomain, trust.ownJwtBundle()));
      for (const td of this.deps.federatedTrustDomains) {
        const jwks = federation.jwt(td);
        if (jwks) set.add(JwtBundle.fromJwkSet(td, jwks));
      }
      this.parsed = { version: trust.version(), set, verified: new VerifiedSignatures() };
    }
    return this.parsed;
  }
}
