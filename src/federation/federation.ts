import { createHash, randomInt } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Clock } from '../common/clock.js';
import { failedPrecondition, invalidArgument, permissionDenied, unavailable } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { BundleProfile, Config } from '../config/types.js';
import type { FederatedBundles } from '../issuer/trust-state.js';
import { SpiffeId, TrustDomain } from '../spiffe/spiffe-id.js';
import { JwtBundle, parseSpiffeBundle, X509Bundle } from '../verify/bundle.js';
import { pemBlocks } from '../verify/der.js';
import { verifyX509Svid } from '../verify/x509.js';
import { httpsFetch, type BundleFetcher } from './fetch.js';
import { readState, writeState, type StoredBundle } from './state-file.js';

/** One federation relationship, as configured. */
export type FederationRelationship = Config['federation'][number];

export type BundleSource = 'bootstrap' | 'state' | 'endpoint';

export interface FederationStatus {
  trustDomain: string;
  /** Time of the last accepted document. */
  lastSuccess: number | null;
  /** Why the last attempt failed or its document was ignored; null after a success. */
  lastError: string | null;
  /** spiffe_sequence of the held bundle. */
  sequence: number | null;
  /** null while not running. */
  nextPollAt: number | null;
  /** Where the held bundle came from; null when none is held. */
  source: BundleSource | null;
}

export const FEDERATION_LIMITS = {
  /** spiffe_refresh_hint is clamped to [min, max]: a hostile hint must not make us hammer or forget an endpoint. */
  minRefreshMs: 5_000,
  maxRefreshMs: 3_600_000,
  /** When a document carries no hint. */
  defaultRefreshMs: 300_000,
  /** First retry after a failure; doubles per consecutive failure, never beyond the refresh interval. */
  firstRetryMs: 5_000,
  timeoutMs: 10_000,
  maxBytes: 1024 * 1024,
} as const;

export interface FederationDeps {
  relationships: readonly FederationRelationship[];
  ownTrustDomain: TrustDomain | string;
  clock: Clock;
  logger: Logger;
  /** Called (synchronously, once per change) whenever a held bundle's content changes, with its trust domain. */
  onChange: (trustDomain: string) => void;
  fetch?: BundleFetcher;
  /** Last good bundles (JSON, 0600), so a restart keeps them. */
  stateFile?: string;
}

interface Held extends StoredBundle {
  source: BundleSource;
  x509Der: Buffer[];
  jwtJson: Buffer | undefined;
  /** Content identity (keys only, order-insensitive): decides whether onChange fires. */
  fingerprint: string;
}

interface Relationship {
  td: TrustDomain;
  url: URL;
  profile: BundleProfile;
  endpointId: SpiffeId | null;
  caPem: string | undefined;
  held: Held | undefined;
  lastSuccess: number | null;
  lastError: string | null;
  nextPollAt: number | null;
  failures: number;
}

function fingerprint(x509: X509Bundle, jwt: JwtBundle | undefined): string {
  const h = createHash('sha256');
  for (const hex of x509.authoritiesDer.map((d) => d.toString('hex')).sort()) h.update(`x509:${hex}\n`);
  if (jwt) {
    const keys = jwt.toJwkSet().keys.map((k) => JSON.stringify(k)).sort();
    for (const k of keys) h.update(`jwt:${k}\n`);
  } else h.update('jwt:unknown\n');
  return h.digest('hex');
}

function makeHeld(b: StoredBundle, source: BundleSource): Held {
  return {
    ...b,
    source,
    x509Der: b.x509.authoritiesDer,
    jwtJson: b.jwt ? Buffer.from(JSON.stringify(b.jwt.toJwkSet())) : undefined,
    fingerprint: fingerprint(b.x509, b.jwt),
  };
}

const isEmpty = (x509: X509Bundle, jwt: JwtBundle | undefined) => x509.authorities.length === 0 && (jwt?.authorities.size ?? 0) === 0;

const clamp = (v: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, v));

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Keeps the bundles of foreign trust domains fresh by polling their SPIFFE bundle endpoints.
 * Trust only ever narrows or moves forward through an authenticated endpoint: a failed fetch,
 * an unparseable or empty document, or a lower spiffe_sequence keeps the bundle already held.
 */
export class Federation implements FederatedBundles {
  private readonly rels = new Map<string, Relationship>();
  private readonly fetchFn: BundleFetcher;
  private counter = 0;
  private running: { abort: AbortController; loops: Promise<void>[] } | undefined;
  private writes: Promise<void> = Promise.resolve();

