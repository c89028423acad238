import { performance } from 'node:perf_hooks';
import type * as grpc from '@grpc/grpc-js';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { AuditEventInput } from '../audit/events.js';
import type { OpsRoutes } from './http.js';

/*
 * Prometheus metrics, all prefixed agentid_. Operations are a tap, not a rewrite: counts come from
 * the typed event stream that feeds the audit trail (AuditLog.observe), latencies from a few
 * wrappers the composition root puts around functions it already passes on, gauges are read at
 * scrape time. Label values come from small fixed sets only: never a SPIFFE ID, pid, uid or path.
 *
 * Durations are measured with performance.now(), a monotonic timer: it reads no wall-clock time
 * (the Clock rule is about wall-clock time, which these numbers never become).
 */

const WORKLOAD_METHODS = new Set(['FetchX509SVID', 'FetchX509Bundles', 'FetchJWTSVID', 'FetchJWTBundles', 'ValidateJWTSVID']);
const ROTATION_REASONS = new Set(['new', 'changed', 'expired', 'half_life']);
/** Latency buckets in seconds: SVID delivery is sub-millisecond when cached, tens of ms when minting a storm. */
const FAST_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

/** The refusal categories of attestation.refused events (workload/service.ts words them). */
export function refusalReason(text: string): string {
  const why = text.slice(text.indexOf(':') + 1).trim();
  if (why.startsWith('no peer credentials')) return 'no_peer_credentials';
  if (why.startsWith('no identity')) return 'no_identity';
  if (why.startsWith('not entitled')) return 'not_entitled';
  if (why.startsWith('refused (details withheld')) return 'withheld';
  return 'attestation_failed';
}

function methodOf(text: string): string {
  const method = text.slice(0, Math.max(0, text.indexOf(':')));
  return WORKLOAD_METHODS.has(method) ? method : 'other';
}

const seconds = (startedAt: number) => (performance.now() - startedAt) / 1000;

export interface MetricsSources {
  openConnections(): number;
  openStreams(): number;
  authorities(): { kind: string; slot: string; notAfter: number }[];
  now(): number;
  /** Workload API limits (workload/limits.ts): refusals by limit, connections closed by its timers. */
  workloadLimits?(): { refused: Record<string, number>; closed: Record<string, number> };
  /** The agent listener's Attest rate limit (nodes/attest-limiter.ts): refusals by cause. */
  attestRefusals?(): { rate: number; sources: number };
}

export class ServerMetrics {
  readonly registry = new Registry();
  private sources: MetricsSources | undefined;
  private readonly svidsIssued: Counter<'kind' | 'reason'>;
  private readonly refusals: Counter<'method' | 'reason'>;
  private readonly revocations: Counter<'cause'>;
  private readonly caEvents: Counter<'kind' | 'phase'>;
  private readonly firstSvid: Histogram;
  private readonly fetch: Histogram<'method'>;
  private readonly attestation: Histogram;
  private readonly fanout: Histogram;
  private readonly datastoreWrite: Histogram<'op'>;
  private readonly auditWrite: Histogram<'durable'>;

