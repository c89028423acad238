import type { Clock } from '../common/clock.js';
import { AgentIdError, unavailable } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { Secret } from '../common/secret.js';
import { generateLeafKeyPair } from '../ca/keys.js';
import type { Identity } from '../issuer/identity.js';
import type { MintCause, MintedJwt, MintedX509 } from '../issuer/svid-cache.js';
import { renewalTime } from '../issuer/renewal.js';
import { Certificate } from '../verify/certificate.js';
import type { WireX509SvidRequest, WireX509SvidResult } from './node-client.js';

/** The server's mint calls, as the agent reaches them; undefined while it has no connection. */
export interface RemoteMinter {
  mintX509Svids(requests: WireX509SvidRequest[]): Promise<WireX509SvidResult[]>;
  mintJwtSvid(req: { entry_id: string; task_agent: string; task_id: string; audience: string[] }): Promise<{ token: string; expires_at: number }>;
}

/** Keys whose usable SVID appeared, was replaced, or was lost (expired, no longer wanted). */
export interface SvidChanges {
  appeared: string[];
  replaced: string[];
  lost: string[];
}

export interface RemoteSvidsDeps {
  minter: () => RemoteMinter | undefined;
  clock: Clock;
  logger: Logger;
  onChange: (changes: SvidChanges) => void;
  /** Public keys per MintX509Svids call. */
  batchSize?: number;
  /** An identity the server refused (or a failed call) is asked for again after this long. */
  retryMs?: number;
  random?: () => number;
}

interface HeldX509 {
  fingerprint: string;
  svid: MintedX509;
  renewAt: number;
}

interface HeldJwt {
  svid: MintedJwt;
  renewAt: number;
}

const DEFAULT_BATCH = 200;
const DEFAULT_RETRY_MS = 5000;
/** setTimeout's ceiling is about 24.8 days; the pump also wakes on every change. */
const MAX_SLEEP_MS = 6 * 60 * 60 * 1000;

function fingerprint(identity: Identity): string {
  return [identity.key, identity.spiffeId.toString(), identity.x509TtlMs, identity.jwtTtlMs, identity.notAfterCap ?? '', identity.dnsNames.join(',')].join('|');
}

function mintTarget(identity: Identity): { entry_id: string; task_agent: string; task_id: string } {
  return identity.task
    ? { entry_id: '', task_agent: identity.task.agent, task_id: identity.task.id }
    : { entry_id: identity.entryId ?? '', task_agent: '', task_id: '' };
}

function decodeJwtPart(part: string | undefined): Record<string, unknown> {
  const value = JSON.parse(Buffer.from(part ?? '', 'base64url').toString('utf8')) as unknown;
  if (typeof value !== 'object' || value === null) throw new Error('not a JSON object');
  return value as Record<string, unknown>;
}

/**
 * The agent's SVIDs, fetched from its server ahead of need. The stream hub's minter is synchronous,
 * so the agent never mints on a request: it keeps one X.509-SVID for every identity it can serve
 * (`want`), fetched in batches with keys generated here (only public keys leave the host), renewed
 * at half-life, and reports what appeared, changed or expired so the streams holding it are
 * refreshed. While the server is unreachable it keeps serving what it holds until it expires.
 * JWT-SVIDs are fetched on demand and cached per identity and audience until half-life.
 */
export class RemoteSvids {
  private readonly held = new Map<string, HeldX509>();
  private readonly wanted = new Map<string, Identity>();
  private readonly retryAt = new Map<string, number>();
  private readonly waiters = new Map<string, (() => void)[]>();
  private readonly replacedKeys = new Set<string>();
  private readonly jwt = new Map<string, HeldJwt>();
  private readonly jwtInflight = new Map<string, Promise<MintedJwt>>();
  private pumping = false;
  private again = false;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private readonly random: () => number;

  constructor(private readonly deps: RemoteSvidsDeps) {
    this.random = deps.random ?? Math.random;
  }