  constructor(private readonly deps: FederationDeps) {
    this.fetchFn = deps.fetch ?? httpsFetch;
    const own = typeof deps.ownTrustDomain === 'string' ? TrustDomain.parse(deps.ownTrustDomain) : deps.ownTrustDomain;
    for (const [i, r] of deps.relationships.entries()) {
      const rel = this.validate(r, `federation[${i}]`, own);
      this.rels.set(rel.td.name, rel);
    }
    const stored = deps.stateFile
      ? readState(deps.stateFile, new Map([...this.rels].map(([n, r]) => [n, r.td])), (msg, err) =>
          deps.logger.warn(err === undefined ? {} : { err: message(err) }, msg),
        )
      : new Map<string, StoredBundle>();
    // The stored bundle is newer than the bootstrap one: it was reached through it (or through
    // the Web PKI) and may already hold rotated roots the bootstrap file does not know.
    for (const [i, r] of deps.relationships.entries()) {
      const rel = this.rels.get(TrustDomain.parse(r.trustDomain).name)!;
      const fromState = stored.get(rel.td.name);
      if (fromState) rel.held = makeHeld(fromState, 'state');
      else if (r.bootstrapBundleFile) rel.held = makeHeld(this.readBootstrap(r.bootstrapBundleFile, rel.td, `federation[${i}]`), 'bootstrap');
      if (rel.held) this.counter++;
    }
  }

  private validate(r: FederationRelationship, what: string, own: TrustDomain): Relationship {
    const td = TrustDomain.parse(r.trustDomain);
    const w = `${what} (${td.name})`;
    if (td.equals(own)) {
      throw invalidArgument(`${w}: is our own trust domain; only foreign trust domains can be federated, or an endpoint could replace our own bundle`);
    }
    if (this.rels.has(td.name)) throw invalidArgument(`${w}: trust domain is listed twice`);
    let url: URL;
    try {
      url = new URL(r.bundleEndpointUrl);
    } catch (err) {
      throw invalidArgument(`${w}: bundle_endpoint_url is not a URL`, err);
    }
    if (url.protocol !== 'https:') throw invalidArgument(`${w}: bundle_endpoint_url must be an https URL`);
    if (url.username || url.password) throw invalidArgument(`${w}: bundle_endpoint_url must not carry credentials`);
    let endpointId: SpiffeId | null = null;
    let caPem: string | undefined;
    if (r.profile === 'https_spiffe') {
      if (!r.endpointSpiffeId) throw invalidArgument(`${w}: profile https_spiffe requires endpoint_spiffe_id`);
      endpointId = SpiffeId.parse(r.endpointSpiffeId);
      // The endpoint is authenticated with the bundle of the federated trust domain only.
      if (!endpointId.trustDomain.equals(td)) {
        throw invalidArgument(`${w}: endpoint_spiffe_id ${endpointId} must be in trust domain ${td.name}, whose bundle authenticates it`);
      }
      if (r.caFile) throw invalidArgument(`${w}: ca_file only applies to profile https_web`);
    } else if (r.profile === 'https_web') {
      if (r.endpointSpiffeId) throw invalidArgument(`${w}: endpoint_spiffe_id only applies to profile https_spiffe`);
      if (r.caFile) {
        caPem = this.readText(r.caFile, `${w}: ca_file`);
        if (pemBlocks(caPem, 'CERTIFICATE').length === 0) throw invalidArgument(`${w}: ca_file ${r.caFile} holds no CERTIFICATE block`);
      }
    } else {
      throw invalidArgument(`${w}: profile must be https_web or https_spiffe`);
    }
    return { td, url, profile: r.profile, endpointId, caPem, held: undefined, lastSuccess: null, lastError: null, nextPollAt: null, failures: 0 };
  }

  private readText(path: string, what: string): string {
    try {
      return readFileSync(path, 'utf8');
    } catch (err) {
      throw invalidArgument(`${what}: ${path} cannot be read`, err);
    }
  }

