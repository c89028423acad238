import { describe, expect, it } from 'vitest';
import type { RegistrationEntry, TaskRecord } from '../datastore/types.js';
import { matchEntries } from '../entries/match.js';
import { identitiesUnchangedUntil, resolveIdentities, taskBindingMatches, type CallerFacts } from './identity.js';
import { cappedTtl, renewalTime } from './renewal.js';

const NOW = Date.UTC(2026, 5, 1);
const caller = (over: Partial<CallerFacts> = {}): CallerFacts => ({
  pid: 100,
  startTime: '5000',
  ancestors: [{ pid: 50, startTime: '4000' }, { pid: 1, startTime: '1' }],
  cgroup: '/agents/coder/t1/worker',
  selectors: [{ type: 'unix', value: 'uid:1000' }],
  ...over,
});

const task = (over: Partial<TaskRecord> = {}): TaskRecord => ({
  id: 't1',
  agent: 'coder',
  spiffeId: 'spiffe://td.example/agent/coder/task/t1',
  binding: { kind: 'process', pid: 100, startTime: '5000', descendants: false },
  metadata: {},
  state: 'active',
  x509TtlMs: 900_000,
  jwtTtlMs: 300_000,
  createdAt: NOW - 1000,
  expiresAt: NOW + 3_600_000,
  endedAt: null,
  endReason: null,
  createdBy: 'uid:0 (admin)',
  node: null,
  ...over,
});

const entry = (id: string, spiffeId: string, createdAt = NOW - 5000, includeTasks = false): RegistrationEntry => ({
  id,
  spiffeId,
  selectors: [{ type: 'unix', value: 'uid:1000' }],
  x509TtlMs: 900_000,
  jwtTtlMs: 300_000,
  hint: '',
  dnsNames: [],
  federatesWith: [],
  includeTasks,
  expiresAt: null,
  node: null,
  createdAt,
  updatedAt: createdAt,
  revision: 1,
});

describe('taskBindingMatches', () => {
  const cases: [string, TaskRecord['binding'], Partial<CallerFacts>, boolean][] = [
    ['the bound process', { kind: 'process', pid: 100, startTime: '5000', descendants: false }, {}, true],
    ['same pid, other start time (PID reused)', { kind: 'process', pid: 100, startTime: '4999', descendants: false }, {}, false],
    ['a descendant, descendants off', { kind: 'process', pid: 50, startTime: '4000', descendants: false }, {}, false],
    ['a descendant, descendants on', { kind: 'process', pid: 50, startTime: '4000', descendants: true }, {}, true],
    ['an ancestor pid with another start time', { kind: 'process', pid: 50, startTime: '3999', descendants: true }, {}, false],
    ['the cgroup itself', { kind: 'cgroup', path: '/agents/coder/t1/worker' }, {}, true],
    ['a sub-cgroup of the bound cgroup', { kind: 'cgroup', path: '/agents/coder/t1' }, {}, true],
    ['a sibling cgroup sharing a prefix', { kind: 'cgroup', path: '/agents/coder/t' }, {}, false],
    ['a caller without cgroup', { kind: 'cgroup', path: '/agents' }, { cgroup: null }, false],
  ];
  it.each(cases)('%s', (_name, binding, over, expected) => {
    expect(taskBindingMatches(task({ binding }), caller(over))).toBe(expected);
  });
});

describe('resolveIdentities', () => {
  const base = { caller: caller(), now: NOW, taskBufferMs: 120_000, isRevoked: () => false };

  it('puts task identities first, then entries that serve tasks in their order, with the task cap', () => {
    const ids = resolveIdentities({
      ...base,
      matchedEntries: [entry('e1', 'spiffe://td.example/a', NOW - 5000, true), entry('e2', 'spiffe://td.example/b', NOW - 5000, true)],
      tasks: [task()],
    });
    expect(ids.map((i) => i.spiffeId.toString())).toEqual([
      'spiffe://td.example/agent/coder/task/t1',
      'spiffe://td.example/a',
      'spiffe://td.example/b',
    ]);
    expect(ids[0]!.notAfterCap).toBe(NOW + 3_600_000 + 120_000);
    expect(ids[0]!.task).toEqual({ agent: 'coder', id: 't1' });
  });

  it('stops offering an identity less than a second before its end', () => {
    const e = { ...entry('e1', 'spiffe://td.example/a'), expiresAt: NOW + 999 };
    expect(resolveIdentities({ ...base, matchedEntries: [e], tasks: [] })).toEqual([]);
    expect(resolveIdentities({ ...base, matchedEntries: [{ ...e, expiresAt: NOW + 1000 }], tasks: [] })).toHaveLength(1);
  });

  it('gives a task process only its task identity, not the entries its uid matches', () => {
    const matchedEntries = [entry('e1', 'spiffe://td.example/service'), entry('e2', 'spiffe://td.example/shared', NOW - 4000, true)];
    const keys = (tasks: TaskRecord[], over: Partial<CallerFacts> = {}) =>
      resolveIdentities({ ...base, caller: caller(over), matchedEntries, tasks }).map((i) => i.key);
    expect(keys([task()])).toEqual(['task:coder/t1', 'entry:e2']);
    // Bound through an ancestor (descendants on) or through its cgroup: a task process all the same.
    expect(keys([task({ binding: { kind: 'process', pid: 50, startTime: '4000', descendants: true } })])).toEqual(['task:coder/t1', 'entry:e2']);
    expect(keys([task({ binding: { kind: 'cgroup', path: '/agents/coder/t1' } })])).toEqual(['task:coder/t1', 'entry:e2']);
    // Ended, revoked or expired: still a task process, so only opted-in entries (no fallback to the uid's).
    for (const state of ['ended', 'revoked', 'expired'] as const) expect(keys([task({ state })])).toEqual(['entry:e2']);
    expect(keys([task({ expiresAt: NOW - 1 })])).toEqual(['entry:e2']);
    // Not bound: a descendant of a pid binding without descendants, another cgroup, PID reuse.
    expect(keys([task({ binding: { kind: 'process', pid: 50, startTime: '4000', descendants: false } })])).toEqual(['entry:e1', 'entry:e2']);
    expect(keys([task({ binding: { kind: 'cgroup', path: '/agents/other' } })])).toEqual(['entry:e1', 'entry:e2']);
    expect(keys([task()], { startTime: '5001' })).toEqual(['entry:e1', 'entry:e2']);
  });

  it('drops revoked IDs, ended and expired tasks, and duplicate SPIFFE IDs', () => {
    const ids = resolveIdentities({
      ...base,
      isRevoked: (id) => id === 'spiffe://td.example/revoked',
      matchedEntries: [entry('e1', 'spiffe://td.example/a'), entry('e2', 'spiffe://td.example/a'), entry('e3', 'spiffe://td.example/revoked')],
      tasks: [task({ state: 'ended', binding: { kind: 'process', pid: 7, startTime: '1', descendants: false } }), task({ id: 't2', spiffeId: 'spiffe://td.example/agent/coder/task/t2', expiresAt: NOW, binding: { kind: 'process', pid: 7, startTime: '1', descendants: false } })],
    });
    expect(ids.map((i) => i.key)).toEqual(['entry:e1']);
  });
});

