import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { isAgentIdError, type ErrorCode } from '../common/errors.js';
import type {
  AuthorityRecord,
  Datastore,
  IssuanceRecord,
  JoinTokenRecord,
  NewRegistrationEntry,
  NodeRecord,
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
  reopen?: () => Promise<Datastore>;
  /** A second, independent handle on the same storage (another server on a shared database). */
  second?: () => Promise<Datastore>;
  cleanup: () => Promise<void>;
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
    node: null,
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
    node: null,
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

export async function expectCode(fn: () => unknown, code: ErrorCode, message?: RegExp): Promise<void> {
  let caught: unknown;
  try {
    await fn();
  } catch (err) {
    caught = err;
  }
  expect(caught, `expected an AgentIdError with code ${code}`).toBeDefined();
  if (!isAgentIdError(caught)) throw caught;
  expect(caught.code).toBe(code);
  if (message) expect(caught.message).toMatch(message);
}

export function datastoreConformance(name: string, open: () => Promise<ConformanceTarget> | ConformanceTarget): void {
  describe(`Datastore conformance: ${name}`, () => {
    let target: ConformanceTarget;
    let ds: Datastore;
    beforeEach(async () => {
      target = await open();
      ds = target.ds;
    });
    afterEach(() => target.cleanup());

    describe('entries', () => {
      it('creates an entry with server timestamps, revision 1 and canonical selectors', async () => {
        const created = await ds.entries.create(
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
        expect(await ds.entries.get('e-1')).toEqual(created);
      });

      it('rejects a second entry with the same id', async () => {
        await ds.entries.create(entryFixture(), T0);
        await expectCode(() => ds.entries.create(entryFixture({ spiffeId: `${TD}/other` }), T0), 'already_exists', /e-1/);
      });

      it('rejects an entry with the same SPIFFE ID and the same selector set, in any order', async () => {
        const selectors = [
          { type: 'unix', value: 'uid:1000' },
          { type: 'unix', value: 'gid:1000' },
        ];
        await ds.entries.create(entryFixture({ selectors }), T0);
        await expectCode(
          () => ds.entries.create(entryFixture({ id: 'e-2', selectors: [...selectors].reverse() }), T0),
          'already_exists',
          /same selectors.*e-1/,
        );
        expect(await ds.entries.list()).toHaveLength(1);
      });

      it('accepts the same SPIFFE ID with other selectors, and the same selectors for another SPIFFE ID', async () => {
        await ds.entries.create(entryFixture(), T0);
        await ds.entries.create(entryFixture({ id: 'e-2', selectors: [{ type: 'unix', value: 'uid:1001' }] }), T0);
        await ds.entries.create(entryFixture({ id: 'e-3', spiffeId: `${TD}/agent/a2` }), T0);
        // A superset of e-1's selectors is a different set.
        await ds.entries.create(
          entryFixture({
            id: 'e-4',
            selectors: [
              { type: 'unix', value: 'uid:1000' },
              { type: 'unix', value: 'gid:0' },
            ],
          }),
          T0,
        );
        expect((await ds.entries.list()).map((e) => e.id)).toEqual(['e-1', 'e-2', 'e-3', 'e-4']);
      });

      it('updates with a matching revision, keeps createdAt and bumps revision and updatedAt', async () => {
        await ds.entries.create(entryFixture(), T0);
        const updated = await ds.entries.update(entryFixture({ hint: 'v2', x509TtlMs: 60_000 }), T0 + 5, 1);
        expect(updated).toMatchObject({ hint: 'v2', x509TtlMs: 60_000, createdAt: T0, updatedAt: T0 + 5, revision: 2 });
        expect(await ds.entries.get('e-1')).toEqual(updated);
        const again = await ds.entries.update(entryFixture({ hint: 'v3' }), T0 + 9);
        expect(again.revision).toBe(3);
      });

      it('refuses an update with a stale revision and leaves the entry unchanged', async () => {
        await ds.entries.create(entryFixture(), T0);
        await ds.entries.update(entryFixture({ hint: 'first writer' }), T0 + 1, 1);
        await expectCode(
          () => ds.entries.update(entryFixture({ hint: 'second writer' }), T0 + 2, 1),
          'failed_precondition',
          /revision 1 is stale.*revision 2/,
        );
        expect(await ds.entries.get('e-1')).toMatchObject({ hint: 'first writer', revision: 2 });
      });

      it('refuses to update a missing entry', async () => {
        await expectCode(() => ds.entries.update(entryFixture({ id: 'nope' }), T0), 'not_found', /nope/);
      });

      it('refuses an update that would duplicate another entry, but allows re-saving the same entry', async () => {
        await ds.entries.create(entryFixture(), T0);
        await ds.entries.create(entryFixture({ id: 'e-2', selectors: [{ type: 'unix', value: 'uid:2000' }] }), T0);
        await expectCode(() => ds.entries.update(entryFixture({ id: 'e-2' }), T0 + 1), 'already_exists', /e-1/);
        expect((await ds.entries.get('e-2'))?.selectors).toEqual([{ type: 'unix', value: 'uid:2000' }]);
        expect((await ds.entries.update(entryFixture({ hint: 'same identity' }), T0 + 1)).revision).toBe(2);
      });

      it('deletes an entry, returning it; a second delete is not_found', async () => {
        const created = await ds.entries.create(entryFixture(), T0);
        expect(await ds.entries.delete('e-1')).toEqual(created);
        expect(await ds.entries.get('e-1')).toBeUndefined();
        expect(await ds.entries.list()).toEqual([]);
        await expectCode(() => ds.entries.delete('e-1'), 'not_found');
      });

      it('frees the SPIFFE ID + selectors identity when the entry is deleted', async () => {
        await ds.entries.create(entryFixture(), T0);
        await ds.entries.delete('e-1');
        expect((await ds.entries.create(entryFixture({ id: 'e-2' }), T0)).id).toBe('e-2');
      });

      it('lists entries oldest first, then by id', async () => {
        await ds.entries.create(entryFixture({ id: 'c', spiffeId: `${TD}/c` }), T0 + 10);
        await ds.entries.create(entryFixture({ id: 'b', spiffeId: `${TD}/b` }), T0);
        await ds.entries.create(entryFixture({ id: 'a', spiffeId: `${TD}/a` }), T0 + 10);
        expect((await ds.entries.list()).map((e) => e.id)).toEqual(['b', 'a', 'c']);
      });

      it('returns copies: neither the input nor any returned object aliases stored state', async () => {
        const input = entryFixture({ dnsNames: ['a.example.org'] });
        const created = await ds.entries.create(input, T0);
        input.dnsNames.push('injected.example.org');
        (input.selectors as { type: string; value: string }[]).push({ type: 'unix', value: 'uid:0' });
        created.hint = 'mutated';
        created.selectors.push({ type: 'unix', value: 'uid:0' });
        (await ds.entries.get('e-1'))!.dnsNames.push('x');
        (await ds.entries.list())[0]!.federatesWith.push('y');
        const updated = await ds.entries.update(entryFixture({ hint: 'v2' }), T0 + 1);
        updated.dnsNames.push('z');
        expect(await ds.entries.get('e-1')).toEqual({ ...entryFixture({ hint: 'v2' }), createdAt: T0, updatedAt: T0 + 1, revision: 2 });
      });
    });

    describe('tasks', () => {
      it('creates and reads back a task with either binding kind', async () => {
        const p = await ds.tasks.create(taskFixture());
        const c = await ds.tasks.create(taskFixture({ id: 't2', binding: { kind: 'cgroup', path: '/agents/a1/t2' } }));
        expect(p).toEqual(taskFixture());
        expect(await ds.tasks.get('a1', 't1')).toEqual(taskFixture());
        expect(await ds.tasks.get('a1', 't2')).toEqual(c);
        expect(c.binding).toEqual({ kind: 'cgroup', path: '/agents/a1/t2' });
        expect(await ds.tasks.get('a1', 'missing')).toBeUndefined();
      });

      it('task ids are unique per agent, not globally', async () => {
        await ds.tasks.create(taskFixture());
        await expectCode(() => ds.tasks.create(taskFixture({ createdBy: 'someone else' })), 'already_exists', /a1\/t1/);
        await ds.tasks.create(taskFixture({ agent: 'a2' }));
        expect((await ds.tasks.list()).map((t) => `${t.agent}/${t.id}`)).toEqual(['a1/t1', 'a2/t1']);
        expect((await ds.tasks.get('a1', 't1'))?.createdBy).toBe(taskFixture().createdBy);
      });

      it('filters by agent and by state, in creation order', async () => {
        await ds.tasks.create(taskFixture({ agent: 'a2', id: 'x', createdAt: T0 + 3 }));
        await ds.tasks.create(taskFixture({ agent: 'a1', id: 'b', createdAt: T0 + 2 }));
        await ds.tasks.create(taskFixture({ agent: 'a1', id: 'a', createdAt: T0 + 2 }));
        await ds.tasks.create(taskFixture({ agent: 'a1', id: 'old', createdAt: T0 }));
        await ds.tasks.finish('a1', 'b', 'ended', T0 + 10, 'done');
        const ids = async (f?: Parameters<Datastore['tasks']['list']>[0]) => (await ds.tasks.list(f)).map((t) => `${t.agent}/${t.id}`);
        expect(await ids()).toEqual(['a1/old', 'a1/a', 'a1/b', 'a2/x']);
        expect(await ids({})).toEqual(['a1/old', 'a1/a', 'a1/b', 'a2/x']);
        expect(await ids({ agent: 'a1' })).toEqual(['a1/old', 'a1/a', 'a1/b']);
        expect(await ids({ state: 'active' })).toEqual(['a1/old', 'a1/a', 'a2/x']);
        expect(await ids({ agent: 'a1', state: 'ended' })).toEqual(['a1/b']);
        expect(await ids({ agent: 'a2', state: 'ended' })).toEqual([]);
        expect(await ids({ agent: 'nobody' })).toEqual([]);
      });

      it.each(['ended', 'revoked', 'expired'] as const)('finishes an active task as %s', async (state) => {
        await ds.tasks.create(taskFixture());
        const done = await ds.tasks.finish('a1', 't1', state, T0 + 60_000, `reason for ${state}`);
        expect(done).toEqual({ ...taskFixture(), state, endedAt: T0 + 60_000, endReason: `reason for ${state}` });
        expect(await ds.tasks.get('a1', 't1')).toEqual(done);
      });

      it('refuses to finish a task twice and keeps the first outcome', async () => {
        await ds.tasks.create(taskFixture());
        await ds.tasks.finish('a1', 't1', 'ended', T0 + 1, 'done');
        await expectCode(() => ds.tasks.finish('a1', 't1', 'revoked', T0 + 2, 'too late'), 'failed_precondition', /ended, not active/);
        expect(await ds.tasks.get('a1', 't1')).toMatchObject({ state: 'ended', endedAt: T0 + 1, endReason: 'done' });
      });

      it('refuses to finish a missing task, or to "finish" into the active state', async () => {
        await expectCode(() => ds.tasks.finish('a1', 'nope', 'ended', T0, ''), 'not_found', /a1\/nope/);
        await ds.tasks.create(taskFixture());
        await expectCode(() => ds.tasks.finish('a1', 't1', 'active' as 'ended', T0, ''), 'invalid_argument');
        expect((await ds.tasks.get('a1', 't1'))?.state).toBe('active');
      });

      it('returns copies of tasks', async () => {
        const input = taskFixture();
        const created = await ds.tasks.create(input);
        input.metadata['injected'] = 'yes';
        created.metadata['mutated'] = 'yes';
        (created.binding as { pid: number }).pid = 1;
        (await ds.tasks.get('a1', 't1'))!.metadata['x'] = 'y';
        (await ds.tasks.list())[0]!.state = 'ended';
        (await ds.tasks.finish('a1', 't1', 'ended', T0 + 1, 'done')).metadata['z'] = 'z';
        expect(await ds.tasks.get('a1', 't1')).toEqual({ ...taskFixture(), state: 'ended', endedAt: T0 + 1, endReason: 'done' });
      });
    });

    describe('revocations', () => {
      it('adds, gets and lists revocations by revocation time', async () => {
        const b = await ds.revocations.add(revocationFixture({ spiffeId: `${TD}/b`, revokedAt: T0 + 1 }));
        const a = await ds.revocations.add(revocationFixture({ spiffeId: `${TD}/a`, revokedAt: T0 + 1 }));
        const first = await ds.revocations.add(revocationFixture({ spiffeId: `${TD}/z`, revokedAt: T0 }));
        expect(await ds.revocations.get(`${TD}/b`)).toEqual(b);
        expect(await ds.revocations.get(`${TD}/none`)).toBeUndefined();
        expect(await ds.revocations.list()).toEqual([first, a, b]);
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
      it.each(merges)('add() on an existing revocation: %s', async (_name, existing, incoming, expected) => {
        await ds.revocations.add(revocationFixture(existing));
        const merged = await ds.revocations.add(revocationFixture(incoming));
        expect(merged).toMatchObject(expected);
        expect(await ds.revocations.get(revocationFixture().spiffeId)).toEqual(merged);
        expect(await ds.revocations.list()).toHaveLength(1);
      });

      it('prunes revocations whose keepUntil has passed, keeping those due exactly now', async () => {
        await ds.revocations.add(revocationFixture({ spiffeId: `${TD}/past`, keepUntil: T0 - 1 }));
        await ds.revocations.add(revocationFixture({ spiffeId: `${TD}/now`, keepUntil: T0 }));
        await ds.revocations.add(revocationFixture({ spiffeId: `${TD}/future`, keepUntil: T0 + 1 }));
        expect(await ds.revocations.prune(T0)).toBe(1);
        expect((await ds.revocations.list()).map((r) => r.spiffeId).sort()).toEqual([`${TD}/future`, `${TD}/now`]);
        expect(await ds.revocations.prune(T0)).toBe(0);
      });

      it('returns copies of revocations', async () => {
        const input = revocationFixture();
        (await ds.revocations.add(input)).reason = 'mutated';
        input.keepUntil = 0;
        (await ds.revocations.get(input.spiffeId))!.keepUntil = 0;
        (await ds.revocations.list())[0]!.reason = 'x';
        expect(await ds.revocations.get(input.spiffeId)).toEqual(revocationFixture());
      });
    });

    describe('issuances', () => {
      it('records issuances and lists them per SPIFFE ID by issue time', async () => {
        const id = revocationFixture().spiffeId;
        await ds.issuances.record([issuanceFixture({ serial: '02', issuedAt: T0 + 2 })]);
        await ds.issuances.record([issuanceFixture({ serial: '01', issuedAt: T0 + 1 })]);
        await ds.issuances.record([issuanceFixture({ kind: 'jwt', serial: 'jti-1', issuedAt: T0 + 1, task: null })]);
        await ds.issuances.record([issuanceFixture({ serial: '03', spiffeId: `${TD}/other` })]);
        expect((await ds.issuances.listForSpiffeId(id)).map((i) => i.serial)).toEqual(['01', 'jti-1', '02']);
        expect((await ds.issuances.listForSpiffeId(id))[1]).toEqual(issuanceFixture({ kind: 'jwt', serial: 'jti-1', issuedAt: T0 + 1, task: null }));
        expect(await ds.issuances.countForSpiffeId(id)).toBe(3);
        expect(await ds.issuances.countForSpiffeId(`${TD}/nobody`)).toBe(0);
        expect(await ds.issuances.listForSpiffeId(`${TD}/nobody`)).toEqual([]);
      });

      it('refuses a serial recorded twice for the same kind', async () => {
        await ds.issuances.record([issuanceFixture()]);
        await expectCode(() => ds.issuances.record([issuanceFixture({ spiffeId: `${TD}/x` })]), 'already_exists', /0a1b2c/);
        await ds.issuances.record([issuanceFixture({ kind: 'jwt' })]);
        expect(await ds.issuances.countForSpiffeId(issuanceFixture().spiffeId)).toBe(2);
      });

      it('latestNotAfter is the maximum over both kinds, undefined when nothing was issued', async () => {
        const id = issuanceFixture().spiffeId;
        expect(await ds.issuances.latestNotAfter(id)).toBeUndefined();
        await ds.issuances.record([issuanceFixture({ serial: '01', notAfter: T0 + 500 })]);
        await ds.issuances.record([issuanceFixture({ serial: '02', notAfter: T0 + 300, issuedAt: T0 + 5 })]);
        await ds.issuances.record([issuanceFixture({ kind: 'jwt', serial: 'j', notAfter: T0 + 900 })]);
        await ds.issuances.record([issuanceFixture({ serial: '03', spiffeId: `${TD}/other`, notAfter: T0 + 99_999 })]);
        expect(await ds.issuances.latestNotAfter(id)).toBe(T0 + 900);
      });

      it('listRevokedUnexpired returns only X.509 issuances of revoked IDs still valid at now', async () => {
        const revoked = `${TD}/revoked`;
        await ds.revocations.add(revocationFixture({ spiffeId: revoked }));
        await ds.issuances.record([issuanceFixture({ serial: 'live', spiffeId: revoked, notAfter: T0 + 10 })]);
        await ds.issuances.record([issuanceFixture({ serial: 'due-now', spiffeId: revoked, notAfter: T0, issuedAt: T0 - 5 })]);
        await ds.issuances.record([issuanceFixture({ serial: 'expired', spiffeId: revoked, notAfter: T0 - 1 })]);
        await ds.issuances.record([issuanceFixture({ kind: 'jwt', serial: 'jwt', spiffeId: revoked, notAfter: T0 + 10 })]);
        await ds.issuances.record([issuanceFixture({ serial: 'not-revoked', spiffeId: `${TD}/fine`, notAfter: T0 + 10 })]);
        expect((await ds.issuances.listRevokedUnexpired(T0)).map((i) => i.serial)).toEqual(['due-now', 'live']);
        expect(await ds.issuances.listRevokedUnexpired(T0 + 11)).toEqual([]);
      });

      it('prune drops expired issuances only, and latestNotAfter follows', async () => {
        const id = issuanceFixture().spiffeId;
        await ds.issuances.record([issuanceFixture({ serial: 'old', notAfter: T0 - 1 })]);
        await ds.issuances.record([issuanceFixture({ serial: 'edge', notAfter: T0 })]);
        await ds.issuances.record([issuanceFixture({ serial: 'new', notAfter: T0 + 1 })]);
        expect(await ds.issuances.prune(T0)).toBe(1);
        expect((await ds.issuances.listForSpiffeId(id)).map((i) => i.serial).sort()).toEqual(['edge', 'new']);
        expect(await ds.issuances.prune(T0 + 2)).toBe(2);
        expect(await ds.issuances.latestNotAfter(id)).toBeUndefined();
        expect(await ds.issuances.countForSpiffeId(id)).toBe(0);
      });

      it('returns copies of issuances', async () => {
        const input = issuanceFixture();
        await ds.issuances.record([input]);
        input.notAfter = 0;
        (await ds.issuances.listForSpiffeId(input.spiffeId))[0]!.serial = 'mutated';
        expect(await ds.issuances.listForSpiffeId(input.spiffeId)).toEqual([issuanceFixture()]);
      });
    });

    describe('transactions', () => {
      async function seed(): Promise<void> {
        await ds.entries.create(entryFixture(), T0);
        await ds.tasks.create(taskFixture());
      }

      it('commits and returns the value of fn', async () => {
        const result = await ds.transaction(async (tx) => {
          await tx.entries.create(entryFixture(), T0);
          await tx.revocations.add(revocationFixture());
          return 42;
        });
        expect(result).toBe(42);
        expect(await ds.entries.list()).toHaveLength(1);
        expect(await ds.revocations.list()).toHaveLength(1);
      });

      it('rolls back every store when fn throws, and rethrows the same error', async () => {
        await seed();
        const boom = new Error('boom');
        const head = await ds.changes.head();
        await expect(
          ds.transaction(async (tx) => {
            await tx.entries.create(entryFixture({ id: 'e-2', spiffeId: `${TD}/x` }), T0);
            await tx.entries.update(entryFixture({ hint: 'changed' }), T0 + 1);
            await tx.tasks.finish('a1', 't1', 'revoked', T0 + 1, 'compromised');
            await tx.tasks.create(taskFixture({ id: 't2' }));
            await tx.revocations.add(revocationFixture());
            await tx.issuances.record([issuanceFixture()]);
            await tx.authorities.put(authorityFixture());
            await tx.anchors.put('ca', 'fingerprint');
            await tx.entries.delete('e-1');
            throw boom;
          }),
        ).rejects.toBe(boom);
        expect(await ds.entries.list()).toEqual([{ ...entryFixture(), createdAt: T0, updatedAt: T0, revision: 1 }]);
        expect(await ds.tasks.list()).toEqual([taskFixture()]);
        expect(await ds.revocations.list()).toEqual([]);
        expect(await ds.issuances.countForSpiffeId(issuanceFixture().spiffeId)).toBe(0);
        expect(await ds.authorities.list()).toEqual([]);
        expect(await ds.anchors.get('ca')).toBeUndefined();
        expect(await ds.changes.head()).toBe(head);
        expect(await ds.changes.since(head)).toEqual([]);
      });

      it('rolls back when a store call inside fails (duplicate), keeping the store usable', async () => {
        await seed();
        await expectCode(
          () =>
            ds.transaction(async (tx) => {
              await tx.revocations.add(revocationFixture());
              await tx.entries.create(entryFixture(), T0);
            }),
          'already_exists',
        );
        expect(await ds.revocations.list()).toEqual([]);
        await ds.revocations.add(revocationFixture());
        expect(await ds.revocations.list()).toHaveLength(1);
      });

      it('a caught failure inside keeps the rest of the transaction (the failed write left nothing)', async () => {
        await ds.entries.create(entryFixture(), T0);
        await ds.transaction(async (tx) => {
          await expectCode(() => tx.entries.create(entryFixture(), T0), 'already_exists');
          await tx.revocations.add(revocationFixture());
        });
        expect(await ds.entries.list()).toHaveLength(1);
        expect(await ds.revocations.list()).toHaveLength(1);
      });

      it('an issuance batch with a duplicate records nothing', async () => {
        await ds.issuances.record([issuanceFixture({ serial: 'dup' })]);
        await expectCode(() => ds.issuances.record([issuanceFixture({ serial: 'fresh' }), issuanceFixture({ serial: 'dup' })]), 'already_exists', /dup/);
        expect((await ds.issuances.listForSpiffeId(issuanceFixture().spiffeId)).map((i) => i.serial)).toEqual(['dup']);
      });

      it('serializes concurrent transactions: read-modify-write never loses an update', async () => {
        await ds.anchors.put('counter', '0');
        const bump = () =>
          ds.transaction(async (tx) => {
            const n = Number(await tx.anchors.get('counter'));
            await new Promise((r) => setTimeout(r, 1));
            await tx.anchors.put('counter', String(n + 1));
          });
        await Promise.all(Array.from({ length: 10 }, bump));
        expect(await ds.anchors.get('counter')).toBe('10');
      });

      it('concurrent creates of the same task: exactly one wins, the others get already_exists', async () => {
        const results = await Promise.allSettled(Array.from({ length: 5 }, (_, i) => ds.tasks.create(taskFixture({ createdBy: `writer ${i}` }))));
        expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
        for (const r of results.filter((r) => r.status === 'rejected')) {
          expect(isAgentIdError((r as PromiseRejectedResult).reason, 'already_exists')).toBe(true);
        }
        expect(await ds.tasks.list()).toHaveLength(1);
      });

      it('writes from outside wait for an open transaction instead of joining it', async () => {
        let release!: () => void;
        const gate = new Promise<void>((r) => (release = r));
        const tx = ds.transaction(async (t) => {
          await t.entries.create(entryFixture(), T0);
          await gate;
          throw new Error('rolled back');
        });
        const outside = ds.revocations.add(revocationFixture());
        release();
        await expect(tx).rejects.toThrow('rolled back');
        await outside;
        expect(await ds.entries.list()).toEqual([]);
        expect(await ds.revocations.list()).toHaveLength(1);
      });
    });

    describe('change feed', () => {
      it('records one change per committed write, in order, with the key to re-read', async () => {
        const head = await ds.changes.head();
        await ds.entries.create(entryFixture(), T0);
        await ds.entries.update(entryFixture({ hint: 'v2' }), T0 + 1);
        await ds.tasks.create(taskFixture());
        await ds.tasks.finish('a1', 't1', 'ended', T0 + 2, 'done');
        await ds.revocations.add(revocationFixture());
        await ds.issuances.record([issuanceFixture()]);
        await ds.authorities.put(authorityFixture());
        await ds.entries.delete('e-1');
        const changes = await ds.changes.since(head);
        expect(changes.map((c) => [c.resource, c.key])).toEqual([
          ['entry', 'e-1'],
          ['entry', 'e-1'],
          ['task', 'a1/t1'],
          ['task', 'a1/t1'],
          ['revocation', revocationFixture().spiffeId],
          ['authority', 'server-a'],
          ['entry', 'e-1'],
        ]);
        const revisions = changes.map((c) => c.revision);
        expect(revisions).toEqual([...revisions].sort((x, y) => x - y));
        expect(new Set(revisions).size).toBe(revisions.length);
        expect(await ds.changes.head()).toBe(revisions.at(-1));
        expect(await ds.changes.since(revisions[4]!, 2)).toEqual(changes.slice(5, 7));
      });

      it('a failed write records no change; pruned revocations are changes', async () => {
        await ds.entries.create(entryFixture(), T0);
        const head = await ds.changes.head();
        await expectCode(() => ds.entries.create(entryFixture(), T0), 'already_exists');
        await expectCode(() => ds.tasks.finish('a1', 'none', 'ended', T0, ''), 'not_found');
        expect(await ds.changes.since(head)).toEqual([]);
        await ds.revocations.add(revocationFixture({ keepUntil: T0 - 1 }));
        expect(await ds.revocations.prune(T0)).toBe(1);
        expect((await ds.changes.since(head)).map((c) => c.resource)).toEqual(['revocation', 'revocation']);
      });

      it('tells watchers after a commit, and stops after unsubscribe', async () => {
        let calls = 0;
        const stop = ds.changes.watch(() => calls++);
        await ds.entries.create(entryFixture(), T0);
        await expect.poll(() => calls, { timeout: 5000 }).toBeGreaterThan(0);
        stop();
        const seen = calls;
        await ds.revocations.add(revocationFixture());
        await new Promise((r) => setTimeout(r, 50));
        expect(calls).toBe(seen);
      });

      it('prune drops old rows but the head keeps counting', async () => {
        await ds.entries.create(entryFixture(), T0);
        await ds.revocations.add(revocationFixture());
        const head = await ds.changes.head();
        await ds.changes.prune(head + 1);
        expect(await ds.changes.since(0)).toEqual([]);
        expect(await ds.changes.head()).toBe(head);
        await ds.tasks.create(taskFixture());
        expect((await ds.changes.since(head)).map((c) => c.revision)).toEqual([head + 1]);
      });

      it('a second handle on the same storage sees the first one\'s writes through the feed (shared stores only)', async (ctx) => {
        if (!target.second) return ctx.skip();
        const other = await target.second();
        try {
          const head = await other.changes.head();
          await ds.tasks.create(taskFixture());
          await expect.poll(async () => (await other.changes.since(head)).map((c) => c.key), { timeout: 5000 }).toEqual(['a1/t1']);
          expect(await other.tasks.get('a1', 't1')).toEqual(taskFixture());
          await expectCode(() => other.tasks.create(taskFixture()), 'already_exists');
        } finally {
          await other.close();
        }
      });
    });

    describe('tasks by ID, authorities, anchors', () => {
      it('findById returns the task in every agent that has that ID', async () => {
        await ds.tasks.create(taskFixture({ agent: 'b', createdAt: T0 + 1 }));
        await ds.tasks.create(taskFixture({ agent: 'a', createdAt: T0 + 1 }));
        await ds.tasks.create(taskFixture({ agent: 'a', id: 'other' }));
        expect((await ds.tasks.findById('t1')).map((t) => t.agent)).toEqual(['a', 'b']);
        expect(await ds.tasks.findById('none')).toEqual([]);
      });

      it('publishes, replaces, lists and prunes authorities', async () => {
        await ds.authorities.put(authorityFixture({ serverId: 'server-b' }));
        await ds.authorities.put(authorityFixture());
        await ds.authorities.put(authorityFixture({ jwtKeys: [{ kid: 'k2', kty: 'EC' }] }));
        expect(await ds.authorities.get('server-a')).toEqual(authorityFixture({ jwtKeys: [{ kid: 'k2', kty: 'EC' }] }));
        expect((await ds.authorities.list()).map((a) => a.serverId)).toEqual(['server-a', 'server-b']);
        await ds.authorities.put(authorityFixture({ serverId: 'server-b', retireAt: T0 }));
        expect(await ds.authorities.prune(T0)).toBe(0);
        expect(await ds.authorities.prune(T0 + 1)).toBe(1);
        expect(await ds.authorities.get('server-b')).toBeUndefined();
      });

      it('stores and replaces anchors', async () => {
        expect(await ds.anchors.get('audit')).toBeUndefined();
        await ds.anchors.put('audit', '1:abc');
        await ds.anchors.put('audit', '2:def');
        expect(await ds.anchors.get('audit')).toBe('2:def');
      });
    });

    describe('nodes and join tokens', () => {
      it('entries and tasks keep their node; the same selectors may exist once per node', async () => {
        await ds.entries.create(entryFixture(), T0);
        const scoped = await ds.entries.create(entryFixture({ id: 'e-n1', node: 'n1' }), T0 + 1);
        await ds.entries.create(entryFixture({ id: 'e-n2', node: 'n2' }), T0 + 2);
        expect(scoped.node).toBe('n1');
        await expectCode(() => ds.entries.create(entryFixture({ id: 'e-dup', node: 'n1' }), T0), 'already_exists');
        await expectCode(() => ds.entries.update(entryFixture({ id: 'e-n2', node: 'n1' }), T0 + 3), 'already_exists');
        const moved = await ds.entries.update(entryFixture({ id: 'e-n2', node: null, hint: 'x', selectors: [{ type: 'unix', value: 'uid:7' }] }), T0 + 3);
        expect(moved.node).toBeNull();
        expect((await ds.entries.list()).map((e) => [e.id, e.node])).toEqual([['e-1', null], ['e-n1', 'n1'], ['e-n2', null]]);
        await ds.tasks.create(taskFixture({ node: 'n1', binding: { kind: 'process', pid: 77, startTime: '', descendants: false } }));
        expect(await ds.tasks.get('a1', 't1')).toEqual(taskFixture({ node: 'n1', binding: { kind: 'process', pid: 77, startTime: '', descendants: false } }));
        expect((await ds.tasks.finish('a1', 't1', 'revoked', T0 + 5, 'evicted')).node).toBe('n1');
        await ds.tasks.create(taskFixture({ id: 't2', node: 'n1', createdAt: T0 + 1 }));
        await ds.tasks.create(taskFixture({ id: 't3', node: 'n2' }));
        await ds.tasks.create(taskFixture({ id: 't4' }));
        expect((await ds.tasks.list({ node: 'n1' })).map((t) => t.id)).toEqual(['t1', 't2']);
        expect((await ds.tasks.list({ node: 'n1', state: 'active' })).map((t) => t.id)).toEqual(['t2']);
        expect((await ds.tasks.list({ node: 'n1', agent: 'other' }))).toEqual([]);
      });

      it('puts, replaces and lists nodes by name, each write a node change', async () => {
        const head = await ds.changes.head();
        await ds.nodes.put(nodeFixture({ name: 'web-2' }));
        await ds.nodes.put(nodeFixture());
        const evicted = nodeFixture({ state: 'evicted', evictedAt: T0 + 9, lastSeenAt: T0 + 5 });
        expect(await ds.nodes.put(evicted)).toEqual(evicted);
        expect(await ds.nodes.get('web-1')).toEqual(evicted);
        expect(await ds.nodes.get('none')).toBeUndefined();
        expect((await ds.nodes.list()).map((n) => n.name)).toEqual(['web-1', 'web-2']);
        expect((await ds.changes.since(head)).map((c) => [c.resource, c.key])).toEqual([
          ['node', 'web-2'],
          ['node', 'web-1'],
          ['node', 'web-1'],
        ]);
        await expectCode(() => ds.nodes.put(nodeFixture({ state: 'gone' as never })), 'invalid_argument');
      });

      it('a join token is consumed once and only once, never when expired, and is pruned after expiry', async () => {
        const token = joinTokenFixture();
        expect(await ds.joinTokens.create(token)).toEqual(token);
        await expectCode(() => ds.joinTokens.create(token), 'already_exists');
        await expectCode(() => ds.joinTokens.consume('00'.repeat(32), T0), 'not_found');
        const used = await ds.joinTokens.consume(token.hash, T0 + 10);
        expect(used).toEqual({ ...token, usedAt: T0 + 10 });
        await expectCode(() => ds.joinTokens.consume(token.hash, T0 + 11), 'failed_precondition', /already used/);
        const late = joinTokenFixture({ hash: 'bb'.repeat(32) });
        await ds.joinTokens.create(late);
        // Expiry is inclusive of the instant itself.
        await expectCode(() => ds.joinTokens.consume(late.hash, late.expiresAt + 1), 'failed_precondition', /expired/);
        expect((await ds.joinTokens.consume(late.hash, late.expiresAt)).usedAt).toBe(late.expiresAt);
        expect(await ds.joinTokens.prune(late.expiresAt)).toBe(0);
        expect(await ds.joinTokens.prune(late.expiresAt + 1)).toBe(2);
        await expectCode(() => ds.joinTokens.consume(token.hash, T0), 'not_found');
      });

      it('of concurrent consumers of one token exactly one succeeds', async () => {
        const token = joinTokenFixture();
        await ds.joinTokens.create(token);
        const handles = [ds, ...(target.second ? [await target.second()] : [])];
        try {
          const results = await Promise.allSettled(
            Array.from({ length: 6 }, (_, i) => handles[i % handles.length]!.joinTokens.consume(token.hash, T0 + i)),
          );
          expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
        } finally {
          for (const h of handles.slice(1)) await h.close();
        }
      });

      it('a rolled-back transaction leaves the token unused and the node unwritten', async () => {
        const token = joinTokenFixture();
        await ds.joinTokens.create(token);
        await expect(
          ds.transaction(async (tx) => {
            await tx.joinTokens.consume(token.hash, T0);
            await tx.nodes.put(nodeFixture());
            throw new Error('attestation failed');
          }),
        ).rejects.toThrow('attestation failed');
        expect(await ds.nodes.get('web-1')).toBeUndefined();
        expect((await ds.joinTokens.consume(token.hash, T0)).usedAt).toBe(T0);
      });
    });

    it('a reopened store returns exactly what was written (persistent stores only)', async (ctx) => {
      if (!target.reopen) return ctx.skip();
      await ds.entries.create(entryFixture({ expiresAt: T0 + 1, dnsNames: ['a.example.org'], federatesWith: ['other.org'] }), T0);
      await ds.tasks.create(taskFixture({ binding: { kind: 'cgroup', path: '/agents/a1/t1' } }));
      await ds.tasks.finish('a1', 't1', 'expired', T0 + 2, 'deadline');
      await ds.revocations.add(revocationFixture());
      await ds.issuances.record([issuanceFixture()]);
      await ds.authorities.put(authorityFixture());
      await ds.anchors.put('ca', 'fp');
      await ds.nodes.put(nodeFixture());
      await ds.entries.create(entryFixture({ id: 'e-n1', node: 'web-1' }), T0);
      const read = async (d: Datastore) => ({
        nodes: await d.nodes.list(),
        entries: await d.entries.list(),
        tasks: await d.tasks.list(),
        revocations: await d.revocations.list(),
        issuances: await d.issuances.listForSpiffeId(issuanceFixture().spiffeId),
        authorities: await d.authorities.list(),
        anchor: await d.anchors.get('ca'),
        changes: await d.changes.since(0),
        head: await d.changes.head(),
      });
      const before = await read(ds);
      ds = await target.reopen();
      expect(await read(ds)).toEqual(before);
      expect(before.tasks[0]?.state).toBe('expired');
    });

    it('fails with failed_precondition after close', async () => {
      await ds.close();
      await expectCode(() => ds.entries.list(), 'failed_precondition', /closed/);
      await ds.close();
    });
  });
}

export function nodeFixture(overrides: Partial<NodeRecord> = {}): NodeRecord {
  const name = overrides.name ?? 'web-1';
  return {
    name,
    spiffeId: `${TD}/agentid/node/${name}`,
    attestation: 'join_token',
    state: 'active',
    taskAgents: ['coder'],
    createdAt: T0,
    lastSeenAt: T0,
    svidExpiresAt: T0 + 3_600_000,
    evictedAt: null,
    ...overrides,
  };
}

export function joinTokenFixture(overrides: Partial<JoinTokenRecord> = {}): JoinTokenRecord {
  return {
    hash: 'aa'.repeat(32),
    node: 'web-1',
    taskAgents: ['coder'],
    createdAt: T0,
    expiresAt: T0 + 3_600_000,
    usedAt: null,
    createdBy: 'uid:0 (admin)',
    ...overrides,
  };
}

export function authorityFixture(overrides: Partial<AuthorityRecord> = {}): AuthorityRecord {
  return {
    serverId: 'server-a',
    x509Authorities: ['MIIBroot'],
    jwtKeys: [{ kid: 'k1', kty: 'EC' }],
    crls: [],
    updatedAt: T0,
    retireAt: null,
    ...overrides,
  };
}