  private readBootstrap(path: string, td: TrustDomain, what: string): StoredBundle {
    const w = `${what} (${td.name}): bootstrap_bundle_file ${path}`;
    const text = this.readText(path, w);
    let b: StoredBundle;
    if (text.trimStart().startsWith('{')) {
      const doc = parseSpiffeBundle(td, text);
      b = { x509: doc.x509, jwt: doc.jwt, sequence: doc.sequence ?? null, refreshHintSeconds: doc.refreshHintSeconds ?? null, fetchedAt: 0 };
    } else {
      b = { x509: X509Bundle.fromPem(td, text), jwt: undefined, sequence: null, refreshHintSeconds: null, fetchedAt: 0 };
    }
    if (isEmpty(b.x509, b.jwt)) throw invalidArgument(`${w}: holds no keys`);
    return b;
  }

  // -- FederatedBundles ---------------------------------------------------------------------------

  x509(trustDomain: string): Buffer[] | undefined {
    const der = this.rels.get(trustDomain)?.held?.x509Der;
    return der && der.length > 0 ? der : undefined;
  }

  jwt(trustDomain: string): Buffer | undefined {
    return this.rels.get(trustDomain)?.held?.jwtJson;
  }

  version(): number {
    return this.counter;
  }

  status(): FederationStatus[] {
    return [...this.rels.values()]
      .map((r) => ({
        trustDomain: r.td.name,
        lastSuccess: r.lastSuccess,
        lastError: r.lastError,
        sequence: r.held?.sequence ?? null,
        nextPollAt: r.nextPollAt,
        source: r.held?.source ?? null,
      }))
      .sort((a, b) => a.trustDomain.localeCompare(b.trustDomain));
  }

  // -- lifecycle ----------------------------------------------------------------------------------

  /** Starts one polling loop per relationship; the first fetch happens at once. */
  start(): void {
    if (this.running) throw failedPrecondition('federation: already started');
    const abort = new AbortController();
    const loops = [...this.rels.values()].map((rel) => this.loop(rel, abort.signal));
    this.running = { abort, loops };
  }

  /** Ends every loop (aborting fetches in flight) and waits for them and for pending state writes. */
  async stop(): Promise<void> {
    const running = this.running;
    if (!running) return;
    this.running = undefined;
    running.abort.abort();
    await Promise.allSettled(running.loops);
    for (const rel of this.rels.values()) rel.nextPollAt = null;
    await this.writes;
  }

  private async loop(rel: Relationship, signal: AbortSignal): Promise<void> {
    rel.nextPollAt = this.deps.clock.now();
    while (!signal.aborted) {
      const delay = await this.poll(rel, signal);
      if (signal.aborted) return;
      rel.nextPollAt = this.deps.clock.now() + delay;
      try {
        await this.deps.clock.sleep(delay, signal);
      } catch {
        return;
      }
    }
  }

  /** One fetch; returns how long to wait before the next. Never throws. */
  private async poll(rel: Relationship, stop: AbortSignal): Promise<number> {
    const log = this.deps.logger;
    try {
      const body = await this.fetchWithTimeout(rel, stop);
      if (stop.aborted) return 0;
      this.accept(rel, body);
      rel.failures = 0;
      return this.refreshMs(rel);
    } catch (err) {
      if (stop.aborted) return 0;
      rel.failures++;
      rel.lastError = message(err);
      const delay = this.retryMs(rel);
      log.warn(
        { trustDomain: rel.td.name, url: rel.url.href, failures: rel.failures, retryInMs: delay, kept: rel.held?.source ?? 'none', err: rel.lastError },
        'federation: bundle refresh failed; keeping the held bundle',
      );
      return delay;
    }
  }

  private refreshMs(rel: Relationship): number {
    const hint = rel.held?.refreshHintSeconds;
    const { minRefreshMs, maxRefreshMs, defaultRefreshMs } = FEDERATION_LIMITS;
    return hint === null || hint === undefined ? defaultRefreshMs : clamp(hint * 1000, minRefreshMs, maxRefreshMs);
  }

  /** Exponential backoff with jitter, always sooner than the regular refresh. */
  private retryMs(rel: Relationship): number {
    const base = Math.min(this.refreshMs(rel), FEDERATION_LIMITS.firstRetryMs * 2 ** Math.min(rel.failures - 1, 16));
    // Equal jitter: many servers that lost the same endpoint do not come back in lockstep.
    const jittered = Math.floor(base / 2) + randomInt(Math.floor(base / 2) + 1);
    return Math.max(FEDERATION_LIMITS.minRefreshMs, jittered);
  }

