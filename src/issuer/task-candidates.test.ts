import { describe, expect, it } from 'vitest';
import type { TaskBinding, TaskRecord } from '../datastore/types.js';
import { taskBindingMatches, type CallerFacts } from './identity.js';
import { TasksByBinding } from './task-candidates.js';

const task = (id: string, binding: TaskBinding): TaskRecord => ({
  id, agent: 'a', spiffeId: `spiffe://td.example/agent/a/task/${id}`, binding, metadata: {}, state: 'active',
  x509TtlMs: 1, jwtTtlMs: 1, createdAt: 0, expiresAt: 1, endedAt: null, endReason: null, createdBy: 'test', node: null,
});

const tasks = [
  task('p100', { kind: 'process', pid: 100, startTime: '1', descendants: false }),
  task('p100-desc', { kind: 'process', pid: 100, startTime: '1', descendants: true }),
  task('p100-reused', { kind: 'process', pid: 100, startTime: '2', descendants: true }),
  task('p200', { kind: 'process', pid: 200, startTime: '1', descendants: false }),
  task('cg-a', { kind: 'cgroup', path: '/agents/a' }),
  task('cg-a-b', { kind: 'cgroup', path: '/agents/a/b' }),
  task('cg-ab', { kind: 'cgroup', path: '/agents/ab' }),
];

const caller = (pid: number, ancestors: number[], cgroup: string | null): CallerFacts => ({
  pid, startTime: '1', ancestors: ancestors.map((a) => ({ pid: a, startTime: '1' })), cgroup, selectors: [],
});

describe('TasksByBinding', () => {
  it.each([
    ['the bound process', caller(100, [1], null), ['p100', 'p100-desc']],
    ['a descendant (only where descendants are allowed)', caller(150, [100, 1], null), ['p100-desc']],
    ['another process', caller(300, [1], null), []],
    ['a member of a cgroup (and of the subtree above it)', caller(400, [], '/agents/a/b/c'), ['cg-a', 'cg-a-b']],
    ['a cgroup whose name only starts like a bound one', caller(400, [], '/agents/abc'), []],
    ['the bound cgroup itself', caller(400, [], '/agents/ab'), ['cg-ab']],
  ])('finds every task that covers %s', (_name, c, expected) => {
    const candidates = TasksByBinding.of(tasks).candidatesFor(c);
    // Never misses one: every task whose binding covers the caller is a candidate...
    const covering = tasks.filter((t) => taskBindingMatches(t, c));
    expect(covering.every((t) => candidates.includes(t))).toBe(true);
    expect(covering.map((t) => t.id).sort()).toEqual(expected);
    // ...and each candidate appears once.
    expect(new Set(candidates).size).toBe(candidates.length);
  });

  it('says whether some task is bound with descendants or to a cgroup (what attestation must look at)', () => {
    const index = TasksByBinding.of(tasks);
    expect([index.anyWithDescendants, index.anyCgroupBinding]).toEqual([true, true]);
    const plain = TasksByBinding.of([tasks[0]!, tasks[3]!]);
    expect([plain.anyWithDescendants, plain.anyCgroupBinding]).toEqual([false, false]);
    expect(TasksByBinding.of([tasks[4]!]).anyCgroupBinding).toBe(true);
  });

  it('builds one index per task list', () => {
    expect(TasksByBinding.of(tasks)).toBe(TasksByBinding.of(tasks));
    expect(TasksByBinding.of([...tasks])).not.toBe(TasksByBinding.of(tasks));
  });
});
