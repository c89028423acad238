import type { Clock } from '../common/clock.js';
import type { Logger } from '../common/logger.js';
import type { MintedJwtSvid, MintedX509Svid } from '../ca/authority.js';
import type { SpiffeId } from '../spiffe/spiffe-id.js';
import type { IssuanceRecord } from '../datastore/types.js';
import type { Identity } from './identity.js';
import { cappedTtl, renewalTime } from './renewal.js';

/** The CA operations the issuer needs (ca/authority.ts provides them). */
export interface SvidMinter {
  mintX509Svid(req: { spiffeId: SpiffeId; ttlMs: number; dnsNames?: string[] }): MintedX509;
  mintJwtSvid(req: { spiffeId: SpiffeId; audience: string[]; ttlMs: number }): MintedJwt;
}

/** What the CA returns for one mint (ca/authority.ts defines them). */
export type MintedX509 = MintedX509Svid;
export type MintedJwt = MintedJwtSvid;

/** Who caused a mint, for the audit trail. */
export interface MintCause {
  pid: number;
  uid: number;
}

export interface IssuanceEvents {
  x509Issued(identity: Identity, svid: MintedX509, cause: MintCause, previous: MintedX509 | undefined, reason: string): void;
  jwtIssued(identity: Identity, svid: MintedJwt, audience: string[], cause: MintCause): void;
}

interface CachedX509 {
  fingerprint: string;
  svid: MintedX509;
  renewAt: number;
}

interface CachedJwt {
  svid: MintedJwt;
  renewAt: number;
}

export interface SvidCacheDeps {
  minter: SvidMinter;
  /**
   * Records a minted SVID's issuance. A Promise means the record is not durable yet: the SVID is
   * handed out only once it resolves (see recorded()).
   */
  recordIssuance: (record: IssuanceRecord) => void | Promise<void>;
  events: IssuanceEvents;
  clock: Clock;
  logger: Logger;
  /** In [0, 1); injectable so rotation timing is reproducible in tests. */
  random?: () => number;
}

/**
 * Cached SVIDs by key, also found by SPIFFE ID: a revocation drops one identity's SVIDs without
 * a scan of every cached one (an ended task is a revocation, and thousands may be cached).
 */
class CachedSvids<V extends { svid: { spiffeId: string } }> {
  private readonly byKey = new Map<string, V>();
  private readonly keysOf = new Map<string, Set<string>>();

  get size(): number {
    return this.byKey.size;
  }

  get(key: string): V | undefined {
    return this.byKey.get(key);
  }

  set(key: string, value: V): void {
    this.delete(key);
    this.byKey.set(key, value);
    let keys = this.keysOf.get(value.svid.spiffeId);
    if (!keys) this.keysOf.set(value.svid.spiffeId, (keys = new Set()));
    keys.add(key);
  }

  delete(key: string): boolean {
    const old = this.byKey.get(key);
    if (!old) return false;
    this.byKey.delete(key);
    const keys = this.keysOf.get(old.svid.spiffeId)!;
    keys.delete(key);
    if (keys.size === 0) this.keysOf.delete(old.svid.spiffeId);
    return true;
  }

  /** Drops every entry of the SPIFFE ID; true when there was one. */
  deleteSpiffeId(spiffeId: string): boolean {
    const keys = this.keysOf.get(spiffeId);
    if (!keys) return false;
    for (const key of [...keys]) this.delete(key);
    return true;
  }

  clear(): void {
    this.byKey.clear();
    this.keysOf.clear();
  }

  keys(): IterableIterator<string> {
    return this.byKey.keys();
  }

  values(): IterableIterator<V> {
    return this.byKey.values();
  }

  [Symbol.iterator](): IterableIterator<[string, V]> {
    return this.byKey.entries();
  }
}

/**
 * One X.509-SVID per identity, shared by every caller entitled to it (as SPIRE's agent does), so a
 * rotation costs one signature per identity, not per stream. JWT-SVIDs are cached per identity and
 * audience set until their half-life.
 */