  constructor() {
    const registers = [this.registry];
    this.svidsIssued = new Counter({ name: 'agentid_svids_issued_total', help: 'SVIDs minted, by kind and why (new, half_life, changed, expired)', labelNames: ['kind', 'reason'], registers });
    this.refusals = new Counter({ name: 'agentid_attestation_refusals_total', help: 'Workload API calls refused, by method and reason', labelNames: ['method', 'reason'], registers });
    this.revocations = new Counter({ name: 'agentid_revocations_total', help: 'SPIFFE IDs put on the deny list, by cause (task or id)', labelNames: ['cause'], registers });
    this.caEvents = new Counter({ name: 'agentid_ca_events_total', help: 'CA and JWT key slot changes (rotation and operator actions)', labelNames: ['kind', 'phase'], registers });
    this.firstSvid = new Histogram({ name: 'agentid_first_svid_seconds', help: 'FetchX509SVID: from the call to the first SVID sent', buckets: FAST_BUCKETS, registers });
    this.fetch = new Histogram({ name: 'agentid_fetch_seconds', help: 'Workload API calls: until the answer (unary) or first message (streams)', labelNames: ['method'], buckets: FAST_BUCKETS, registers });
    this.attestation = new Histogram({ name: 'agentid_attestation_seconds', help: 'Attesting a caller from /proc', buckets: FAST_BUCKETS, registers });
    this.fanout = new Histogram({ name: 'agentid_fanout_seconds', help: 'From a state change to the end of its fan-out to the streams it affects (minting included)', buckets: [...FAST_BUCKETS, 5, 10], registers });
    this.datastoreWrite = new Histogram({ name: 'agentid_datastore_write_seconds', help: 'Datastore writes, by store and operation', labelNames: ['op'], buckets: FAST_BUCKETS, registers });
    this.auditWrite = new Histogram({ name: 'agentid_audit_write_seconds', help: 'Audit trail writes (durable ones include fsync)', labelNames: ['durable'], buckets: FAST_BUCKETS, registers });

    const self = this;
    new Gauge({ name: 'agentid_connections_open', help: 'Open connections on the Workload API and admin sockets', registers, collect() { this.set(self.sources?.openConnections() ?? 0); } });
    new Gauge({ name: 'agentid_streams_open', help: 'Open Workload API streams', registers, collect() { this.set(self.sources?.openStreams() ?? 0); } });
    // Totals kept by the limiter, copied at scrape time (refusals are counted there, never audited one by one).
    new Counter({
      name: 'agentid_workload_limit_refusals_total',
      help: 'Workload API connections and calls refused by a limit (connections, descriptors, streams, requests, headers)',
      labelNames: ['kind'],
      registers,
      collect() {
        this.reset();
        for (const [kind, n] of Object.entries(self.sources?.workloadLimits?.().refused ?? {})) this.inc({ kind }, n);
      },
    });
    new Counter({
      name: 'agentid_agent_attest_refusals_total',
      help: 'Attest calls on the agent listener refused by its rate limit: a source over its rate, or a new source while the table of sources was full',
      labelNames: ['cause'],
      registers,
      collect() {
        this.reset();
        for (const [cause, n] of Object.entries(self.sources?.attestRefusals?.() ?? {})) this.inc({ cause }, n);
      },
    });
    new Counter({
      name: 'agentid_workload_connections_closed_total',
      help: 'Workload API connections closed by the server: no call started in time, or idle too long',
      labelNames: ['reason'],
      registers,
      collect() {
        this.reset();
        for (const [reason, n] of Object.entries(self.sources?.workloadLimits?.().closed ?? {})) this.inc({ reason }, n);
      },
    });
    new Gauge({
      name: 'agentid_authority_expiry_seconds',
      help: 'Seconds until the CA or JWT key in each slot expires (the soonest, when a slot holds several)',
      labelNames: ['kind', 'slot'],
      registers,
      collect() {
        this.reset();
        if (!self.sources) return;
        const now = self.sources.now();
        const soonest = new Map<string, { kind: string; slot: string; left: number }>();
        for (const a of self.sources.authorities()) {
          const key = `${a.kind}/${a.slot}`;
          const left = (a.notAfter - now) / 1000;
          if (!soonest.has(key) || left < soonest.get(key)!.left) soonest.set(key, { kind: a.kind, slot: a.slot, left });
        }
        for (const s of soonest.values()) this.set({ kind: s.kind, slot: s.slot }, s.left);
      },
    });
  }

  /** Where the gauges read from; set once the server's parts exist. */
  watch(sources: MetricsSources): void {
    this.sources = sources;
  }

  /** Process metrics (CPU, memory, event loop lag, open and max file descriptors), agentid_ prefixed. */
  collectProcessMetrics(): void {
    collectDefaultMetrics({ register: this.registry, prefix: 'agentid_' });
  }

  /** The audit trail's event stream: counts by type. */
  readonly auditObserver = {
    appended: (event: AuditEventInput) => {
      switch (event.type) {
        case 'svid.issued':
          this.svidsIssued.inc({ kind: event.kind, reason: 'new' });
          break;
        case 'svid.rotated':
          this.svidsIssued.inc({ kind: event.kind, reason: ROTATION_REASONS.has(event.reason) ? event.reason : 'other' });
          break;
        case 'attestation.refused':
          this.refusals.inc({ method: methodOf(event.reason), reason: refusalReason(event.reason) });
          break;
        case 'revocation.added':
          this.revocations.inc({ cause: 'id' });
          break;
        case 'task.revoked':
          this.revocations.inc({ cause: 'task' });
          break;
        case 'ca.rotated':
          this.caEvents.inc({ kind: event.kind, phase: event.phase });
          break;
        default:
          break;
      }
    },
    wrote: (durable: boolean, elapsedSeconds: number) => this.auditWrite.observe({ durable: String(durable) }, elapsedSeconds),
  };

  /** Times an async function (attestation). */
  timeAttestation<A extends unknown[], R>(fn: (...args: A) => Promise<R>): (...args: A) => Promise<R> {
    return async (...args) => {
      const t0 = performance.now();
      try {
        return await fn(...args);
      } finally {
        this.attestation.observe(seconds(t0));
      }
    };
  }