  /* The stream hub's view (HubDeps.cache). */

  x509For(identity: Identity, _cause?: MintCause): MintedX509 {
    const held = this.usable(identity);
    if (!held) throw unavailable(`no X.509-SVID for ${identity.spiffeId.toString()} has arrived from the agentid server yet`);
    return held.svid;
  }

  /** Keys whose SVID was replaced since the last call (the hub re-renders the streams holding them). */
  dueKeys(_now: number): string[] {
    const keys = [...this.replacedKeys];
    this.replacedKeys.clear();
    return keys;
  }

  /** What is held follows `want`, not the open streams: SVIDs are kept ready before anyone asks. */
  retain(): void {}

  /** True when an SVID for this identity (as it is now) is held and unexpired. */
  has(identity: Identity): boolean {
    return this.usable(identity) !== undefined;
  }

  get size(): number {
    return this.held.size;
  }

  /** Every identity the node may serve now; SVIDs of the others are dropped. */
  want(identities: readonly Identity[]): void {
    this.wanted.clear();
    for (const i of identities) this.wanted.set(i.key, i);
    const lost: string[] = [];
    for (const key of [...this.held.keys()]) {
      if (!this.wanted.has(key)) {
        this.held.delete(key);
        lost.push(key);
      }
    }
    for (const key of [...this.retryAt.keys()]) if (!this.wanted.has(key)) this.retryAt.delete(key);
    for (const key of [...this.jwt.keys()]) if (!this.wanted.has(key.split('\u0000')[0]!)) this.jwt.delete(key);
    if (lost.length > 0) this.deps.onChange({ appeared: [], replaced: [], lost });
    this.kick();
  }