export class SvidCache {
  private readonly x509 = new CachedSvids<CachedX509>();
  /** X.509-SVIDs whose issuance record is not durable yet, until it is. */
  private readonly unrecorded = new WeakMap<MintedX509, Promise<void>>();
  private readonly jwt = new CachedSvids<CachedJwt>();
  /**
   * Earliest renewAt of the cached X.509-SVIDs, kept as SVIDs are added (the scheduler asks after
   * every admin call); undefined once one was dropped (found again by a scan on the next question).
   */
  private earliestRenewal: { at: number | undefined } | undefined = { at: undefined };
  private generation = 0;
  /** fingerprint() per identity object (never changed once built: a change builds a new one), for this generation. */
  private readonly fingerprints = new WeakMap<Identity, { generation: number; value: string }>();
  private readonly random: () => number;

  constructor(private readonly deps: SvidCacheDeps) {
    this.random = deps.random ?? Math.random;
  }

  /** Returns the identity's current SVID, minting a new one when absent, due for renewal, or stale. */
  x509For(identity: Identity, cause: MintCause): MintedX509 {
    const now = this.deps.clock.now();
    const fingerprint = this.fingerprint(identity);
    const cached = this.x509.get(identity.key);
    if (cached && cached.fingerprint === fingerprint && now < cached.renewAt && now < cached.svid.notAfter) {
      return cached.svid;
    }
    const ttlMs = cappedTtl(now, identity.x509TtlMs, identity.notAfterCap);
    const svid = this.deps.minter.mintX509Svid({ spiffeId: identity.spiffeId, ttlMs, dnsNames: identity.dnsNames });
    const recording = this.deps.recordIssuance({
      kind: 'x509',
      serial: svid.serial,
      spiffeId: svid.spiffeId,
      issuerId: svid.issuerId,
      issuedAt: now,
      notAfter: svid.notAfter,
      task: identity.task ? `${identity.task.agent}/${identity.task.id}` : null,
    });
    if (recording) {
      this.unrecorded.set(svid, recording);
      // Whoever hands the SVID out sees a failure; an SVID never handed out needs no answer.
      recording.then(() => this.unrecorded.delete(svid), () => undefined);
    }
    const reason = !cached ? 'new' : cached.fingerprint !== fingerprint ? 'changed' : now >= cached.svid.notAfter ? 'expired' : 'half_life';
    this.deps.events.x509Issued(identity, svid, cause, cached?.svid, reason);
    const renewAt = renewalTime(svid.notBefore, svid.notAfter, this.random());
    // Replacing an entry may have removed the earliest renewal: scan again on the next question.
    if (cached) this.earliestRenewal = undefined;
    else if (this.earliestRenewal && (this.earliestRenewal.at === undefined || renewAt < this.earliestRenewal.at)) this.earliestRenewal = { at: renewAt };
    this.x509.set(identity.key, { fingerprint, svid, renewAt });
    return svid;
  }

  /**
   * Settles once the SVID's issuance record is durable (a CRL can list it after any crash);
   * undefined when it already is. Rejects when it could not be made durable: do not hand it out.
   */
  recorded(svid: MintedX509): Promise<void> | undefined {
    return this.unrecorded.get(svid);
  }

  jwtFor(identity: Identity, audience: string[], cause: MintCause): MintedJwt {
    const now = this.deps.clock.now();
    const key = `${this.fingerprint(identity)}|${audienceKey(audience)}`;
    const cached = this.jwt.get(key);
    if (cached && now < cached.renewAt) return cached.svid;
    const ttlMs = cappedTtl(now, identity.jwtTtlMs, identity.notAfterCap);
    const svid = this.deps.minter.mintJwtSvid({ spiffeId: identity.spiffeId, audience, ttlMs });
    this.deps.recordIssuance({
      kind: 'jwt',
      serial: svid.jti,
      spiffeId: svid.spiffeId,
      issuerId: svid.kid,
      issuedAt: now,
      notAfter: svid.expiresAt,
      task: identity.task ? `${identity.task.agent}/${identity.task.id}` : null,
    });
    this.deps.events.jwtIssued(identity, svid, audience, cause);
    this.jwt.set(key, { svid, renewAt: renewalTime(svid.issuedAt, svid.expiresAt, this.random()) });
    return svid;
  }

