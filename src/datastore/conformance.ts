import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isAgentIdError, type ErrorCode } from '../common/errors.js';
import type {
  Datastore,
  IssuanceRecord,
  NewRegistrationEntry,
  Revocation,
  TaskRecord,
} from './types.js';

/*
 * One behavioural contract for every Datastore implementation. memory.test.ts and
 * sqlite.test.ts run it; a PostgreSQL store must pass it unchanged.
 */

export interface ConformanceTarget {
  ds: Datastore;
  /** Closes and reopens the same storage (persistent implementations only). */
  reopen?: () => Datastore;
  cleanup: () => void;
}

const T0 = Date.UTC(2026, 0, 1);
const TD = 'spiffe://example.org';

export function entryFixture(overrides: Partial<NewRegistrationEntry> = {}): NewRegistrationEntry {
  return {
    id: 'e-1',
    spiffeId: `${TD}/agent/a1`,
    selectors: [{ type: 'unix', value: 'uid:1000' }],
    x509TtlMs: 3_600_000,
    jwtTtlMs: 300_000,
    hint: '',
    dnsNames: [],
    federatesWith: [],
    includeTasks: false,
    expiresAt: null,
    ...overrides,
  };
}

export function taskFixture(overrides: Partial<TaskRecord> = {}): TaskRecord {
  const agent = overrides.agent ?? 'a1';
  const id = overrides.id ?? 't1';
  return {
    id,
    agent,
    spiffeId: `${TD}/agent/${agent}/task/${id}`,
    binding: { kind: 'process', pid: 4242, startTime: '123456', descendants: true },
    metadata: { repo: 'example/repo', actor: 'alice' },
    state: 'active',
    x509TtlMs: 600_000,
    jwtTtlMs: 300_000,
    createdAt: T0,
    expiresAt: T0 + 3_600_000,
    endedAt: null,
    endReason: null,
    createdBy: 'uid:1000 (orchestrator)',
    ...overrides,
  };
}

export function revocationFixture(overrides: Partial<Revocation> = {}): Revocation {
  return {
    spiffeId: `${TD}/agent/a1/task/t1`,
    reason: 'key leaked',
    revokedAt: T0,
    revokedBy: 'uid:0 (admin)',
    keepUntil: T0 + 3_600_000,
    ...overrides,
  };
}

export function issuanceFixture(overrides: Partial<IssuanceRecord> = {}): IssuanceRecord {
  return {
    kind: 'x509',
    serial: '0a1b2c',
    spiffeId: `${TD}/agent/a1/task/t1`,
    issuerId: 'ca-1',
    issuedAt: T0,
    notAfter: T0 + 600_000,
    task: 'a1/t1',
    ...overrides,
  };
}

export function expectCode(fn: () => unknown, code: ErrorCode, message?: RegExp): void {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught, `expected an AgentIdError with code ${code}`).toBeDefined();
  if (!isAgentIdError(caught)) throw caught;
  expect(caught.code).toBe(code);
  if (message) expect(caught.message).toMatch(message);
}

