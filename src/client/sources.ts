import { EventEmitter } from 'node:events';
import { abortError, type Clock } from '../common/clock.js';
import { AgentIdError, failedPrecondition, unavailable } from '../common/errors.js';
import { systemClock } from '../common/system-clock.js';
import { SpiffeId, TrustDomain } from '../spiffe/spiffe-id.js';
import { DEFAULT_BACKOFF, Follower, type BackoffOptions, type FollowerDeps, type WatchFn } from './follow.js';
import type { JwkSet, JwtBundles, JwtSvid, JwtSvidParams, X509Bundles, X509Context, X509Svid } from './types.js';
import { WorkloadApiClient, type CallOptions } from './workload-client.js';

export interface SourceOptions {
  /** unix:///abs/path, unix:/abs/path or /abs/path; defaults to $SPIFFE_ENDPOINT_SOCKET. Ignored with `client`. */
  socketPath?: string;
  /** Share an existing client; the source then leaves closing it to the caller. */
  client?: WorkloadApiClient;
  /** Drives backoff sleeps and expiry checks (default: the system clock). */
  clock?: Clock;
  backoff?: BackoffOptions;
  /** Jitter source in [0, 1) (default Math.random); tests pin it. */
  random?: () => number;
  /** Bounds how long create() waits for the first update; create() rejects with an AbortError. */
  signal?: AbortSignal;
}

export interface X509SourceOptions extends SourceOptions {
  /** Chooses the SVID getX509Svid() returns; the default is svids[0] (Workload API §8). */
  picker?: (svids: readonly X509Svid[]) => X509Svid | undefined;
}

export interface SourceEvents<U> {
  update: [U];
  /** A message that failed to decode, or a dropped stream that is being retried. */
  watchError: [AgentIdError];
  /** A failure retrying cannot fix (INVALID_ARGUMENT, UNIMPLEMENTED): the source keeps its last state but stops following. */
  stopped: [AgentIdError];
}

function normaliseTrustDomain(td: string): string {
  return TrustDomain.parse(td).idString;
}

/** Shared plumbing: owning or borrowing the client, the first-update wait, closing. */
abstract class StreamSource<U> extends EventEmitter<SourceEvents<U>> {
  protected readonly client: WorkloadApiClient;
  protected readonly clock: Clock;
  private readonly ownsClient: boolean;
  private readonly deps: FollowerDeps;
  private readonly followers: Follower<unknown>[] = [];
  private closedFlag = false;
  private stoppedBy: AgentIdError | undefined;

  protected constructor(options: SourceOptions) {
    super();
    this.client = options.client ?? new WorkloadApiClient({ socketPath: options.socketPath });
    this.ownsClient = options.client === undefined;
    this.clock = options.clock ?? systemClock;
    this.deps = {
      clock: this.clock,
      backoff: { ...DEFAULT_BACKOFF, ...options.backoff },
      random: options.random ?? Math.random,
    };
  }

  protected follow<T>(watch: WatchFn<T>, onValue: (value: T) => void): void {
    const follower = new Follower<T>(watch, {
      update: (value) => {
        if (!this.closedFlag) onValue(value);
      },
      error: (err) => {
        if (!this.closedFlag) this.emit('watchError', err);
      },
      stopped: (err) => {
        if (this.closedFlag) return;
        this.stoppedBy = err;
        this.emit('stopped', err);
      },
    }, this.deps);
    this.followers.push(follower as Follower<unknown>);
  }

