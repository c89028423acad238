import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Actor } from '../common/actor.js';
import type { Clock } from '../common/clock.js';
import { resourceExhausted } from '../common/errors.js';

/** A one-time sign-in link is good for this long. */
export const LOGIN_TOKEN_TTL_MS = 60_000;
/** Bounds memory: a caller looping on `agentid console login` cannot grow the table without end. */
const MAX_PENDING_LOGINS = 1000;
const MAX_SESSIONS = 10_000;

export interface ConsoleSession {
  readonly actor: Actor;
  /** Sent back by the page in the X-CSRF-Token header of every state change. */
  readonly csrfToken: string;
  readonly expiresAt: number;
  /** A certificate session's client chain: re-verified on every request (revocation, expiry). */
  readonly clientChain?: Buffer[];
}

/** 256 random bits, URL-safe. */
const newToken = () => randomBytes(32).toString('base64url');
/** Tables are keyed by a hash, so a heap dump or a timing side channel on the Map shows no live token. */
const keyOf = (token: string) => createHash('sha256').update(token).digest('base64url');

/**
 * One-time sign-in tokens and the sessions they open, in memory only (a restart signs everyone
 * out, which is the safe direction). Tokens and session IDs are never logged or audited.
 */
export class ConsoleSessions {
  private readonly logins = new Map<string, { actor: Actor; expiresAt: number }>();
  private readonly sessions = new Map<string, ConsoleSession>();

  constructor(private readonly deps: { clock: Clock; sessionTtlMs: number }) {}

  /** A single-use token valid for LOGIN_TOKEN_TTL_MS that signs `actor` in. */
  issueLogin(actor: Actor): { token: string; expiresAt: number } {
    const now = this.deps.clock.now();
    this.prune(now);
    if (this.logins.size >= MAX_PENDING_LOGINS) throw resourceExhausted('console login: too many unused sign-in links; wait a minute');
    const token = newToken();
    const expiresAt = now + LOGIN_TOKEN_TTL_MS;
    this.logins.set(keyOf(token), { actor: { ...actor, agents: [...actor.agents] }, expiresAt });
    return { token, expiresAt };
  }

  /** Spends a sign-in token: the actor it was issued to, or undefined when unknown, used or expired. */
  redeemLogin(token: string): Actor | undefined {
    const key = keyOf(token);
    const login = this.logins.get(key);
    if (!login) return undefined;
    this.logins.delete(key);
    return login.expiresAt > this.deps.clock.now() ? login.actor : undefined;
  }

  /** Opens a session; `notAfter` caps it (a client certificate's expiry). */
  open(actor: Actor, opts: { notAfter?: number; clientChain?: Buffer[] } = {}): { id: string; session: ConsoleSession } {
    const now = this.deps.clock.now();
    this.prune(now);
    if (this.sessions.size >= MAX_SESSIONS) throw resourceExhausted('console: too many open sessions');
    const id = newToken();
    const session: ConsoleSession = {
      actor,
      csrfToken: newToken(),
      expiresAt: Math.min(now + this.deps.sessionTtlMs, opts.notAfter ?? Infinity),
      ...(opts.clientChain ? { clientChain: opts.clientChain } : {}),
    };
    this.sessions.set(keyOf(id), session);
    return { id, session };
  }

  /** The live session with this ID, if any. */
  get(id: string | undefined): ConsoleSession | undefined {
    if (!id) return undefined;
    const key = keyOf(id);
    const session = this.sessions.get(key);
    if (session && session.expiresAt <= this.deps.clock.now()) {
      this.sessions.delete(key);
      return undefined;
    }
    return session;
  }

  close(id: string | undefined): void {
    if (id) this.sessions.delete(keyOf(id));
  }

  /** Constant-time comparison of the CSRF token a request carried with the session's. */
  static csrfMatches(session: ConsoleSession, presented: string | undefined): boolean {
    if (!presented) return false;
    const a = Buffer.from(session.csrfToken);
    const b = Buffer.from(presented);
    return a.length === b.length && timingSafeEqual(a, b);
  }

  private prune(now: number): void {
    for (const [k, l] of this.logins) if (l.expiresAt <= now) this.logins.delete(k);
    for (const [k, s] of this.sessions) if (s.expiresAt <= now) this.sessions.delete(k);
  }
}
