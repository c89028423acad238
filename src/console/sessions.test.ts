import { describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import type { Actor } from '../common/actor.js';
import { ConsoleSessions, LOGIN_TOKEN_TTL_MS } from './sessions.js';

const admin: Actor = { role: 'admin', uid: 0, agents: [] };
const orchestrator: Actor = { role: 'orchestrator', uid: 1001, agents: ['builder'] };

describe('ConsoleSessions', () => {
  it('a sign-in token works once, for the actor it was issued to', () => {
    const s = new ConsoleSessions({ clock: new ManualClock(), sessionTtlMs: 3_600_000 });
    const { token } = s.issueLogin(orchestrator);
    expect(token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(s.redeemLogin(token)).toEqual(orchestrator);
    expect(s.redeemLogin(token)).toBeUndefined();
  });

  it('a sign-in token expires after a minute, and an expired one is spent too', () => {
    const clock = new ManualClock();
    const s = new ConsoleSessions({ clock, sessionTtlMs: 3_600_000 });
    const early = s.issueLogin(admin);
    const late = s.issueLogin(admin);
    clock.advance(LOGIN_TOKEN_TTL_MS - 1);
    expect(s.redeemLogin(early.token)).toEqual(admin);
    clock.advance(1);
    expect(s.redeemLogin(late.token)).toBeUndefined();
    expect(LOGIN_TOKEN_TTL_MS).toBe(60_000);
  });

  it('tokens are random and unknown tokens sign nobody in', () => {
    const s = new ConsoleSessions({ clock: new ManualClock(), sessionTtlMs: 1000 });
    const tokens = new Set(Array.from({ length: 50 }, () => s.issueLogin(admin).token));
    expect(tokens.size).toBe(50);
    expect(s.redeemLogin('A'.repeat(43))).toBeUndefined();
  });

  it('a session expires after its lifetime, or at the client certificate\'s notAfter if sooner, and can be closed', () => {
    const clock = new ManualClock();
    const s = new ConsoleSessions({ clock, sessionTtlMs: 10_000 });
    const a = s.open(admin);
    const b = s.open(admin, { notAfter: clock.now() + 5_000 });
    const c = s.open(admin);
    expect(s.get(a.id)?.actor).toEqual(admin);
    clock.advance(5_000);
    expect(s.get(b.id)).toBeUndefined();
    expect(s.get(a.id)).toBeDefined();
    s.close(c.id);
    expect(s.get(c.id)).toBeUndefined();
    clock.advance(5_000);
    expect(s.get(a.id)).toBeUndefined();
    expect(s.get(undefined)).toBeUndefined();
  });

  it('CSRF tokens are per session and compared exactly', () => {
    const s = new ConsoleSessions({ clock: new ManualClock(), sessionTtlMs: 10_000 });
    const a = s.open(admin).session;
    const b = s.open(admin).session;
    expect(a.csrfToken).not.toBe(b.csrfToken);
    expect(ConsoleSessions.csrfMatches(a, a.csrfToken)).toBe(true);
    expect(ConsoleSessions.csrfMatches(a, b.csrfToken)).toBe(false);
    expect(ConsoleSessions.csrfMatches(a, a.csrfToken.slice(1))).toBe(false);
    expect(ConsoleSessions.csrfMatches(a, undefined)).toBe(false);
    expect(ConsoleSessions.csrfMatches(a, '')).toBe(false);
  });

  it('bounds the number of unused sign-in links', () => {
    const clock = new ManualClock();
    const s = new ConsoleSessions({ clock, sessionTtlMs: 10_000 });
    for (let i = 0; i < 1000; i++) s.issueLogin(admin);
    expect(() => s.issueLogin(admin)).toThrow(/too many unused sign-in links/);
    clock.advance(LOGIN_TOKEN_TTL_MS);
    expect(s.issueLogin(admin).token).toBeTruthy();
  });
});