  /** Earliest renewal among cached X.509-SVIDs; the rotation loop wakes then. */
  nextRenewalAt(): number | undefined {
    if (!this.earliestRenewal) {
      let next: number | undefined;
      for (const c of this.x509.values()) if (next === undefined || c.renewAt < next) next = c.renewAt;
      this.earliestRenewal = { at: next };
    }
    return this.earliestRenewal.at;
  }

  /** Identity keys whose X.509-SVID is due for renewal (or expired) at `now`. */
  dueKeys(now: number): string[] {
    const out: string[] = [];
    for (const [key, c] of this.x509) if (now >= c.renewAt || now >= c.svid.notAfter) out.push(key);
    return out;
  }

  /** A new signing CA (or key) is active: every SVID is re-minted on next use. */
  invalidateAll(): void {
    this.generation++;
    this.jwt.clear();
  }

  /** Drops SVIDs signed by these CA or JWT key IDs (tainted after a compromise): re-minted on next use. */
  forgetIssuers(ids: ReadonlySet<string>): void {
    for (const [key, c] of this.x509) if (ids.has(c.svid.issuerId) && this.x509.delete(key)) this.earliestRenewal = undefined;
    for (const [key, c] of this.jwt) if (ids.has(c.svid.kid)) this.jwt.delete(key);
  }

  /** How many cached SVIDs these CA or JWT key IDs signed. */
  countIssuedBy(ids: ReadonlySet<string>): number {
    let n = 0;
    for (const c of this.x509.values()) if (ids.has(c.svid.issuerId)) n++;
    for (const c of this.jwt.values()) if (ids.has(c.svid.kid)) n++;
    return n;
  }

  /** Drops cached SVIDs of a SPIFFE ID (revoked), so nothing cached is ever served again. */
  forgetSpiffeId(spiffeId: string): void {
    if (this.x509.deleteSpiffeId(spiffeId)) this.earliestRenewal = undefined;
    this.jwt.deleteSpiffeId(spiffeId);
  }

  /** Keeps only identities still in use by some stream, plus JWTs that are not yet expired. */
  retain(inUse: { has(key: string): boolean }): void {
    for (const key of this.x509.keys()) if (!inUse.has(key) && this.x509.delete(key)) this.earliestRenewal = undefined;
    const now = this.deps.clock.now();
    for (const [key, c] of this.jwt) if (c.svid.expiresAt <= now) this.jwt.delete(key);
  }

  private fingerprint(identity: Identity): string {
    const known = this.fingerprints.get(identity);
    if (known?.generation === this.generation) return known.value;
    const value = [
      this.generation,
      identity.key,
      identity.spiffeId.toString(),
      identity.x509TtlMs,
      identity.jwtTtlMs,
      identity.notAfterCap ?? '',
      identity.dnsNames.join(','),
    ].join('|');
    this.fingerprints.set(identity, { generation: this.generation, value });
    return value;
  }
}

/** The audiences of a JWT-SVID as part of its cache key: order does not matter. */
function audienceKey(audience: readonly string[]): string {
  let key = audienceKeys.get(audience);
  if (key === undefined) audienceKeys.set(audience, (key = [...audience].sort().join('\u0000')));
  return key;
}
/** By audience list: a repeated FetchJWTSVID request brings the same list (workload/service.ts). */
const audienceKeys = new WeakMap<readonly string[], string>();
