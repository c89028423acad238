import type { Clock } from '../common/clock.js';
import { unpooled } from '../common/buffers.js';
import { permissionDenied, unavailable, type AgentIdError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { RegistrationEntry, TaskRecord } from '../datastore/types.js';
import { MIN_REMAINING_MS, type CallerFacts, type Identity } from './identity.js';
import { StreamIndex } from './stream-index.js';
import { LateAncestors, type Ancestry } from './late-ancestors.js';
import type { MintCause, MintedX509, SvidCache } from './svid-cache.js';
import type { TrustMaterial } from './trust.js';

export interface Caller extends CallerFacts, MintCause {}

export interface X509State {
  svids: { identity: Identity; svid: MintedX509 }[];
  /** DER CA certificates of the own trust domain (each SVID's bundle). */
  bundle: Buffer[];
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

/** Wire encodings of stream states (workload/encode.ts); the hub encodes each distinct state once. */
export interface StateEncoders {
  x509(state: X509State): Buffer;
  x509Bundles(state: X509BundlesState): Buffer;
  jwtBundles(state: JwtBundlesState): Buffer;
}

/**
 * Something that may change what open streams carry. Producers say what changed; the hub finds the
 * streams that depend on it. `before`/`after` are the record as it was and as it is (absent when
 * created or deleted): a stream the old version was offered to may have to lose it.
 */
export type StateChange =
  | { kind: 'entry'; before?: RegistrationEntry; after?: RegistrationEntry }
  | { kind: 'task'; before?: TaskRecord; after?: TaskRecord }
  | { kind: 'revocation'; spiffeId: string }
  /** Own bundle, JWT keys or CRLs. */
  | { kind: 'trust' }
  | { kind: 'federation'; trustDomain: string }
  /** Some cached X.509-SVID reached its renewal time. */
  | { kind: 'renewal' }
  /** Some entry or task identity reached its end. */
  | { kind: 'expiry' };

type Kind = 'x509' | 'x509-bundles' | 'jwt-bundles';

/**
 * How much of a stream's state a change can alter: `resolve` re-runs identity resolution (entries,
 * tasks, revocations); `render` keeps the identities and re-reads SVIDs and trust material.
 */
type Work = 'resolve' | 'render';

/** Where a stream's messages go, and how it is ended (one object per stream: no closures). */
export interface StreamSink {
  deliver(message: Buffer): void;
  end(err: AgentIdError): void;
}

/** An open stream, as subscribe() returns it; give it back to unsubscribe(). */
export interface StreamHandle {
  readonly open: boolean;
}

interface Subscription extends StreamHandle {
  kind: Kind;
  /** Replaced once when a caller attested without its parent chain has it read (late-ancestors.ts). */
  caller: Caller;
  sink: StreamSink;
  identities: Identity[];
  /** Key of the response last delivered (see `responseKey`). */
  responseKey: string;
  message: Buffer | undefined;
  open: boolean;
  /** Hub generation at this stream's last recompute (any work), and at its last full resolve. */
  renderedAt: number;
  resolvedAt: number;
}

/** One encoded response and the streams that currently hold it. */
interface SharedResponse {
  /** Its key in `responses`: every holder keeps this one string, not its own equal copy. */
  key: string;
  message: Buffer;
  holders: Set<Subscription>;
}

/**
 * A change that concerns every stream (trust material, a CA rotation) is not marked stream by
 * stream: it starts a sweep, a cursor over the shared responses and their holders that the fan-out
 * advances slice by slice. A stream recomputed since the sweep began (its generation is at least
 * the sweep's) is skipped; a later sweep restarts from the first response (latest wins).
 */
interface Sweep {
  work: Work;
  generation: number;
  responses: Iterator<SharedResponse>;
  /** Holders of the response being visited, not yet taken. */
  holders: Subscription[];
}

export interface HubDeps {
  identitiesFor: (caller: CallerFacts, now: number) => Identity[];
  /** Where SVIDs come from: the local CA's cache on the server, the pre-fetched store on an agent. */
  cache: Pick<SvidCache, 'x509For' | 'dueKeys' | 'retain'> & Partial<Pick<SvidCache, 'recorded'>>;
  trust: TrustMaterial;
  encoders: StateEncoders;
  clock: Clock;
  logger: Logger;
  /**
   * Wraps the minting part of a refresh, so the audit log can write the lines of a whole rotation
   * storm at once; states are delivered only after it returns (audit before delivery).
   */
  around?: <T>(fn: () => T) => T;
  /**
   * Streams recomputed per slice of a fan-out; the event loop gets a turn between slices. A slice
   * at worst mints one SVID per stream (about 50 us) and encodes one response, so 64 keep each
   * slice to a few milliseconds.
   */
  sliceSize?: number;
  /**
   * Parent chains for callers attested without one (late-ancestors.ts). Absent: every caller comes
   * with its chain (or none is ever needed).
   */
  ancestry?: Ancestry;
}

export const NO_IDENTITY = 'no identity issued';
const DEFAULT_SLICE = 64;

/**
 * Open Workload API streams. Each holds the kernel facts of its caller and is indexed by what its
 * state depends on (stream-index.ts): a change marks only the streams it can affect, and the
 * fan-out runs later, after the call that made the change has returned, in slices that give the
 * event loop back in between. A stream marked twice before its turn is recomputed once, from the
 * state at that time (latest wins). Each distinct response is encoded once and the same bytes go to
 * every stream that shares it; a stream never receives a response identical to its previous one.
 * A stream whose caller has lost its last identity ends with permission_denied.
 */
export class StreamHub {
  private readonly index = new StreamIndex<Subscription>();
  /** Streams waiting for a recompute, in marking order. */
  private readonly pending = new Map<Subscription, Work>();
  /** Encoded responses in use by some stream, shared by all streams with the same key. */
  private readonly responses = new Map<string, SharedResponse>();
  /** Grows with every sweep; streams record it when recomputed. */
  private generation = 0;
  private sweep: Sweep | undefined;
  private scheduled = false;
  private readonly idleWaiters: (() => void)[] = [];
  private readonly sliceSize: number;
  private readonly late: LateAncestors<Subscription> | undefined;

  constructor(private readonly deps: HubDeps) {
    this.sliceSize = deps.sliceSize ?? DEFAULT_SLICE;
    this.late = deps.ancestry && new LateAncestors<Subscription>({
      ancestry: deps.ancestry,
      logger: deps.logger,
      walked: (sub, caller, recompute) => {
        this.index.addAncestors(sub, caller.ancestors);
        sub.caller = { ...sub.caller, ...caller };
        if (!recompute) return;
        this.mark([sub], 'resolve');
        this.schedule();
      },
    });
  }

  get size(): number {
    return this.index.size;
  }

  /** Current identities of a caller; throws permission_denied when there are none. */
  identities(caller: CallerFacts): Identity[] {
    const identities = this.deps.identitiesFor(caller, this.deps.clock.now());
    if (identities.length === 0) throw permissionDenied(NO_IDENTITY);
    return identities;
  }

  /** Registers a stream and delivers its first state at once (to `sink`, before this returns). */
  subscribe(kind: Kind, caller: Caller, sink: StreamSink): StreamHandle {
    const generation = this.generation;
    const sub: Subscription = { kind, caller, sink, identities: [], responseKey: '', message: undefined, open: true, renderedAt: generation, resolvedAt: generation };
    const first = this.around(() => this.compute(sub, 'resolve'));
    if (first instanceof Error) throw first;
    this.index.add(sub);
    this.apply(sub, first);
    this.late?.opened(sub);
    return sub;
  }

  /** The stream is gone: it gets nothing more. */
  unsubscribe(handle: StreamHandle): void {
    this.drop(handle as Subscription);
  }

  /** Marks the streams a change can affect; the fan-out runs on a later turn of the event loop. */
  changed(change: StateChange): void {
    const resolve = new Set<Subscription>();
    switch (change.kind) {
      case 'entry':
        for (const e of [change.before, change.after]) if (e) this.index.affectedByEntry(e, resolve);
        break;
      case 'task':
        for (const t of [change.before, change.after]) {
          if (!t) continue;
          this.index.affectedByTask(t, resolve);
          this.late?.taskChanged(t);
        }
        break;
      case 'revocation':
        for (const s of this.index.holdingSpiffeId(change.spiffeId)) resolve.add(s);
        break;
      case 'expiry':
        for (const key of this.index.keysEndingBefore(this.deps.clock.now() + MIN_REMAINING_MS)) {
          for (const s of this.index.holdingKey(key)) resolve.add(s);
        }
        break;
      case 'renewal':
        this.retainHeld();
        for (const key of this.deps.cache.dueKeys(this.deps.clock.now())) this.mark(this.index.holdingKey(key), 'render');
        break;
      case 'federation':
        this.mark(this.index.federatingWith(change.trustDomain), 'render');
        break;
      case 'trust':
        this.sweepAll('render');
        break;
    }
    this.mark(resolve, 'resolve');
    this.schedule();
  }

  /** Everything may have changed (CA rotation): every stream is recomputed in full. */
  refresh(): void {
    this.sweepAll('resolve');
    this.schedule();
  }

  /** Resolves once no fan-out is pending, parent chains being read included (tests, metrics). */
  async idle(): Promise<void> {
    for (;;) {
      if (this.late?.busy) await this.late.idle();
      else if (this.scheduled) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
      else return;
    }
  }

  closeAll(err: AgentIdError): void {
    this.pending.clear();
    this.sweep = undefined;
    for (const sub of [...this.index.all()]) {
      this.drop(sub);
      sub.sink.end(err);
    }
  }

  private mark(subs: Iterable<Subscription>, work: Work): void {
    for (const sub of subs) if (this.pending.get(sub) !== 'resolve') this.pending.set(sub, work);
  }

  /**
   * Starts a sweep over every stream: constant work in the changing call, whatever the number of
   * streams. A sweep still running restarts from the first stream (those it visited need this
   * change too) and keeps resolving if it was (the streams it has not reached still need that).
   */
  private sweepAll(work: Work): void {
    this.sweep = {
      work: this.sweep?.work === 'resolve' ? 'resolve' : work,
      generation: ++this.generation,
      responses: this.responses.values(),
      holders: [],
    };
  }

  private schedule(): void {
    if (this.scheduled || (this.pending.size === 0 && !this.sweep)) return;
    this.scheduled = true;
    // Never in the caller's turn: the call that made the change returns (and its reply is written) first.
    setImmediate(() => this.fanOutSlice());
  }

  /**
   * One slice: marked streams when there are any (a revoked stream is not kept waiting behind a
   * sweep, nor its message behind a slice of sweep writes), else the sweep's next streams, which
   * come response by response, so streams that shared a response share one recompute too (see
   * `safeCompute`).
   */
  private fanOutSlice(): void {
    this.scheduled = false;
    const slice = new Map<Subscription, Work>();
    for (const [sub, work] of this.pending) {
      if (slice.size >= this.sliceSize) break;
      slice.set(sub, work);
    }
    for (const sub of slice.keys()) this.pending.delete(sub);
    if (slice.size === 0) this.takeFromSweep(slice);
    const generation = this.generation;
    const renders = new Map<string, Computed>();
    const results = this.around(() =>
      [...slice].map(([sub, work]) => {
        sub.renderedAt = generation;
        if (work === 'resolve') sub.resolvedAt = generation;
        return { sub, result: this.safeCompute(sub, work, renders) };
      }),
    );
    for (const { sub, result } of results) {
      if (!sub.open || result === undefined) continue;
      if (result instanceof Error) {
        this.drop(sub);
        sub.sink.end(result);
      } else {
        this.apply(sub, result);
      }
    }
    if (this.pending.size > 0 || this.sweep) return this.schedule();
    this.retainHeld();
    for (const resolve of this.idleWaiters.splice(0)) resolve();
  }

  /** SVIDs no open stream holds any more are neither kept nor renewed. */
  private retainHeld(): void {
    this.deps.cache.retain({ has: (key) => this.index.isHeld(key) });
  }

  /** Fills the slice up to its size with streams the sweep has not recomputed yet. */
  private takeFromSweep(slice: Map<Subscription, Work>): void {
    const sweep = this.sweep;
    if (!sweep) return;
    while (slice.size < this.sliceSize) {
      const sub = sweep.holders.pop();
      if (!sub) {
        const next = sweep.responses.next();
        if (next.done) {
          this.sweep = undefined;
          return;
        }
        sweep.holders = [...next.value.holders];
        continue;
      }
      if (!sub.open || (sweep.work === 'resolve' ? sub.resolvedAt : sub.renderedAt) >= sweep.generation) continue;
      const resolve = sweep.work === 'resolve' || slice.get(sub) === 'resolve' || this.pending.get(sub) === 'resolve';
      this.pending.delete(sub);
      slice.set(sub, resolve ? 'resolve' : 'render');
    }
  }

  /**
   * Recomputes one stream. `renders` holds this slice's render results by the response key they
   * replace: streams that held the same response hold the same identities (the key names each
   * SVID), so within one synchronous slice a render for one of them is the render for all.
   * A stream holding an identity at its end resolves again, for itself (bundle responses are
   * shared by streams of different identities).
   */
  private safeCompute(sub: Subscription, work: Work, renders: Map<string, Computed>): Computed | AgentIdError | undefined {
    if (!sub.open) return undefined;
    try {
      const shareable = work === 'render' && !this.ending(sub);
      if (shareable) {
        const shared = renders.get(sub.responseKey);
        if (shared) return shared;
      }
      const result = this.compute(sub, work);
      if (shareable && !(result instanceof Error)) {
        renders.set(sub.responseKey, { ...result, identities: SAME_IDENTITIES });
      }
      return result;
    } catch (err) {
      this.deps.logger.error({ err, pid: sub.caller.pid }, 'stream refresh failed');
      return undefined;
    }
  }

  private around<T>(fn: () => T): T {
    return this.deps.around ? this.deps.around(fn) : fn();
  }

  private drop(sub: Subscription): void {
    if (!sub.open) return;
    sub.open = false;
    this.pending.delete(sub);
    this.late?.closed(sub);
    this.index.remove(sub);
    this.release(sub);
  }

  /** Records what the stream now holds and sends the response unless it is the one it already has. */
  private apply(sub: Subscription, computed: Computed): void {
    // A render reuses the identities it had: nothing to re-file.
    if (computed.identities !== SAME_IDENTITIES && computed.identities !== sub.identities) {
      this.index.hold(sub, computed.identities);
      sub.identities = computed.identities;
    }
    if (computed.key === sub.responseKey) return;
    let shared = this.responses.get(computed.key);
    if (!shared) this.responses.set(computed.key, (shared = { key: computed.key, message: unpooled(computed.encode()), holders: new Set() }));
    this.release(sub);
    shared.holders.add(sub);
    sub.responseKey = shared.key;
    const message = shared.message;
    // Versions can move without the content changing (a CA rotation that left the JWT keys alone).
    if (sub.message?.equals(message)) return;
    sub.message = message;
    if (computed.recorded === undefined) {
      sub.sink.deliver(message);
      return;
    }
    // A new certificate goes out once its issuance record is durable (svid-cache.ts recorded()),
    // unless the stream has moved on to a later message by then (latest wins).
    computed.recorded.then(
      () => {
        if (sub.open && sub.message === message) sub.sink.deliver(message);
      },
      (err: unknown) => {
        if (!sub.open || sub.message !== message) return;
        this.deps.logger.error({ err, pid: sub.caller.pid }, 'a new SVID\'s issuance could not be recorded; the stream ends');
        this.drop(sub);
        sub.sink.end(unavailable('SVID issuance could not be recorded'));
      },
    );
  }

  /** The stream no longer holds its response; a response nobody holds is forgotten. */
  private release(sub: Subscription): void {
    const shared = this.responses.get(sub.responseKey);
    if (!shared) return;
    shared.holders.delete(sub);
    if (shared.holders.size === 0) this.responses.delete(sub.responseKey);
  }

  /** Settles once every one of these SVIDs' issuance records is durable; undefined when they are. */
  private recorded(svids: readonly { svid: MintedX509 }[]): Promise<unknown> | undefined {
    const { cache } = this.deps;
    if (!cache.recorded) return undefined;
    let waits: Promise<void>[] | undefined;
    for (const { svid } of svids) {
      const wait = cache.recorded(svid);
      if (wait) (waits ??= []).push(wait);
    }
    return waits && (waits.length === 1 ? waits[0] : Promise.all(waits));
  }

  /** Whether one of the stream's identities is at its end (entry expiry, task end plus buffer). */
  private ending(sub: Subscription): boolean {
    const now = this.deps.clock.now();
    return sub.identities.some((i) => i.notAfterCap !== null && i.notAfterCap - now < MIN_REMAINING_MS);
  }

  /**
   * The stream's identities and the key of its response: everything the response is made of, by
   * version or serial, so equal keys mean equal bytes and the encoding can be shared.
   */
  private compute(sub: Subscription, work: Work): Computed | AgentIdError {
    const { trust, encoders, cache } = this.deps;
    const now = this.deps.clock.now();
    // An identity at its end is never re-minted, even if the change that ends it has not arrived yet.
    const identities = work === 'resolve' || this.ending(sub) ? this.deps.identitiesFor(sub.caller, now) : sub.identities;
    if (identities.length === 0) return permissionDenied(NO_IDENTITY);
    const v = trust.versions();
    const federatesWith = [...new Set(identities.flatMap((i) => i.federatesWith))].sort();
    const federation = federatesWith.length === 0 ? '' : `${v.federation}:${federatesWith.join(',')}`;

    if (sub.kind === 'x509') {
      const svids = identities.map((identity) => ({ identity, svid: cache.x509For(identity, sub.caller) }));
      const key = ['x509', v.x509, v.crl, federation, ...svids.map((s) => `${s.svid.issuerId}/${s.svid.serial}/${s.identity.hint}`)].join('\u0000');
      const encode = () =>
        encoders.x509({ svids, bundle: trust.ownX509Bundle(), crls: trust.crls(), federatedBundles: trust.federatedX509(federatesWith) });
      return { identities, key, encode, recorded: this.recorded(svids) };
    }
    if (sub.kind === 'x509-bundles') {
      const key = ['x509-bundles', v.x509, v.crl, federation].join('\u0000');
      const encode = () =>
        encoders.x509Bundles({ bundles: new Map([[trust.trustDomainId, trust.ownX509Bundle()], ...trust.federatedX509(federatesWith)]), crls: trust.crls() });
      return { identities, key, encode };
    }
    const key = ['jwt-bundles', v.jwt, federation].join('\u0000');
    const encode = () => encoders.jwtBundles({ bundles: new Map([[trust.trustDomainId, trust.ownJwtBundle()], ...trust.federatedJwt(federatesWith)]) });
    return { identities, key, encode };
  }
}

/** A shared render result's identities: each stream keeps its own (equal) ones. */
const SAME_IDENTITIES: Identity[] = [];

interface Computed {
  /** The stream's identities, or SAME_IDENTITIES when they did not change. */
  identities: Identity[];
  key: string;
  /** Called only when no stream shares the key yet. */
  encode: () => Buffer;
  /** Settles once the issuance records of the certificates in it are durable; absent when they are. */
  recorded?: Promise<unknown>;
}