describe('renewal', () => {
  it('renews at half-life, earlier by at most the jitter fraction', () => {
    expect(renewalTime(0, 1000, 0)).toBe(500);
    expect(renewalTime(0, 1000, 0.999)).toBe(400);
    expect(renewalTime(1000, 1000, 0.5)).toBe(1000);
  });

  it('caps a TTL at the identity\'s end, never below zero', () => {
    expect(cappedTtl(NOW, 900_000, null)).toBe(900_000);
    expect(cappedTtl(NOW, 900_000, NOW + 60_000)).toBe(60_000);
    expect(cappedTtl(NOW, 900_000, NOW - 1)).toBe(0);
  });
});

describe('identitiesUnchangedUntil', () => {
  const BUFFER = 30_000;
  const keysAt = (entries: RegistrationEntry[], tasks: TaskRecord[], c: CallerFacts, now: number) =>
    resolveIdentities({ caller: c, matchedEntries: matchEntries(entries, c.selectors, now), tasks, isRevoked: () => false, now, taskBufferMs: BUFFER }).map((i) => i.key);
  const expiring = (id: string, spiffeId: string, expiresAt: number, includeTasks = false) => ({ ...entry(id, spiffeId, NOW - 5000, includeTasks), expiresAt });
  const other = caller({ pid: 999, ancestors: [] }); // bound to no task

  it.each<[string, RegistrationEntry[], TaskRecord[], CallerFacts, number]>([
    ['an entry that expires', [expiring('e1', 'spiffe://td.example/a', NOW + 10_000), entry('e2', 'spiffe://td.example/b')], [], other, NOW + 9_001],
    ['the earliest of two expiring entries', [expiring('e1', 'spiffe://td.example/a', NOW + 20_000), expiring('e2', 'spiffe://td.example/b', NOW + 10_000)], [], other, NOW + 9_001],
    // The task stops being live at expiresAt, before its cap (expiresAt + buffer); then the
    // entry with the same SPIFFE ID, hidden behind it until then, is offered instead.
    ['a task hiding an entry with its SPIFFE ID', [entry('e1', 'spiffe://td.example/agent/coder/task/t1', NOW - 5000, true)], [task({ expiresAt: NOW + 60_000 })], caller(), NOW + 60_000],
  ])('%s', (_name, entries, tasks, c, want) => {
    const now = NOW;
    const identities = resolveIdentities({ caller: c, matchedEntries: matchEntries(entries, c.selectors, now), tasks, isRevoked: () => false, now, taskBufferMs: BUFFER });
    const until = identitiesUnchangedUntil(identities, BUFFER);
    expect(until).toBe(want);
    const before = keysAt(entries, tasks, c, now);
    for (const t of [now + 1, (now + until) / 2, until - 1]) expect(keysAt(entries, tasks, c, t)).toEqual(before);
    expect(keysAt(entries, tasks, c, until)).not.toEqual(before);
  });

  it('is unbounded when nothing offered has an end', () => {
    const identities = resolveIdentities({ caller: other, matchedEntries: [entry('e1', 'spiffe://td.example/a')], tasks: [], isRevoked: () => false, now: NOW, taskBufferMs: BUFFER });
    expect(identitiesUnchangedUntil(identities, BUFFER)).toBe(Infinity);
    expect(identitiesUnchangedUntil([], BUFFER)).toBe(Infinity);
  });
});
