import type { Clock } from '../common/clock.js';
import { permissionDenied, type AgentIdError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { CallerFacts, Identity } from './identity.js';
import type { MintCause, MintedX509, SvidCache } from './svid-cache.js';
import type { TrustMaterial } from './trust.js';

export interface Caller extends CallerFacts, MintCause {}

export interface X509State {
  svids: { identity: Identity; svid: MintedX509 }[];
  crls: Buffer[];
  /** Foreign trust domains only. */
  federatedBundles: Map<string, Buffer[]>;
}

export interface X509BundlesState {
  /** Own trust domain and federated ones, keyed "spiffe://<td>". */
  bundles: Map<string, Buffer[]>;
  crls: Buffer[];
}

export interface JwtBundlesState {
  bundles: Map<string, Buffer>;
}

type Kind = 'x509' | 'x509-bundles' | 'jwt-bundles';
type StateOf<K extends Kind> = K extends 'x509' ? X509State : K extends 'x509-bundles' ? X509BundlesState : JwtBundlesState;

interface Subscription<K extends Kind = Kind> {
  kind: K;
  caller: Caller;
  deliver: (state: StateOf<K>) => void;
  end: (err: AgentIdError) => void;
  signature: string;
}

export interface HubDeps {
  identitiesFor: (caller: CallerFacts, now: number) => Identity[];
  cache: SvidCache;
  trust: TrustMaterial;
  clock: Clock;
  logger: Logger;
  /**
   * Wraps the minting part of a refresh, so the audit log can write the lines of a whole rotation
   * storm at once; states are delivered only after it returns (audit before delivery).
   */
  around?: <T>(fn: () => T) => T;
}

export const NO_IDENTITY = 'no identity issued';

/**
 * Open Workload API streams. Each holds the kernel facts of its caller; `refresh()` recomputes every
 * stream's full state and pushes it where it changed (the stream writer keeps only the latest
 * unsent state, so a slow reader never holds anyone up). A stream whose caller has lost its last
 * identity ends with permission_denied.
 */
export class StreamHub {
  private readonly subs = new Set<Subscription>();

  constructor(private readonly deps: HubDeps) {}

  get size(): number {
    return this.subs.size;
  }

  /** Current identities of a caller; throws permission_denied when there are none. */
  identities(caller: CallerFacts): Identity[] {
    const identities = this.deps.identitiesFor(caller, this.deps.clock.now());
    if (identities.length === 0) throw permissionDenied(NO_IDENTITY);
    return identities;
  }

  /** Registers a stream and delivers its first state at once. Returns the unsubscribe function. */
  subscribe<K extends Kind>(kind: K, caller: Caller, deliver: (s: StateOf<K>) => void, end: (e: AgentIdError) => void): () => void {
    const sub: Subscription<K> = { kind, caller, deliver, end, signature: '' };
    const first = this.around(() => this.compute(sub));
    if (first instanceof Error) throw first;
    this.subs.add(sub as unknown as Subscription);
    sub.signature = first.signature;
    deliver(first.state);
    return () => {
      this.subs.delete(sub as unknown as Subscription);
    };
  }

  /** Recomputes all streams; pushes changed states; ends streams left without identity. */
  refresh(): void {
    const inUse = new Set<string>();
    const computed = this.around(() =>
      [...this.subs].map((sub) => {
        try {
          return { sub, result: this.compute(sub) };
        } catch (err) {
          this.deps.logger.error({ err, pid: sub.caller.pid }, 'stream refresh failed');
          return undefined;
        }
      }),
    );
    for (const item of computed) {
      if (item === undefined) continue;
      const { sub, result } = item;
      if (result instanceof Error) {
        this.subs.delete(sub);
        sub.end(result);
        continue;
      }
      result.keys.forEach((k) => inUse.add(k));
      if (result.signature !== sub.signature) {
        sub.signature = result.signature;
        (sub.deliver as (s: unknown) => void)(result.state);
      }
    }
    this.deps.cache.retain(inUse);
  }

  private around<T>(fn: () => T): T {
    return this.deps.around ? this.deps.around(fn) : fn();
  }

  closeAll(err: AgentIdError): void {
    for (const sub of [...this.subs]) {
      this.subs.delete(sub);
      sub.end(err);
    }
  }

  private compute<K extends Kind>(sub: Subscription<K>): { state: StateOf<K>; signature: string; keys: string[] } | AgentIdError {
    const now = this.deps.clock.now();
    const identities = this.deps.identitiesFor(sub.caller, now);
    if (identities.length === 0) return permissionDenied(NO_IDENTITY);
    const trust = this.deps.trust;
    const federatesWith = new Set(identities.flatMap((i) => i.federatesWith));
    const keys = identities.map((i) => i.key);
    const trustVersion = trust.version();

    if (sub.kind === 'x509') {
      const svids = identities.map((identity) => ({ identity, svid: this.deps.cache.x509For(identity, sub.caller) }));
      const state: X509State = { svids, crls: trust.crls(), federatedBundles: trust.federatedX509(federatesWith) };
      const signature = `${trustVersion}|${svids.map((s) => `${s.identity.hint}=${s.svid.serial}`).join(',')}|${[...federatesWith].sort().join(',')}`;
      return { state: state as StateOf<K>, signature, keys };
    }
    const fedKey = [...federatesWith].sort().join(',');
    if (sub.kind === 'x509-bundles') {
      const bundles = new Map([[trust.trustDomainId, trust.ownX509Bundle()], ...trust.federatedX509(federatesWith)]);
      const state: X509BundlesState = { bundles, crls: trust.crls() };
      return { state: state as StateOf<K>, signature: `${trustVersion}|${fedKey}`, keys };
    }
    const bundles = new Map([[trust.trustDomainId, trust.ownJwtBundle()], ...trust.federatedJwt(federatesWith)]);
    return { state: { bundles } as StateOf<K>, signature: `${trustVersion}|${fedKey}`, keys };
  }
}
