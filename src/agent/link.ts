import type { Clock } from '../common/clock.js';
import { AgentIdError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { renewalTime } from '../issuer/renewal.js';
import type { TrustDomain } from '../spiffe/spiffe-id.js';
import { NodeClient, type WireSyncUpdate } from './node-client.js';
import { acceptNodeSvid, newNodeKey, type NodeIdentity } from './node-identity.js';

export interface ServerLinkDeps {
  server: { host: string; port: number };
  trustDomain: TrustDomain;
  /** Roots to verify the server with, read at every (re)connect: they follow CA rotations. */
  roots: () => Buffer[];
  identity: NodeIdentity;
  /** Persists a renewed node identity (before it is used). */
  saveIdentity: (identity: NodeIdentity) => Promise<void>;
  /** Central revision the local replica holds. */
  revision: () => Promise<number>;
  /** Applies one Sync update to the replica (one transaction). */
  apply: (update: WireSyncUpdate) => Promise<void>;
  onConnected: () => void;
  onDisconnected: (reason: string) => void;
  /** The server evicted this node (Sync said so, or refuses the node outright). */
  onEvicted: (reason: string) => void;
  clock: Clock;
  logger: Logger;
  random?: () => number;
  /** Reconnect backoff: first delay and cap (jittered: each wait is between half and all of it). */
  backoff?: { initialMs: number; maxMs: number };
}

const DEFAULT_BACKOFF = { initialMs: 500, maxMs: 30_000 };
/** A failed node SVID renewal is retried this soon (the SVID is still valid: half its life is left). */
const RENEW_RETRY_MS = 5000;

/**
 * The agent's connection to its server: the Sync stream (applied to the replica in order), the
 * node SVID's renewal at half-life (a fresh key each time, saved before use), and reconnection with
 * jittered exponential backoff. `connected` is true from the first update of a stream until it
 * breaks; while false the agent reports not-ready and serves what it holds.
 */
export class ServerLink {
  private client: NodeClient | undefined;
  private cancelSync: (() => void) | undefined;
  private connectedNow = false;
  private attempts = 0;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private renewTimer: NodeJS.Timeout | undefined;
  private applying: Promise<void> = Promise.resolve();
  private stopped = false;
  private identity: NodeIdentity;
  private lastError = 'not connected yet';
  private readonly random: () => number;
  private firstSyncDone!: () => void;
  /** Resolves when the first Sync update of this process has been applied. */
  readonly firstSync = new Promise<void>((resolve) => (this.firstSyncDone = resolve));

  constructor(private readonly deps: ServerLinkDeps) {
    this.identity = deps.identity;
    this.random = deps.random ?? Math.random;
  }

  get connected(): boolean {
    return this.connectedNow;
  }

  /** Why the link is down (for /ready), or undefined when up. */
  get downReason(): string | undefined {
    return this.connectedNow ? undefined : this.lastError;
  }

  get nodeIdentity(): NodeIdentity {
    return this.identity;
  }

  /** The current channel while connected (mint and task calls), else undefined. */
  get current(): NodeClient | undefined {
    return this.connectedNow ? this.client : undefined;
  }

  start(): void {
    this.scheduleRenewal();
    this.connect();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.renewTimer);
    this.dropChannel();
    this.connectedNow = false;
  }

  private dropChannel(): void {
    this.cancelSync?.();
    this.cancelSync = undefined;
    this.client?.close();
    this.client = undefined;
  }

  private connect(): void {
    if (this.stopped) return;
    this.dropChannel();
    let client: NodeClient;
    try {
      client = new NodeClient({
        server: this.deps.server,
        roots: this.deps.roots(),
        trustDomain: this.deps.trustDomain,
        client: { chainDer: this.identity.chainDer, keyPkcs8: this.identity.keyPkcs8 },
        clock: this.deps.clock,
      });
    } catch (err) {
      this.lost((err as Error).message);
      return;
    }
    this.client = client;
    void this.deps.revision().then((after) => {
      if (this.client !== client || this.stopped) return;
      this.cancelSync = client.sync(after, {
        onUpdate: (update) => {
          this.applying = this.applying.then(() => this.handle(client, update));
        },
        onEnd: (err) => {
          if (this.client !== client) return;
          // Updates already received are applied before the link counts as down.
          this.applying = this.applying.then(() => {
            if (this.client !== client) return;
            if (err?.code === 'permission_denied') {
              this.deps.onEvicted(`the agentid server refuses this node: ${err.message}`);
              return;
            }
            this.lost(err ? err.message : 'the server ended the Sync stream');
          });
        },
      });
    }, (err) => this.lost(`cannot read the replica's revision: ${(err as Error).message}`));
  }

  private async handle(client: NodeClient, update: WireSyncUpdate): Promise<void> {
    if (this.client !== client || this.stopped) return;
    if (update.evicted) {
      this.deps.onEvicted('the agentid server evicted this node');
      return;
    }
    this.deps.logger.debug({ revision: update.revision, snapshot: update.snapshot, entries: update.entries.length, tasks: update.tasks.length, revocations: update.revocations.length }, 'agent: sync update');
    try {
      await this.deps.apply(update);
    } catch (err) {
      this.deps.logger.error({ err, revision: update.revision }, 'agent: could not apply a sync update; resynchronising');
      this.lost('a sync update could not be applied');
      return;
    }
    if (!this.connectedNow) {
      this.connectedNow = true;
      this.attempts = 0;
      this.deps.logger.info({ server: `${this.deps.server.host}:${this.deps.server.port}`, revision: update.revision }, 'agent: connected to the agentid server');
      this.deps.onConnected();
      this.firstSyncDone();
    }
  }

  private lost(reason: string): void {
    if (this.stopped) return;
    const was = this.connectedNow;
    this.connectedNow = false;
    this.lastError = reason;
    this.dropChannel();
    if (was) this.deps.onDisconnected(reason);
    const { initialMs, maxMs } = this.deps.backoff ?? DEFAULT_BACKOFF;
    const ceiling = Math.min(maxMs, initialMs * 2 ** Math.min(this.attempts, 20));
    this.attempts++;
    const delay = Math.round(ceiling * (0.5 + 0.5 * this.random()));
    this.deps.logger.warn({ reason, retryInMs: delay }, 'agent: no connection to the agentid server; serving what it holds');
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => this.connect(), delay);
    this.reconnectTimer.unref();
  }

  private scheduleRenewal(delayMs?: number): void {
    clearTimeout(this.renewTimer);
    if (this.stopped) return;
    const at = renewalTime(this.identity.notBefore, this.identity.expiresAt, this.random());
    const delay = delayMs ?? Math.max(0, at - this.deps.clock.now());
    this.renewTimer = setTimeout(() => void this.renew(), Math.min(delay, 2 ** 31 - 1));
    this.renewTimer.unref();
  }

  /** RenewNodeSvid with a fresh key; the new SVID is saved, then a new channel presents it. */
  private async renew(): Promise<void> {
    const client = this.current;
    if (!client) {
      this.scheduleRenewal(RENEW_RETRY_MS);
      return;
    }
    const key = newNodeKey();
    try {
      const wire = await client.renewNodeSvid({ public_key: key.spki });
      const identity = acceptNodeSvid(wire, key, this.deps.trustDomain);
      await this.deps.saveIdentity(identity);
      this.identity = identity;
      this.deps.logger.info({ spiffeId: identity.spiffeId.toString(), expiresAt: new Date(identity.expiresAt).toISOString() }, 'agent: node SVID renewed');
      this.scheduleRenewal();
      // The next channel presents the new SVID; the replica resumes where it was.
      this.connectedNow = false;
      this.connect();
    } catch (err) {
      if (this.stopped) return;
      const left = this.identity.expiresAt - this.deps.clock.now();
      this.deps.logger[left > 0 ? 'warn' : 'error']({ err: (err as AgentIdError).message, expiresInMs: left }, 'agent: node SVID renewal failed; retrying');
      this.scheduleRenewal(RENEW_RETRY_MS);
    }
  }
}