  /**
   * Resolves once each identity has an SVID, or its fetch failed, or `timeoutMs` passed: a new
   * caller's first answer waits for its SVIDs instead of missing them.
   */
  async ensure(identities: readonly Identity[], timeoutMs: number): Promise<void> {
    const missing = identities.filter((i) => !this.has(i));
    if (missing.length === 0) return;
    for (const i of missing) {
      if (!this.wanted.has(i.key)) this.wanted.set(i.key, i);
      this.retryAt.delete(i.key);
    }
    let timer: NodeJS.Timeout | undefined;
    const arrivals = Promise.all(
      missing.map((i) => new Promise<void>((resolve) => {
        const list = this.waiters.get(i.key) ?? [];
        list.push(resolve);
        this.waiters.set(i.key, list);
      })),
    );
    this.kick();
    await Promise.race([arrivals, new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs)))]);
    clearTimeout(timer);
  }

  /** Fetch now what is missing or due (after a reconnect, or a change of what is wanted). */
  kick(): void {
    if (this.closed) return;
    if (this.pumping) {
      this.again = true;
      return;
    }
    this.pumping = true;
    void this.pump().finally(() => {
      this.pumping = false;
      if (this.again && !this.closed) {
        this.again = false;
        this.kick();
      } else {
        this.sleep();
      }
    });
  }

  /** The server is reachable again: everything missing or due is fetched now. */
  retryNow(): void {
    this.retryAt.clear();
    this.kick();
  }

  /** Eviction or shutdown: nothing is served or fetched any more. */
  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.held.clear();
    this.jwt.clear();
    this.wanted.clear();
    for (const list of this.waiters.values()) for (const w of list) w();
    this.waiters.clear();
  }

  async jwtFor(identity: Identity, audience: string[], _cause: MintCause): Promise<MintedJwt> {
    const key = `${identity.key}\u0000${fingerprint(identity)}\u0000${[...audience].sort().join('\u0000')}`;
    const now = this.deps.clock.now();
    const cached = this.jwt.get(key);
    if (cached && now < cached.renewAt) return cached.svid;
    let inflight = this.jwtInflight.get(key);
    if (!inflight) {
      inflight = this.fetchJwt(identity, audience).finally(() => this.jwtInflight.delete(key));
      this.jwtInflight.set(key, inflight);
    }
    try {
      const svid = await inflight;
      this.jwt.set(key, { svid, renewAt: renewalTime(svid.issuedAt, svid.expiresAt, this.random()) });
      return svid;
    } catch (err) {
      // Server unreachable: a cached token is still good until it expires.
      if (cached && this.deps.clock.now() < cached.svid.expiresAt - 1000) return cached.svid;
      throw err;
    }
  }

  private async fetchJwt(identity: Identity, audience: string[]): Promise<MintedJwt> {
    const minter = this.deps.minter();
    if (!minter) throw unavailable('the agentid server is unreachable; no JWT-SVID can be issued now');
    const res = await minter.mintJwtSvid({ ...mintTarget(identity), audience });
    const [h, p] = res.token.split('.');
    let header: Record<string, unknown>;
    let payload: Record<string, unknown>;
    try {
      header = decodeJwtPart(h);
      payload = decodeJwtPart(p);
    } catch {
      throw new AgentIdError('internal', 'the agentid server sent a JWT-SVID that does not parse');
    }
    if (payload.sub !== identity.spiffeId.toString()) throw new AgentIdError('internal', `the agentid server sent a JWT-SVID for ${String(payload.sub)}, not ${identity.spiffeId.toString()}`);
    return {
      spiffeId: identity.spiffeId.toString(),
      token: new Secret(res.token),
      jti: String(payload.jti ?? ''),
      kid: String(header.kid ?? ''),
      issuedAt: typeof payload.iat === 'number' ? payload.iat * 1000 : this.deps.clock.now(),
      expiresAt: res.expires_at,
    };
  }

  private usable(identity: Identity): HeldX509 | undefined {
    const held = this.held.get(identity.key);
    if (!held || held.fingerprint !== fingerprint(identity) || this.deps.clock.now() >= held.svid.notAfter) return undefined;
    return held;
  }

  /** Wanted identities without a usable SVID, or past their renewal time, and not waiting out a retry. */
  private due(now: number): Identity[] {
    const out: Identity[] = [];
    for (const [key, identity] of this.wanted) {
      if ((this.retryAt.get(key) ?? 0) > now) continue;
      const held = this.usable(identity);
      if (!held || now >= held.renewAt) out.push(identity);
    }
    return out;
  }

  private async pump(): Promise<void> {
    this.dropExpired();
    const batch = this.deps.batchSize ?? DEFAULT_BATCH;
    for (;;) {
      if (this.closed) return;
      const now = this.deps.clock.now();
      const due = this.due(now).slice(0, batch);
      if (due.length === 0) return;
      const minter = this.deps.minter();
      if (!minter) {
        // Disconnected: the connection's return calls retryNow().
        this.backOff(due);
        this.settle(due);
        return;
      }
      const keys = due.map(() => generateLeafKeyPair('ec-p256'));
      let results: WireX509SvidResult[];
      try {
        results = await minter.mintX509Svids(due.map((identity, i) => ({ ...mintTarget(identity), public_key: keys[i]!.spki })));
        if (results.length !== due.length) throw new AgentIdError('internal', `the agentid server answered ${results.length} of ${due.length} X.509-SVID requests`);
      } catch (err) {
        this.deps.logger.warn({ err: (err as Error).message, count: due.length }, 'agent: could not fetch X.509-SVIDs; serving what is held');
        this.backOff(due);
        this.settle(due);
        return;
      }
      const changes: SvidChanges = { appeared: [], replaced: [], lost: [] };
      due.forEach((identity, i) => {
        const result = results[i]!;
        if (result.error_code) {
          this.deps.logger.warn({ spiffeId: identity.spiffeId.toString(), code: result.error_code, reason: result.error_message }, 'agent: the server refused an X.509-SVID');
          this.backOff([identity]);
          return;
        }
        try {
          const svid = this.accept(identity, result, keys[i]!.spki, keys[i]!.pkcs8);
          // What is wanted may have changed while the call ran (entry updated, task ended).
          const current = this.wanted.get(identity.key);
          if (!current || fingerprint(current) !== fingerprint(identity)) return;
          const before = this.held.get(identity.key);
          this.held.set(identity.key, { fingerprint: fingerprint(identity), svid, renewAt: renewalTime(svid.notBefore, svid.notAfter, this.random()) });
          this.retryAt.delete(identity.key);
          (before && before.fingerprint === fingerprint(identity) && now < before.svid.notAfter ? changes.replaced : changes.appeared).push(identity.key);
        } catch (err) {
          this.deps.logger.error({ err: (err as Error).message, spiffeId: identity.spiffeId.toString() }, 'agent: refused an X.509-SVID the server sent');
          this.backOff([identity]);
        }
      });
      for (const key of changes.replaced) this.replacedKeys.add(key);
      if (changes.appeared.length + changes.replaced.length > 0) this.deps.onChange(changes);
      this.settle(due);
    }
  }

  /** The leaf must name the identity and certify the key generated for it. */
  private accept(identity: Identity, result: WireX509SvidResult, spki: Buffer, pkcs8: Secret<Buffer>): MintedX509 {
    if (result.cert_chain.length === 0) throw new Error('empty certificate chain');
    const chain = result.cert_chain.map((c) => Buffer.from(c));
    const leaf = new Certificate(chain[0]!);
    if (leaf.uriSans[0] !== identity.spiffeId.toString()) throw new Error(`the leaf names ${leaf.uriSans[0] ?? 'nothing'}`);
    if (!leaf.publicKey.export({ format: 'der', type: 'spki' }).equals(spki)) throw new Error('the leaf does not certify the key generated for it');
    if (leaf.notAfter <= this.deps.clock.now()) throw new Error('the leaf has already expired');
    return {
      spiffeId: identity.spiffeId.toString(),
      certDer: chain[0]!,
      chainDer: chain,
      privateKeyPkcs8: pkcs8,
      serial: leaf.serial,
      notBefore: leaf.notBefore,
      notAfter: leaf.notAfter,
      issuerId: leaf.authorityKeyId ?? '',
    };
  }

  private backOff(identities: readonly Identity[]): void {
    const at = this.deps.clock.now() + (this.deps.retryMs ?? DEFAULT_RETRY_MS) * (1 + this.random());
    for (const i of identities) this.retryAt.set(i.key, at);
  }

  private settle(identities: readonly Identity[]): void {
    for (const i of identities) {
      const list = this.waiters.get(i.key);
      if (!list) continue;
      this.waiters.delete(i.key);
      for (const w of list) w();
    }
  }

  /**
   * Held SVIDs past their notAfter are dropped; the streams holding them re-resolve without them.
   * Called on a timer of its own too: a fetch hanging on a dying connection must not delay it.
   */
  dropExpired(): void {
    const now = this.deps.clock.now();
    const lost: string[] = [];
    for (const [key, h] of this.held) {
      if (now >= h.svid.notAfter) {
        this.held.delete(key);
        lost.push(key);
      }
    }
    for (const [key, j] of this.jwt) if (now >= j.svid.expiresAt) this.jwt.delete(key);
    if (lost.length > 0) this.deps.onChange({ appeared: [], replaced: [], lost });
  }

  /** Sleeps until the next renewal, expiry or retry. */
  private sleep(): void {
    clearTimeout(this.timer);
    if (this.closed) return;
    const now = this.deps.clock.now();
    let next = now + MAX_SLEEP_MS;
    for (const h of this.held.values()) next = Math.min(next, h.renewAt, h.svid.notAfter);
    for (const at of this.retryAt.values()) next = Math.min(next, at);
    this.timer = setTimeout(() => this.kick(), Math.max(50, next - now));
    this.timer.unref();
  }
}