export function datastoreConformance(name: string, open: () => ConformanceTarget): void {
  describe(`Datastore conformance: ${name}`, () => {
    let target: ConformanceTarget;
    let ds: Datastore;
    beforeEach(() => {
      target = open();
      ds = target.ds;
    });
    afterEach(() => target.cleanup());

    describe('entries', () => {
      it('creates an entry with server timestamps, revision 1 and canonical selectors', () => {
        const created = ds.entries.create(
          entryFixture({
            selectors: [
              { type: 'unix', value: 'uid:1000' },
              { type: 'unix', value: 'path:/usr/bin/python3' },
              { type: 'unix', value: 'uid:1000' },
            ],
            hint: 'primary',
            dnsNames: ['a1.example.org'],
            federatesWith: ['other.org'],
            expiresAt: T0 + 86_400_000,
          }),
          T0,
        );
        expect(created).toEqual({
          ...entryFixture(),
          selectors: [
            { type: 'unix', value: 'path:/usr/bin/python3' },
            { type: 'unix', value: 'uid:1000' },
          ],
          hint: 'primary',
          dnsNames: ['a1.example.org'],
          federatesWith: ['other.org'],
          expiresAt: T0 + 86_400_000,
          createdAt: T0,
          updatedAt: T0,
          revision: 1,
        });
        expect(ds.entries.get('e-1')).toEqual(created);
      });

      it('rejects a second entry with the same id', () => {
        ds.entries.create(entryFixture(), T0);
        expectCode(() => ds.entries.create(entryFixture({ spiffeId: `${TD}/other` }), T0), 'already_exists', /e-1/);
      });

      it('rejects an entry with the same SPIFFE ID and the same selector set, in any order', () => {
        const selectors = [
          { type: 'unix', value: 'uid:1000' },
          { type: 'unix', value: 'gid:1000' },
        ];
        ds.entries.create(entryFixture({ selectors }), T0);
        expectCode(
          () => ds.entries.create(entryFixture({ id: 'e-2', selectors: [...selectors].reverse() }), T0),
          'already_exists',
          /same selectors.*e-1/,
        );
        expect(ds.entries.list()).toHaveLength(1);
      });

      it('accepts the same SPIFFE ID with other selectors, and the same selectors for another SPIFFE ID', () => {
        ds.entries.create(entryFixture(), T0);
        ds.entries.create(entryFixture({ id: 'e-2', selectors: [{ type: 'unix', value: 'uid:1001' }] }), T0);
        ds.entries.create(entryFixture({ id: 'e-3', spiffeId: `${TD}/agent/a2` }), T0);
        // A superset of e-1's selectors is a different set.
        ds.entries.create(
          entryFixture({
            id: 'e-4',
            selectors: [
              { type: 'unix', value: 'uid:1000' },
              { type: 'unix', value: 'gid:0' },
            ],
          }),
          T0,
        );
        expect(ds.entries.list().map((e) => e.id)).toEqual(['e-1', 'e-2', 'e-3', 'e-4']);
      });

      it('updates with a matching revision, keeps createdAt and bumps revision and updatedAt', () => {
        ds.entries.create(entryFixture(), T0);
        const updated = ds.entries.update(entryFixture({ hint: 'v2', x509TtlMs: 60_000 }), T0 + 5, 1);
        expect(updated).toMatchObject({ hint: 'v2', x509TtlMs: 60_000, createdAt: T0, updatedAt: T0 + 5, revision: 2 });
        expect(ds.entries.get('e-1')).toEqual(updated);
        const again = ds.entries.update(entryFixture({ hint: 'v3' }), T0 + 9);
        expect(again.revision).toBe(3);
      });

      it('refuses an update with a stale revision and leaves the entry unchanged', () => {
        ds.entries.create(entryFixture(), T0);
        ds.entries.update(entryFixture({ hint: 'first writer' }), T0 + 1, 1);
        expectCode(
          () => ds.entries.update(entryFixture({ hint: 'second writer' }), T0 + 2, 1),
          'failed_precondition',
          /revision 1 is stale.*revision 2/,
        );
        expect(ds.entries.get('e-1')).toMatchObject({ hint: 'first writer', revision: 2 });
      });

      it('refuses to update a missing entry', () => {
        expectCode(() => ds.entries.update(entryFixture({ id: 'nope' }), T0), 'not_found', /nope/);
      });

      it('refuses an update that would duplicate another entry, but allows re-saving the same entry', () => {
        ds.entries.create(entryFixture(), T0);
        ds.entries.create(entryFixture({ id: 'e-2', selectors: [{ type: 'unix', value: 'uid:2000' }] }), T0);
        expectCode(() => ds.entries.update(entryFixture({ id: 'e-2' }), T0 + 1), 'already_exists', /e-1/);
        expect(ds.entries.get('e-2')?.selectors).toEqual([{ type: 'unix', value: 'uid:2000' }]);
        expect(ds.entries.update(entryFixture({ hint: 'same identity' }), T0 + 1).revision).toBe(2);
      });

      it('deletes an entry, returning it; a second delete is not_found', () => {
        const created = ds.entries.create(entryFixture(), T0);
        expect(ds.entries.delete('e-1')).toEqual(created);
        expect(ds.entries.get('e-1')).toBeUndefined();
        expect(ds.entries.list()).toEqual([]);
        expectCode(() => ds.entries.delete('e-1'), 'not_found');
      });

      it('frees the SPIFFE ID + selectors identity when the entry is deleted', () => {
        ds.entries.create(entryFixture(), T0);
        ds.entries.delete('e-1');
        expect(ds.entries.create(entryFixture({ id: 'e-2' }), T0).id).toBe('e-2');
      });

      it('lists entries oldest first, then by id', () => {
        ds.entries.create(entryFixture({ id: 'c', spiffeId: `${TD}/c` }), T0 + 10);
        ds.entries.create(entryFixture({ id: 'b', spiffeId: `${TD}/b` }), T0);
        ds.entries.create(entryFixture({ id: 'a', spiffeId: `${TD}/a` }), T0 + 10);
        expect(ds.entries.list().map((e) => e.id)).toEqual(['b', 'a', 'c']);
      });

      it('returns copies: neither the input nor any returned object aliases stored state', () => {
        const input = entryFixture({ dnsNames: ['a.example.org'] });
        const created = ds.entries.create(input, T0);
        input.dnsNames.push('injected.example.org');
        (input.selectors as { type: string; value: string }[]).push({ type: 'unix', value: 'uid:0' });
        created.hint = 'mutated';
        created.selectors.push({ type: 'unix', value: 'uid:0' });
        ds.entries.get('e-1')!.dnsNames.push('x');
        ds.entries.list()[0]!.federatesWith.push('y');
        const updated = ds.entries.update(entryFixture({ hint: 'v2' }), T0 + 1);
        updated.dnsNames.push('z');
        expect(ds.entries.get('e-1')).toEqual({ ...entryFixture({ hint: 'v2' }), createdAt: T0, updatedAt: T0 + 1, revision: 2 });
      });
    });

    describe('tasks', () => {
      it('creates and reads back a task with either binding kind', () => {
        const p = ds.tasks.create(taskFixture());
        const c = ds.tasks.create(taskFixture({ id: 't2', binding: { kind: 'cgroup', path: '/agents/a1/t2' } }));
        expect(p).toEqual(taskFixture());
        expect(ds.tasks.get('a1', 't1')).toEqual(taskFixture());
        expect(ds.tasks.get('a1', 't2')).toEqual(c);
        expect(c.binding).toEqual({ kind: 'cgroup', path: '/agents/a1/t2' });
        expect(ds.tasks.get('a1', 'missing')).toBeUndefined();
      });

      it('task ids are unique per agent, not globally', () => {
        ds.tasks.create(taskFixture());
        expectCode(() => ds.tasks.create(taskFixture({ createdBy: 'someone else' })), 'already_exists', /a1\/t1/);
        ds.tasks.create(taskFixture({ agent: 'a2' }));
        expect(ds.tasks.list().map((t) => `${t.agent}/${t.id}`)).toEqual(['a1/t1', 'a2/t1']);
        expect(ds.tasks.get('a1', 't1')?.createdBy).toBe(taskFixture().createdBy);
      });

      it('filters by agent and by state, in creation order', () => {
        ds.tasks.create(taskFixture({ agent: 'a2', id: 'x', createdAt: T0 + 3 }));
        ds.tasks.create(taskFixture({ agent: 'a1', id: 'b', createdAt: T0 + 2 }));
        ds.tasks.create(taskFixture({ agent: 'a1', id: 'a', createdAt: T0 + 2 }));
        ds.tasks.create(taskFixture({ agent: 'a1', id: 'old', createdAt: T0 }));
        ds.tasks.finish('a1', 'b', 'ended', T0 + 10, 'done');
        const ids = (f?: Parameters<Datastore['tasks']['list']>[0]) => ds.tasks.list(f).map((t) => `${t.agent}/${t.id}`);
        expect(ids()).toEqual(['a1/old', 'a1/a', 'a1/b', 'a2/x']);
        expect(ids({})).toEqual(['a1/old', 'a1/a', 'a1/b', 'a2/x']);
        expect(ids({ agent: 'a1' })).toEqual(['a1/old', 'a1/a', 'a1/b']);
        expect(ids({ state: 'active' })).toEqual(['a1/old', 'a1/a', 'a2/x']);
        expect(ids({ agent: 'a1', state: 'ended' })).toEqual(['a1/b']);
        expect(ids({ agent: 'a2', state: 'ended' })).toEqual([]);
        expect(ids({ agent: 'nobody' })).toEqual([]);
      });

      it.each(['ended', 'revoked', 'expired'] as const)('finishes an active task as %s', (state) => {
        ds.tasks.create(taskFixture());
        const done = ds.tasks.finish('a1', 't1', state, T0 + 60_000, `reason for ${state}`);
        expect(done).toEqual({ ...taskFixture(), state, endedAt: T0 + 60_000, endReason: `reason for ${state}` });
        expect(ds.tasks.get('a1', 't1')).toEqual(done);
      });

      it('refuses to finish a task twice and keeps the first outcome', () => {
        ds.tasks.create(taskFixture());
        ds.tasks.finish('a1', 't1', 'ended', T0 + 1, 'done');
        expectCode(() => ds.tasks.finish('a1', 't1', 'revoked', T0 + 2, 'too late'), 'failed_precondition', /ended, not active/);
        expect(ds.tasks.get('a1', 't1')).toMatchObject({ state: 'ended', endedAt: T0 + 1, endReason: 'done' });
      });

      it('refuses to finish a missing task, or to "finish" into the active state', () => {
        expectCode(() => ds.tasks.finish('a1', 'nope', 'ended', T0, ''), 'not_found', /a1\/nope/);
        ds.tasks.create(taskFixture());
        expectCode(() => ds.tasks.finish('a1', 't1', 'active' as 'ended', T0, ''), 'invalid_argument');
        expect(ds.tasks.get('a1', 't1')?.state).toBe('active');
      });

      it('returns copies of tasks', () => {
        const input = taskFixture();
        const created = ds.tasks.create(input);
        input.metadata['injected'] = 'yes';
        created.metadata['mutated'] = 'yes';
        (created.binding as { pid: number }).pid = 1;
        ds.tasks.get('a1', 't1')!.metadata['x'] = 'y';
        ds.tasks.list()[0]!.state = 'ended';
        ds.tasks.finish('a1', 't1', 'ended', T0 + 1, 'done').metadata['z'] = 'z';
        expect(ds.tasks.get('a1', 't1')).toEqual({ ...taskFixture(), state: 'ended', endedAt: T0 + 1, endReason: 'done' });
      });
    });

    describe('revocations', () => {
      it('adds, gets and lists revocations by revocation time', () => {
        const b = ds.revocations.add(revocationFixture({ spiffeId: `${TD}/b`, revokedAt: T0 + 1 }));
        const a = ds.revocations.add(revocationFixture({ spiffeId: `${TD}/a`, revokedAt: T0 + 1 }));
        const first = ds.revocations.add(revocationFixture({ spiffeId: `${TD}/z`, revokedAt: T0 }));
        expect(ds.revocations.get(`${TD}/b`)).toEqual(b);
        expect(ds.revocations.get(`${TD}/none`)).toBeUndefined();
        expect(ds.revocations.list()).toEqual([first, a, b]);
      });

      // The merge rule, one row per case: [existing, incoming, expected].
      const merges: Array<[string, Partial<Revocation>, Partial<Revocation>, Partial<Revocation>]> = [
        [
          'a later keepUntil extends; first revokedAt/revokedBy stay; a new reason replaces',
          { keepUntil: T0 + 100, reason: 'first', revokedAt: T0, revokedBy: 'alice' },
          { keepUntil: T0 + 500, reason: 'second', revokedAt: T0 + 50, revokedBy: 'bob' },
          { keepUntil: T0 + 500, reason: 'second', revokedAt: T0, revokedBy: 'alice' },
        ],
        [
          'an earlier keepUntil never shortens the deny list',
          { keepUntil: T0 + 500 },
          { keepUntil: T0 + 100, revokedAt: T0 + 10 },
          { keepUntil: T0 + 500, revokedAt: T0 },
        ],
        [
          'an empty reason keeps the existing one',
          { reason: 'compromised' },
          { reason: '', revokedAt: T0 + 1 },
          { reason: 'compromised' },
        ],
        [
          'an earlier revokedAt moves "revoked since" back, with its revokedBy',
          { revokedAt: T0 + 100, revokedBy: 'bob' },
          { revokedAt: T0, revokedBy: 'alice' },
          { revokedAt: T0, revokedBy: 'alice' },
        ],
      ];
      it.each(merges)('add() on an existing revocation: %s', (_name, existing, incoming, expected) => {
        ds.revocations.add(revocationFixture(existing));
        const merged = ds.revocations.add(revocationFixture(incoming));
        expect(merged).toMatchObject(expected);
        expect(ds.revocations.get(revocationFixture().spiffeId)).toEqual(merged);
        expect(ds.revocations.list()).toHaveLength(1);
      });

      it('prunes revocations whose keepUntil has passed, keeping those due exactly now', () => {
        ds.revocations.add(revocationFixture({ spiffeId: `${TD}/past`, keepUntil: T0 - 1 }));
        ds.revocations.add(revocationFixture({ spiffeId: `${TD}/now`, keepUntil: T0 }));
        ds.revocations.add(revocationFixture({ spiffeId: `${TD}/future`, keepUntil: T0 + 1 }));
        expect(ds.revocations.prune(T0)).toBe(1);
        expect(ds.revocations.list().map((r) => r.spiffeId).sort()).toEqual([`${TD}/future`, `${TD}/now`]);
        expect(ds.revocations.prune(T0)).toBe(0);
      });

      it('returns copies of revocations', () => {
        const input = revocationFixture();
        ds.revocations.add(input).reason = 'mutated';
        input.keepUntil = 0;
        ds.revocations.get(input.spiffeId)!.keepUntil = 0;
        ds.revocations.list()[0]!.reason = 'x';
        expect(ds.revocations.get(input.spiffeId)).toEqual(revocationFixture());
      });
    });

    describe('issuances', () => {
      it('records issuances and lists them per SPIFFE ID by issue time', () => {
        const id = revocationFixture().spiffeId;
        ds.issuances.record(issuanceFixture({ serial: '02', issuedAt: T0 + 2 }));
        ds.issuances.record(issuanceFixture({ serial: '01', issuedAt: T0 + 1 }));
        ds.issuances.record(issuanceFixture({ kind: 'jwt', serial: 'jti-1', issuedAt: T0 + 1, task: null }));
        ds.issuances.record(issuanceFixture({ serial: '03', spiffeId: `${TD}/other` }));
        expect(ds.issuances.listForSpiffeId(id).map((i) => i.serial)).toEqual(['01', 'jti-1', '02']);
        expect(ds.issuances.listForSpiffeId(id)[1]).toEqual(issuanceFixture({ kind: 'jwt', serial: 'jti-1', issuedAt: T0 + 1, task: null }));
        expect(ds.issuances.countForSpiffeId(id)).toBe(3);
        expect(ds.issuances.countForSpiffeId(`${TD}/nobody`)).toBe(0);
        expect(ds.issuances.listForSpiffeId(`${TD}/nobody`)).toEqual([]);
      });

      it('refuses a serial recorded twice for the same kind', () => {
        ds.issuances.record(issuanceFixture());
        expectCode(() => ds.issuances.record(issuanceFixture({ spiffeId: `${TD}/x` })), 'already_exists', /0a1b2c/);
        ds.issuances.record(issuanceFixture({ kind: 'jwt' }));
        expect(ds.issuances.countForSpiffeId(issuanceFixture().spiffeId)).toBe(2);
      });

      it('latestNotAfter is the maximum over both kinds, undefined when nothing was issued', () => {
        const id = issuanceFixture().spiffeId;
        expect(ds.issuances.latestNotAfter(id)).toBeUndefined();
        ds.issuances.record(issuanceFixture({ serial: '01', notAfter: T0 + 500 }));
        ds.issuances.record(issuanceFixture({ serial: '02', notAfter: T0 + 300, issuedAt: T0 + 5 }));
        ds.issuances.record(issuanceFixture({ kind: 'jwt', serial: 'j', notAfter: T0 + 900 }));
        ds.issuances.record(issuanceFixture({ serial: '03', spiffeId: `${TD}/other`, notAfter: T0 + 99_999 }));
        expect(ds.issuances.latestNotAfter(id)).toBe(T0 + 900);
      });

      it('listRevokedUnexpired returns only X.509 issuances of revoked IDs still valid at now', () => {
        const revoked = `${TD}/revoked`;
        ds.revocations.add(revocationFixture({ spiffeId: revoked }));
        ds.issuances.record(issuanceFixture({ serial: 'live', spiffeId: revoked, notAfter: T0 + 10 }));
        ds.issuances.record(issuanceFixture({ serial: 'due-now', spiffeId: revoked, notAfter: T0, issuedAt: T0 - 5 }));
        ds.issuances.record(issuanceFixture({ serial: 'expired', spiffeId: revoked, notAfter: T0 - 1 }));
        ds.issuances.record(issuanceFixture({ kind: 'jwt', serial: 'jwt', spiffeId: revoked, notAfter: T0 + 10 }));
        ds.issuances.record(issuanceFixture({ serial: 'not-revoked', spiffeId: `${TD}/fine`, notAfter: T0 + 10 }));
        expect(ds.issuances.listRevokedUnexpired(T0).map((i) => i.serial)).toEqual(['due-now', 'live']);
        expect(ds.issuances.listRevokedUnexpired(T0 + 11)).toEqual([]);
      });

      it('prune drops expired issuances only, and latestNotAfter follows', () => {
        const id = issuanceFixture().spiffeId;
        ds.issuances.record(issuanceFixture({ serial: 'old', notAfter: T0 - 1 }));
        ds.issuances.record(issuanceFixture({ serial: 'edge', notAfter: T0 }));
        ds.issuances.record(issuanceFixture({ serial: 'new', notAfter: T0 + 1 }));
        expect(ds.issuances.prune(T0)).toBe(1);
        expect(ds.issuances.listForSpiffeId(id).map((i) => i.serial).sort()).toEqual(['edge', 'new']);
        expect(ds.issuances.prune(T0 + 2)).toBe(2);
        expect(ds.issuances.latestNotAfter(id)).toBeUndefined();
        expect(ds.issuances.countForSpiffeId(id)).toBe(0);
      });

      it('returns copies of issuances', () => {
        const input = issuanceFixture();
        ds.issuances.record(input);
        input.notAfter = 0;
        ds.issuances.listForSpiffeId(input.spiffeId)[0]!.serial = 'mutated';
        expect(ds.issuances.listForSpiffeId(input.spiffeId)).toEqual([issuanceFixture()]);
      });
    });

    describe('transactions', () => {
      function seed(): void {
        ds.entries.create(entryFixture(), T0);
        ds.tasks.create(taskFixture());
      }

      it('commits and returns the value of fn', () => {
        const result = ds.transaction(() => {
          ds.entries.create(entryFixture(), T0);
          ds.revocations.add(revocationFixture());
          return 42;
        });
        expect(result).toBe(42);
        expect(ds.entries.list()).toHaveLength(1);
        expect(ds.revocations.list()).toHaveLength(1);
      });

      it('rolls back every store when fn throws, and rethrows the same error', () => {
        seed();
        const boom = new Error('boom');
        expect(() =>
          ds.transaction(() => {
            ds.entries.create(entryFixture({ id: 'e-2', spiffeId: `${TD}/x` }), T0);
            ds.entries.update(entryFixture({ hint: 'changed' }), T0 + 1);
            ds.tasks.finish('a1', 't1', 'revoked', T0 + 1, 'compromised');
            ds.tasks.create(taskFixture({ id: 't2' }));
            ds.revocations.add(revocationFixture());
            ds.issuances.record(issuanceFixture());
            ds.entries.delete('e-1');
            throw boom;
          }),
        ).toThrow(boom);
        expect(ds.entries.list()).toEqual([{ ...entryFixture(), createdAt: T0, updatedAt: T0, revision: 1 }]);
        expect(ds.tasks.list()).toEqual([taskFixture()]);
        expect(ds.revocations.list()).toEqual([]);
        expect(ds.issuances.countForSpiffeId(issuanceFixture().spiffeId)).toBe(0);
      });

      it('rolls back when a store call inside fails (duplicate), keeping the store usable', () => {
        seed();
        expectCode(
          () =>
            ds.transaction(() => {
              ds.revocations.add(revocationFixture());
              ds.entries.create(entryFixture(), T0);
            }),
          'already_exists',
        );
        expect(ds.revocations.list()).toEqual([]);
        ds.revocations.add(revocationFixture());
        expect(ds.revocations.list()).toHaveLength(1);
      });

      it('a nested transaction that throws rolls back only its own changes', () => {
        ds.transaction(() => {
          ds.entries.create(entryFixture(), T0);
          expect(() =>
            ds.transaction(() => {
              ds.entries.create(entryFixture({ id: 'inner', spiffeId: `${TD}/inner` }), T0);
              throw new Error('inner');
            }),
          ).toThrow('inner');
          ds.revocations.add(revocationFixture());
        });
        expect(ds.entries.list().map((e) => e.id)).toEqual(['e-1']);
        expect(ds.revocations.list()).toHaveLength(1);
      });

      it('refuses an async fn and commits nothing it did synchronously', () => {
        expect(() =>
          ds.transaction(async () => {
            ds.entries.create(entryFixture(), T0);
          }),
        ).toThrow(/must be synchronous/);
        expect(ds.entries.list()).toEqual([]);
      });
    });

    it('a reopened store returns exactly what was written (persistent stores only)', (ctx) => {
      if (!target.reopen) return ctx.skip();
      ds.entries.create(entryFixture({ expiresAt: T0 + 1, dnsNames: ['a.example.org'], federatesWith: ['other.org'] }), T0);
      ds.tasks.create(taskFixture({ binding: { kind: 'cgroup', path: '/agents/a1/t1' } }));
      ds.tasks.finish('a1', 't1', 'expired', T0 + 2, 'deadline');
      ds.revocations.add(revocationFixture());
      ds.issuances.record(issuanceFixture());
      const read = (d: Datastore) => ({
        entries: d.entries.list(),
        tasks: d.tasks.list(),
        revocations: d.revocations.list(),
        issuances: d.issuances.listForSpiffeId(issuanceFixture().spiffeId),
      });
      const before = read(ds);
      ds = target.reopen();
      expect(read(ds)).toEqual(before);
      expect(before.tasks[0]?.state).toBe('expired');
    });

    it('fails with failed_precondition after close', () => {
      ds.close();
      expectCode(() => ds.entries.list(), 'failed_precondition', /closed/);
      ds.close();
    });
  });
}