  /** Resolves once `isReady()` holds; rejects when following stops for good or `signal` aborts. */
  protected waitReady(isReady: () => boolean, signal?: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const cleanup = () => {
        this.off('update', onUpdate);
        this.off('stopped', onStopped);
        signal?.removeEventListener('abort', onAbort);
      };
      const onUpdate = () => {
        if (!isReady()) return;
        cleanup();
        resolve();
      };
      const onStopped = (err: AgentIdError) => {
        cleanup();
        reject(err);
      };
      const onAbort = () => {
        cleanup();
        reject(abortError());
      };
      if (this.stoppedBy) return reject(this.stoppedBy);
      if (isReady()) return resolve();
      if (signal?.aborted) return reject(abortError());
      this.on('update', onUpdate);
      this.on('stopped', onStopped);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  protected static async startOrClose<S extends StreamSource<unknown>>(source: S, ready: Promise<void>): Promise<S> {
    try {
      await ready;
      return source;
    } catch (err) {
      await source.close();
      throw err;
    }
  }

  protected checkOpen(what: string): void {
    if (this.closedFlag) throw failedPrecondition(`${what}: source is closed`);
  }

  /** The error that stopped following, if one did. */
  get stopError(): AgentIdError | undefined {
    return this.stoppedBy;
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  /** Cancels the streams (the server sees CANCELLED), then closes the client if the source made it. */
  async close(): Promise<void> {
    if (this.closedFlag) return;
    this.closedFlag = true;
    await Promise.all(this.followers.map((f) => f.stop()));
    if (this.ownsClient) this.client.close();
  }
}

/**
 * Follows FetchX509SVID and always holds the latest X.509 context, like go-spiffe's X509Source.
 * create() resolves after the first update; dropped streams are re-opened with backoff.
 */
export class X509Source extends StreamSource<X509Context> {
  private ctx: X509Context | undefined;
  private readonly picker: X509SourceOptions['picker'];

  private constructor(options: X509SourceOptions) {
    super(options);
    this.picker = options.picker;
    this.follow<X509Context>(
      (onUpdate, onError, signal) => this.client.watchX509Context(onUpdate, onError, signal),
      (ctx) => {
        this.ctx = ctx;
        this.emit('update', ctx);
      },
    );
  }

  static create(options: X509SourceOptions = {}): Promise<X509Source> {
    const source = new X509Source(options);
    return StreamSource.startOrClose(source, source.waitReady(() => source.ctx !== undefined, options.signal));
  }

  getX509Context(): X509Context {
    this.checkOpen('X509Source');
    return this.ctx!;
  }

  /**
   * The picked SVID (default svids[0]). Refuses an expired one: if updates stop arriving (server
   * down) a stale key must not keep serving TLS. Like go-spiffe, the last SVID is kept while the
   * stream is retried, also after PERMISSION_DENIED; a revoked SVID is refused by verifiers (CRLs).
   */
  getX509Svid(): X509Svid {
    const ctx = this.getX509Context();
    const svid = this.picker ? this.picker(ctx.svids) : ctx.svids[0];
    if (!svid) throw failedPrecondition('X509Source: the picker chose no SVID');
    if (svid.notAfter <= this.clock.now()) {
      throw unavailable(`X509Source: X.509-SVID ${svid.spiffeId} expired at ${new Date(svid.notAfter).toISOString()} and no update has arrived`);
    }
    return svid;
  }

  /** Trust bundles keyed "spiffe://<td>": each SVID's own trust domain plus the federated ones. */
  getBundles(): Map<string, Buffer[]> {
    const ctx = this.getX509Context();
    const out = new Map(ctx.federatedBundles);
    // The own trust domain's bundle travels with the SVID; it wins over a federated entry of the same name.
    for (const svid of [...ctx.svids].reverse()) {
      out.set(SpiffeId.parse(svid.spiffeId).trustDomain.idString, svid.bundleDer);
    }
    return out;
  }

  getBundleForTrustDomain(trustDomain: string): Buffer[] | undefined {
    return this.getBundles().get(normaliseTrustDomain(trustDomain));
  }

  getCrls(): Buffer[] {
    return this.getX509Context().crls;
  }
}

export interface BundleSourceOptions extends SourceOptions {
  /** Follow FetchX509Bundles (default true). */
  x509?: boolean;
  /** Follow FetchJWTBundles (default true). */
  jwt?: boolean;
}

export type BundleUpdate = { kind: 'x509'; bundles: X509Bundles } | { kind: 'jwt'; bundles: JwtBundles };

/** Follows FetchX509Bundles and FetchJWTBundles; create() waits for the first message of each. */
export class BundleSource extends StreamSource<BundleUpdate> {
  private x509: X509Bundles | undefined;
  private jwt: JwtBundles | undefined;
  private readonly wantX509: boolean;
  private readonly wantJwt: boolean;

  private constructor(options: BundleSourceOptions) {
    super(options);
    this.wantX509 = options.x509 ?? true;
    this.wantJwt = options.jwt ?? true;
    if (!this.wantX509 && !this.wantJwt) throw failedPrecondition('BundleSource: follow X.509 bundles, JWT bundles or both');
    if (this.wantX509) {
      this.follow<X509Bundles>(
        (onUpdate, onError, signal) => this.client.watchX509Bundles(onUpdate, onError, signal),
        (bundles) => {
          this.x509 = bundles;
          this.emit('update', { kind: 'x509', bundles });
        },
      );
    }
    if (this.wantJwt) {
      this.follow<JwtBundles>(
        (onUpdate, onError, signal) => this.client.watchJwtBundles(onUpdate, onError, signal),
        (bundles) => {
          this.jwt = bundles;
          this.emit('update', { kind: 'jwt', bundles });
        },
      );
    }
  }

  static create(options: BundleSourceOptions = {}): Promise<BundleSource> {
    const source = new BundleSource(options);
    const ready = () => (!source.wantX509 || source.x509 !== undefined) && (!source.wantJwt || source.jwt !== undefined);
    return StreamSource.startOrClose(source, source.waitReady(ready, options.signal));
  }

  getX509Bundles(): Map<string, Buffer[]> {
    this.checkOpen('BundleSource');
    if (!this.x509) throw failedPrecondition('BundleSource: not following X.509 bundles');
    return this.x509.bundles;
  }

  getX509BundleForTrustDomain(trustDomain: string): Buffer[] | undefined {
    return this.getX509Bundles().get(normaliseTrustDomain(trustDomain));
  }

  getCrls(): Buffer[] {
    this.checkOpen('BundleSource');
    if (!this.x509) throw failedPrecondition('BundleSource: not following X.509 bundles');
    return this.x509.crls;
  }

  getJwtBundles(): JwtBundles {
    this.checkOpen('BundleSource');
    if (!this.jwt) throw failedPrecondition('BundleSource: not following JWT bundles');
    return this.jwt;
  }

  getJwtBundleForTrustDomain(trustDomain: string): JwkSet | undefined {
    return this.getJwtBundles().get(normaliseTrustDomain(trustDomain));
  }
}

export interface JwtSourceOptions {
  socketPath?: string;
  client?: WorkloadApiClient;
  clock?: Clock;
  /** Most cached (audience, identity) pairs kept; the oldest goes first (default 256). */
  maxCacheEntries?: number;
}

interface CacheEntry {
  svid: JwtSvid;
  refreshAt: number;
}

/**
 * Fetches JWT-SVIDs on demand and caches each one until half its remaining lifetime (measured
 * from when it arrived) has passed. Concurrent requests for the same audiences share one call.
 * When a refresh fails with `unavailable` the cached token is served while it is unexpired;
 * any other failure (permission_denied after a revocation, above all) drops it.
 */
export class JwtSource {
  private readonly client: WorkloadApiClient;
  private readonly ownsClient: boolean;
  private readonly clock: Clock;
  private readonly maxEntries: number;
  private readonly cache = new Map<string, CacheEntry>();
  private readonly inflight = new Map<string, Promise<JwtSvid>>();
  private closedFlag = false;

  private constructor(options: JwtSourceOptions) {
    this.client = options.client ?? new WorkloadApiClient({ socketPath: options.socketPath });
    this.ownsClient = options.client === undefined;
    this.clock = options.clock ?? systemClock;
    this.maxEntries = options.maxCacheEntries ?? 256;
  }

  /** Nothing to wait for: JWT-SVIDs are fetched on first use. Async for symmetry with the other sources. */
  static async create(options: JwtSourceOptions = {}): Promise<JwtSource> {
    return new JwtSource(options);
  }

  async fetchJwtSvid(params: JwtSvidParams, options: CallOptions = {}): Promise<JwtSvid> {
    if (this.closedFlag) throw failedPrecondition('JwtSource: source is closed');
    const key = JSON.stringify([[...new Set(params.audience)].sort(), params.spiffeId ?? '']);
    const now = this.clock.now();
    const cached = this.cache.get(key);
    if (cached && cached.refreshAt > now && cached.svid.expiresAt > now) return cached.svid;

    let pending = this.inflight.get(key);
    if (!pending) {
      pending = this.refresh(key, params, options).finally(() => this.inflight.delete(key));
      this.inflight.set(key, pending);
    }
    return pending;
  }

  private async refresh(key: string, params: JwtSvidParams, options: CallOptions): Promise<JwtSvid> {
    try {
      const svid = await this.client.fetchJwtSvid(params, options);
      const fetchedAt = this.clock.now();
      this.store(key, { svid, refreshAt: fetchedAt + Math.max(0, svid.expiresAt - fetchedAt) / 2 });
      return svid;
    } catch (err) {
      const stale = this.cache.get(key);
      if (stale && err instanceof AgentIdError && err.code === 'unavailable' && stale.svid.expiresAt > this.clock.now()) {
        return stale.svid;
      }
      this.cache.delete(key);
      throw err;
    }
  }

  private store(key: string, entry: CacheEntry): void {
    this.cache.delete(key);
    const now = this.clock.now();
    for (const [k, e] of this.cache) if (e.svid.expiresAt <= now) this.cache.delete(k);
    while (this.cache.size >= this.maxEntries) {
      const oldest = this.cache.keys().next().value;
      if (oldest === undefined) break;
      this.cache.delete(oldest);
    }
    this.cache.set(key, entry);
  }

  async close(): Promise<void> {
    if (this.closedFlag) return;
    this.closedFlag = true;
    this.cache.clear();
    if (this.ownsClient) this.client.close();
  }
}
