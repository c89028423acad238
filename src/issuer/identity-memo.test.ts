import { describe, expect, it } from 'vitest';
import { SpiffeId } from '../spiffe/spiffe-id.js';
import type { CallerFacts, Identity } from './identity.js';
import { IdentityMemo } from './identity-memo.js';

const NOW = Date.UTC(2026, 5, 1);
const BUFFER = 30_000;

const identity = (name: string, notAfterCap: number | null = null, task = false): Identity => ({
  key: `entry:${name}`,
  spiffeId: SpiffeId.parse(`spiffe://td.example/${name}`),
  x509TtlMs: 1,
  jwtTtlMs: 1,
  hint: '',
  dnsNames: [],
  federatesWith: [],
  notAfterCap,
  task: task ? { agent: 'a', id: name } : null,
  entryId: null,
  matchedSelectors: [],
});

const facts = (over: Partial<CallerFacts> = {}): CallerFacts => ({
  pid: 100,
  startTime: '5000',
  ancestors: [{ pid: 1, startTime: '1' }],
  cgroup: '/a',
  selectors: [{ type: 'unix', value: 'uid:1000' }],
  ...over,
});

/** A memo over a resolver that answers `answer` and counts its calls. */
function setup(answer: Identity[]) {
  const state = { version: 1, revoked: new Set<string>(), resolved: 0, answer };
  const memo = new IdentityMemo({
    resolve: () => (state.resolved++, state.answer),
    version: () => [state.version, 'tasks'],
    isRevoked: (id) => state.revoked.has(id),
    taskBufferMs: BUFFER,
  });
  return { state, memo };
}

describe('IdentityMemo', () => {
  it('resolves once per connection while nothing changes', () => {
    const { state, memo } = setup([identity('a')]);
    const conn = {};
    const caller = facts();
    const first = memo.identitiesFor(conn, caller, NOW);
    // Same facts in new objects (a new Caller per call), later in time: still the memo.
    expect(memo.identitiesFor(conn, facts(), NOW + 1000)).toBe(first);
    expect(memo.identitiesFor(conn, { ...caller, selectors: [...caller.selectors] }, NOW + 2000)).toBe(first);
    expect(state.resolved).toBe(1);
    expect(memo.stats()).toEqual({ hits: 2, misses: 1 });
  });

  it('resolves again for another connection, other caller facts, or a new version', () => {
    const { state, memo } = setup([identity('a')]);
    const conn = {};
    memo.identitiesFor(conn, facts(), NOW);
    memo.identitiesFor({}, facts(), NOW);
    expect(state.resolved).toBe(2);
    for (const changed of [
      { pid: 101 },
      { startTime: '5001' },
      { cgroup: '/b' },
      { selectors: [{ type: 'unix', value: 'uid:1001' }] },
      { ancestors: [{ pid: 1, startTime: '2' }] },
      { ancestors: [] },
    ]) {
      const before = state.resolved;
      memo.identitiesFor(conn, facts(changed), NOW);
      expect(state.resolved, JSON.stringify(changed)).toBe(before + 1);
      memo.identitiesFor(conn, facts(), NOW); // back to the original facts
    }
    const before = state.resolved;
    state.version = 2;
    memo.identitiesFor(conn, facts(), NOW);
    expect(state.resolved).toBe(before + 1);
  });

  it('never answers with a revoked SPIFFE ID, even before the version changes', () => {
    const { state, memo } = setup([identity('a'), identity('b')]);
    const conn = {};
    memo.identitiesFor(conn, facts(), NOW);
    state.revoked.add('spiffe://td.example/b');
    state.answer = [identity('a')]; // what a resolver that sees the revocation returns
    expect(memo.identitiesFor(conn, facts(), NOW).map((i) => i.key)).toEqual(['entry:a']);
    expect(state.resolved).toBe(2);
  });

  it('resolves again once an identity may have lapsed (entry end, task liveness)', () => {
    const entryEnd = NOW + 10_000;
    const { state, memo } = setup([identity('a', entryEnd), identity('t', NOW + 60_000 + BUFFER, true)]);
    const conn = {};
    memo.identitiesFor(conn, facts(), NOW);
    memo.identitiesFor(conn, facts(), entryEnd - 1000); // still offered then (MIN_REMAINING_MS)
    expect(state.resolved).toBe(1);
    memo.identitiesFor(conn, facts(), entryEnd - 999);
    expect(state.resolved).toBe(2);

    const tasks = setup([identity('t', NOW + 60_000 + BUFFER, true)]);
    tasks.memo.identitiesFor(conn, facts(), NOW);
    tasks.memo.identitiesFor(conn, facts(), NOW + 59_999);
    expect(tasks.state.resolved).toBe(1);
    tasks.memo.identitiesFor(conn, facts(), NOW + 60_000); // the task's expiresAt: no longer live
    expect(tasks.state.resolved).toBe(2);
  });

  it('remembers "no identity" too, under the same rules', () => {
    const { state, memo } = setup([]);
    const conn = {};
    expect(memo.identitiesFor(conn, facts(), NOW)).toEqual([]);
    expect(memo.identitiesFor(conn, facts(), NOW + 3_600_000)).toEqual([]);
    expect(state.resolved).toBe(1);
    state.version = 2;
    state.answer = [identity('a')];
    expect(memo.identitiesFor(conn, facts(), NOW).map((i) => i.key)).toEqual(['entry:a']);
  });
});