  private async fetchWithTimeout(rel: Relationship, stop: AbortSignal): Promise<Buffer> {
    const ctl = new AbortController();
    const onStop = () => ctl.abort();
    stop.addEventListener('abort', onStop, { once: true });
    let timedOut = false;
    this.deps.clock.sleep(FEDERATION_LIMITS.timeoutMs, ctl.signal).then(
      () => {
        timedOut = true;
        ctl.abort();
      },
      () => undefined,
    );
    try {
      return await this.fetchFn({
        url: rel.url,
        profile: rel.profile,
        ca: rel.caPem,
        verifyPeer: rel.profile === 'https_spiffe' ? (chain) => this.verifyEndpoint(rel, chain) : undefined,
        maxBytes: FEDERATION_LIMITS.maxBytes,
        signal: ctl.signal,
      });
    } catch (err) {
      if (timedOut) throw unavailable(`bundle endpoint ${rel.url.href}: no complete response within ${FEDERATION_LIMITS.timeoutMs} ms`);
      throw err;
    } finally {
      stop.removeEventListener('abort', onStop);
      ctl.abort();
    }
  }

  /** https_spiffe: the endpoint's SVID must chain to the bundle we already hold for its trust domain. */
  private verifyEndpoint(rel: Relationship, chain: Buffer[]): void {
    const held = rel.held;
    if (!held || held.x509.authorities.length === 0) {
      throw failedPrecondition(
        `https_spiffe: no X.509 bundle is held for ${rel.td.name} to authenticate ${rel.url.href}; configure bootstrap_bundle_file`,
      );
    }
    const verified = verifyX509Svid(chain, held.x509, { now: this.deps.clock.now() });
    if (!verified.spiffeId.equals(rel.endpointId!)) {
      throw permissionDenied(`https_spiffe: ${rel.url.href} presented ${verified.spiffeId}, but endpoint_spiffe_id is ${rel.endpointId!.toString()}`);
    }
  }

  private accept(rel: Relationship, body: Buffer): void {
    const log = this.deps.logger;
    const now = this.deps.clock.now();
    // Parsed for this relationship's trust domain only: a document cannot speak for another one.
    const doc = parseSpiffeBundle(rel.td, body);
    if (isEmpty(doc.x509, doc.jwt)) throw invalidArgument(`SPIFFE bundle for ${rel.td.name}: the document holds no keys`);
    const old = rel.held;
    const sequence = doc.sequence ?? null;
    if (old?.sequence != null && sequence !== null && sequence < old.sequence) {
      throw failedPrecondition(`SPIFFE bundle for ${rel.td.name}: spiffe_sequence ${sequence} is lower than the held ${old.sequence}; document ignored`);
    }
    const next = makeHeld(
      { x509: doc.x509, jwt: doc.jwt, sequence, refreshHintSeconds: doc.refreshHintSeconds ?? null, fetchedAt: now },
      'endpoint',
    );
    const changed = next.fingerprint !== old?.fingerprint;
    if (changed && old?.sequence != null && sequence === old.sequence) {
      log.warn({ trustDomain: rel.td.name, sequence }, 'federation: same spiffe_sequence with different keys; accepted');
    }
    rel.held = next;
    rel.lastSuccess = now;
    rel.lastError = null;
    if (changed || old?.source !== 'endpoint' || old.sequence !== sequence || old.refreshHintSeconds !== next.refreshHintSeconds) {
      this.persist();
    }
    if (changed) {
      this.counter++;
      log.info(
        { trustDomain: rel.td.name, sequence, x509Authorities: doc.x509.authorities.length, jwtKeys: doc.jwt.authorities.size },
        'federation: bundle updated',
      );
      try {
        this.deps.onChange(rel.td.name);
      } catch (err) {
        log.error({ err: message(err) }, 'federation: onChange failed');
      }
    }
  }

  /** Writes are chained so an older snapshot can never land after a newer one. */
  private persist(): void {
    const path = this.deps.stateFile;
    if (!path) return;
    const snapshot = new Map<string, StoredBundle>();
    for (const [name, rel] of this.rels) {
      // Bootstrap bundles are not cached: their file is the source of truth until a fetch succeeds.
      if (rel.held && rel.held.source !== 'bootstrap') snapshot.set(name, rel.held);
    }
    this.writes = this.writes
      .then(() => writeState(path, snapshot))
      .catch((err: unknown) => this.deps.logger.error({ file: path, err: message(err) }, 'federation: writing the state file failed'));
  }
}