  /**
   * Times each change given to the stream hub until its fan-out is done: the hub only marks streams
   * in `changed()`/`refresh()` and pushes later, in slices.
   */
  timeFanout<T extends { changed(change: never): void; refresh(): void; idle(): Promise<void> }>(target: T): T {
    const timed = <A extends unknown[]>(fn: (...args: A) => void) => (...args: A) => {
      const t0 = performance.now();
      fn(...args);
      void target.idle().then(() => this.fanout.observe(seconds(t0)));
    };
    target.changed = timed(target.changed.bind(target));
    target.refresh = timed(target.refresh.bind(target));
    return target;
  }

  /**
   * The datastore with every write timed (methods named like writes, on each store), sync or async:
   * a Promise is timed until it settles.
   */
  timeDatastore<D extends object>(datastore: D): D {
    const WRITES = /^(create|update|delete|add|record|finish|prune|remove|put|set|bind|end)/;
    const wrapStore = (name: string, store: object) =>
      new Proxy(store, {
        get: (target, prop, receiver) => {
          const value = Reflect.get(target, prop, receiver);
          if (typeof value !== 'function') return value;
          // Called on the store itself, never on the proxy (class stores may hold #private state).
          if (typeof prop !== 'string' || !WRITES.test(prop)) return value.bind(target);
          const op = `${name}.${prop}`;
          return (...args: unknown[]) => {
            const t0 = performance.now();
            const done = () => this.datastoreWrite.observe({ op }, seconds(t0));
            let result: unknown;
            try {
              result = value.apply(target, args);
            } catch (err) {
              done();
              throw err;
            }
            if (result instanceof Promise) return result.finally(done);
            done();
            return result;
          };
        },
      });
    const stores = new Map<PropertyKey, object>();
    // Writes inside a transaction are timed too, each store call on the transaction's own stores.
    const wrapTransaction = (tx: object) =>
      new Proxy(tx, {
        get: (target, prop, receiver) => {
          const value = Reflect.get(target, prop, receiver);
          return value !== null && typeof value === 'object' && typeof prop === 'string' ? wrapStore(prop, value) : value;
        },
      });
    return new Proxy(datastore, {
      get: (target, prop, receiver) => {
        const value = Reflect.get(target, prop, receiver);
        if (prop === 'transaction' && typeof value === 'function') {
          return (fn: (tx: object) => unknown) => value.call(target, (tx: object) => fn(wrapTransaction(tx)));
        }
        if (typeof value === 'function') return value.bind(target);
        if (value === null || typeof value !== 'object' || typeof prop !== 'string') return value;
        if (!stores.has(prop)) stores.set(prop, wrapStore(prop, value));
        return stores.get(prop);
      },
    });
  }

  /** Workload API handlers with first-message (streams) and answer (unary) latency. */
  instrumentWorkload(handlers: grpc.UntypedServiceImplementation): grpc.UntypedServiceImplementation {
    const out: grpc.UntypedServiceImplementation = {};
    for (const [method, handler] of Object.entries(handlers)) {
      const fn = handler as (...args: any[]) => unknown;
      // One labelled child per method, bound once: prom-client otherwise hashes a labels object
      // on every call (measurable at tens of thousands of FetchJWTSVID calls a second).
      const timer = this.fetch.labels({ method: WORKLOAD_METHODS.has(method) ? method : 'other' });
      const isX509 = method === 'FetchX509SVID';
      out[method] = (call: any, callback?: (...a: unknown[]) => void) => {
        const t0 = performance.now();
        if (typeof callback === 'function') {
          return fn(call, (err: unknown, value: unknown, trailer?: unknown, flags?: unknown) => {
            if (!err) timer.observe(seconds(t0));
            callback(err, value, trailer, flags);
          });
        }
        // Only the first message is timed: then the call's own write is back (a stream open for
        // days would otherwise keep this wrapper and its closures for nothing), so it runs once.
        // Put back by assignment, not `delete`: deleting a property turns the call object into a
        // dictionary (about 800 bytes more per open stream).
        const write = call.write;
        call.write = (...args: unknown[]) => {
          call.write = write;
          const elapsed = seconds(t0);
          timer.observe(elapsed);
          if (isX509) this.firstSvid.observe(elapsed);
          return call.write(...args);
        };
        return fn(call);
      };
    }
    return out;
  }

  routes(): OpsRoutes {
    return new Map([
      ['/metrics', async () => ({ status: 200, contentType: this.registry.contentType, body: await this.registry.metrics() })],
    ]);
  }
}
