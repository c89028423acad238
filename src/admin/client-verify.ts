import type { Clock } from '../common/clock.js';
import { parseTaskSpiffeId, type TrustDomain } from '../spiffe/spiffe-id.js';
import { BundleSet, X509Bundle } from '../verify/bundle.js';
import { refuse, VerificationError } from '../verify/errors.js';
import { RevocationChecker } from '../verify/revocation.js';
import type { X509SvidSource } from '../verify/tls.js';
import { checkPathRevocation, verifyX509Svid, type VerifiedX509Svid } from '../verify/x509.js';
import { actorForSpiffeId, type SpiffeRole } from './roles.js';
import type { AdminCaller } from './service.js';

/**
 * Verifies a client certificate chain presented over TLS (the mTLS admin listener, the web
 * console) as an X.509-SVID of our own trust domain, with the bundle and CRLs of this moment,
 * and maps its SPIFFE ID to an admin role. Shared so every TLS edge judges callers the same way.
 */
export interface ClientSvidVerifier {
  /** Throws a VerificationError when the chain is not a valid SVID of our trust domain now. */
  verify(chain: Buffer[]): VerifiedX509Svid;
  /**
   * The role the chain's SPIFFE ID holds, or who it is and why it holds none. `verifiedAs`: the
   * SPIFFE ID the chain had when it last verified (a connection's handshake), to name it by.
   */
  callerForChain(chain: Buffer[], verifiedAs?: string): AdminCaller;
  /** Full chain verifications done (parse, path, signatures); the rest were answered from memory. For tests and metrics. */
  readonly stats: { readonly fullChecks: number };
}

interface Trust {
  bundleDer: readonly Buffer[];
  crlDer: readonly Buffer[];
  bundles: BundleSet;
  crls: RevocationChecker;
}

const sameDerList = (a: readonly Buffer[], b: readonly Buffer[]) =>
  a === b || (a.length === b.length && a.every((d, i) => d.equals(b[i]!)));

/** Our trust domain's authorities only: nothing federated may authenticate an admin caller. */
function ownBundleDer(source: X509SvidSource, trustDomain: TrustDomain): readonly Buffer[] {
  const raw = source.getBundles();
  if (raw instanceof BundleSet) return raw.getX509Bundle(trustDomain)?.authoritiesDer ?? [];
  return raw.get(trustDomain.idString) ?? [];
}

export function clientSvidVerifier(opts: {
  /** agentid's own SVID source: our trust domain's bundle. */
  source: X509SvidSource;
  trustDomain: TrustDomain;
  roles: readonly SpiffeRole[];
  /** Current DER CRLs of our signing CAs. Default: source.getCrls(). */
  crls?: () => readonly Buffer[];
  clock: Clock;
}): ClientSvidVerifier {
  const { source, trustDomain, roles, clock } = opts;
  const crlsOf = opts.crls ?? (() => source.getCrls?.() ?? []);
  let trust: Trust | undefined;
  /** Bundle and CRL checker of this moment, rebuilt only when their DER changed. */
  const currentTrust = (): Trust => {
    const bundleDer = ownBundleDer(source, trustDomain);
    const crlDer = crlsOf();
    if (!trust || !sameDerList(trust.bundleDer, bundleDer)) {
      if (bundleDer.length === 0) throw refuse('no_bundle', `client SVID: no X.509 bundle for trust domain ${trustDomain.name}`);
      trust = {
        bundleDer,
        crlDer,
        bundles: new BundleSet([X509Bundle.fromDer(trustDomain, bundleDer)]),
        crls: new RevocationChecker({ crls: crlDer }),
      };
    } else if (!sameDerList(trust.crlDer, crlDer)) {
      trust = { ...trust, crlDer, crls: new RevocationChecker({ crls: crlDer }) };
    }
    return trust;
  };

  /**
   * The last successful verification of each presented chain (a connection keeps its chain array).
   * A node's Sync stream re-checks its caller on every change it delivers, so with many agents a
   * full parse and signature check per stream per change dominated the server. The outcome is a
   * pure function of the chain, the trust (replaced whenever the bundle or CRL DER changes) and the
   * time, which matters only through the validity windows of the verified path: within the
   * window of every certificate on it, with the same trust, the answer is the same. When only the
   * CRLs changed (every revocation re-signs them), the verified path is checked against the new
   * CRLs alone: with the same bundle and within the same windows, that is the only step whose
   * outcome can differ.
   */
  const verified = new WeakMap<Buffer[], { trust: Trust; from: number; until: number; result: VerifiedX509Svid }>();
  const stats = { fullChecks: 0 };
  const verify = (chain: Buffer[]): VerifiedX509Svid => {
    if (chain.length === 0) throw refuse('malformed', 'the client presented no certificate');
    const t = currentTrust();
    const now = clock.now();
    const memo = verified.get(chain);
    if (memo && now >= memo.from && now <= memo.until) {
      if (memo.trust === t) return memo.result;
      if (memo.trust.bundles === t.bundles) {
        checkPathRevocation(memo.result, t.crls);
        memo.trust = t;
        return memo.result;
      }
    }
    stats.fullChecks++;
    const result = verifyX509Svid(chain, t.bundles, { now, crls: t.crls });
    verified.set(chain, {
      trust: t,
      from: Math.max(...result.chain.map((c) => c.notBefore)),
      until: Math.min(...result.chain.map((c) => c.notAfter)),
      result,
    });
    return result;
  };

  return {
    verify,
    stats,
    callerForChain(chain, verifiedAs) {
      let verified: VerifiedX509Svid;
      try {
        verified = verify(chain);
      } catch (err) {
        const reason = err instanceof VerificationError ? err.reason : 'internal';
        return verifiedAs
          ? { who: verifiedAs, reason: `client SVID no longer verifies (${reason})` }
          : { who: 'unverified client certificate', reason: `client SVID does not verify (${reason})` };
      }
      const id = verified.spiffeId.toString();
      const actor = actorForSpiffeId(id, roles);
      if (actor) return { actor };
      if (parseTaskSpiffeId(verified.spiffeId)) return { who: id, reason: 'per-task identities never hold an admin role' };
      return { who: id, reason: 'SPIFFE ID has no admin role' };
    },
  };
}
