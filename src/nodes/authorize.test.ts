import { describe, expect, it } from 'vitest';
import { AgentIdError } from '../common/errors.js';
import { entryFixture, nodeFixture, revocationFixture, taskFixture } from '../datastore/conformance.js';
import type { RegistrationEntry } from '../datastore/types.js';
import { changesByNode, changesForNode, entryGrant, mayForwardTask, snapshotForNode, taskGrant } from './authorize.js';

const T0 = Date.UTC(2026, 0, 1);
const entry = (over: Partial<RegistrationEntry> = {}): RegistrationEntry => ({ ...entryFixture(over), createdAt: T0, updatedAt: T0, revision: 1 });
const never = () => false;
const code = (r: unknown) => (r instanceof AgentIdError ? r.code : 'granted');

describe('node authorization', () => {
  it('a node mints for entries without a node and for its own, never for another node\'s (not found, as if missing)', () => {
    expect(code(entryGrant(entry(), 'web-1', 'x509', T0, never))).toBe('granted');
    expect(code(entryGrant(entry({ node: 'web-1' }), 'web-1', 'x509', T0, never))).toBe('granted');
    expect(code(entryGrant(entry({ node: 'web-2' }), 'web-1', 'x509', T0, never))).toBe('not_found');
    expect(code(entryGrant(undefined, 'web-1', 'x509', T0, never))).toBe('not_found');
    expect(code(entryGrant(entry({ expiresAt: T0 }), 'web-1', 'x509', T0, never))).toBe('permission_denied');
    expect(code(entryGrant(entry(), 'web-1', 'x509', T0, () => true))).toBe('permission_denied');
  });

  it('entry lifetimes are the entry TTLs, cut to the entry\'s expiry', () => {
    const grant = entryGrant(entry({ expiresAt: T0 + 60_000, dnsNames: ['a.example'] }), 'web-1', 'x509', T0, never);
    expect(grant).toMatchObject({ ttlMs: 60_000, dnsNames: ['a.example'], entryId: 'e-1', task: null });
    expect(entryGrant(entry(), 'web-1', 'jwt', T0, never)).toMatchObject({ ttlMs: 300_000, dnsNames: [] });
  });

  it('a node mints only for live tasks bound on it; task SVIDs never outlive the task end plus the buffer', () => {
    const mine = taskFixture({ node: 'web-1', createdAt: T0, expiresAt: T0 + 120_000 });
    expect(taskGrant(mine, 'web-1', 'x509', T0, 30_000, never)).toMatchObject({ ttlMs: 150_000, task: { agent: 'a1', id: 't1' } });
    expect(code(taskGrant(mine, 'web-2', 'x509', T0, 30_000, never))).toBe('not_found');
    expect(code(taskGrant(taskFixture(), 'web-1', 'x509', T0, 30_000, never))).toBe('not_found');
    expect(code(taskGrant({ ...mine, state: 'revoked' }, 'web-1', 'x509', T0, 30_000, never))).toBe('permission_denied');
    expect(code(taskGrant(mine, 'web-1', 'x509', T0 + 120_000, 30_000, never))).toBe('permission_denied');
    expect(code(taskGrant(mine, 'web-1', 'jwt', T0, 30_000, () => true))).toBe('permission_denied');
  });

  it('a node forwards task starts only for its granted namespaces, and only while active', () => {
    expect(mayForwardTask(nodeFixture(), 'coder')).toBe(true);
    expect(mayForwardTask(nodeFixture(), 'other')).toBe(false);
    expect(mayForwardTask(nodeFixture({ state: 'evicted' }), 'coder')).toBe(false);
  });

  it('the snapshot and the changes a node receives leave out other nodes\' entries and tasks', () => {
    const entries = [entry({ id: 'all' }), entry({ id: 'mine', node: 'web-1' }), entry({ id: 'theirs', node: 'web-2' })];
    const tasks = [taskFixture({ id: 'mine', node: 'web-1' }), taskFixture({ id: 'theirs', node: 'web-2' }), taskFixture({ id: 'server' })];
    const snap = snapshotForNode('web-1', { entries, tasks, revocations: [revocationFixture()] });
    expect(snap.entries.map((e) => e.id)).toEqual(['all', 'mine']);
    expect(snap.tasks.map((t) => t.id)).toEqual(['mine']);
    expect(snap.revocations).toHaveLength(1);

    const view = changesForNode('web-1', [
      { kind: 'entry', before: entries[1], after: { ...entries[1]!, node: 'web-2' } },
      { kind: 'entry', after: entries[2] },
      { kind: 'entry', before: entries[0] },
      { kind: 'entry', before: entries[2], after: { ...entries[2]!, node: null } },
      { kind: 'task', before: tasks[0], after: { ...tasks[0]!, state: 'revoked' } },
      { kind: 'task', before: tasks[1], after: { ...tasks[1]!, state: 'ended' } },
      { kind: 'revocation', spiffeId: 'spiffe://example.org/x', after: revocationFixture({ spiffeId: 'spiffe://example.org/x' }) },
      { kind: 'revocation', spiffeId: 'spiffe://example.org/y', before: revocationFixture({ spiffeId: 'spiffe://example.org/y' }) },
    ]);
    // Moved away from the node, or deleted: a deletion for it; moved to everywhere: an entry for it.
    expect(view.deletedEntries).toEqual(['mine', 'all']);
    expect(view.entries.map((e) => e.id)).toEqual(['theirs']);
    expect(view.tasks.map((t) => [t.id, t.state])).toEqual([['mine', 'revoked']]);
    expect(view.revocations.map((r) => r.spiffeId)).toEqual(['spiffe://example.org/x']);
    expect(view.removedRevocations).toEqual(['spiffe://example.org/y']);
  });

  it('every node\'s share of a batch at once is exactly its changesForNode share (named nodes, and all others alike)', () => {
    const nodes = [null, 'web-1', 'web-2', 'web-3'] as const;
    const changes: Parameters<typeof changesForNode>[1][number][] = [];
    let n = 0;
    // Every move of an entry and a task between no node and the nodes (created, moved, deleted),
    // and deny-list rows added and removed, in one batch.
    for (const from of [undefined, ...nodes]) {
      for (const to of [undefined, ...nodes]) {
        const id = `e${n++}`;
        if (from !== undefined || to !== undefined) {
          changes.push({ kind: 'entry', before: from === undefined ? undefined : entry({ id, node: from }), after: to === undefined ? undefined : entry({ id, node: to }) });
        }
        if (from !== undefined && to !== undefined) {
          changes.push({ kind: 'task', before: taskFixture({ id, node: from }), after: taskFixture({ id, node: to, state: 'ended' }) });
        } else if (from !== undefined || to !== undefined) {
          changes.push({ kind: 'task', before: from === undefined ? undefined : taskFixture({ id, node: from }), after: to === undefined ? undefined : taskFixture({ id, node: to }) });
        }
      }
    }
    changes.push({ kind: 'revocation', spiffeId: 'spiffe://example.org/x', after: revocationFixture({ spiffeId: 'spiffe://example.org/x' }) });
    changes.push({ kind: 'revocation', spiffeId: 'spiffe://example.org/y', before: revocationFixture({ spiffeId: 'spiffe://example.org/y' }) });

    const { byNode, others } = changesByNode(changes);
    expect([...byNode.keys()].sort()).toEqual(['web-1', 'web-2', 'web-3']);
    for (const node of ['web-1', 'web-2', 'web-3', 'web-4', 'unnamed']) {
      expect(byNode.get(node) ?? others).toEqual(changesForNode(node, changes));
    }
    // A batch that names no node: one view serves every node.
    const shared = changesByNode([changes.at(-2)!, { kind: 'entry', after: entry({ id: 'everywhere' }) }]);
    expect(shared.byNode.size).toBe(0);
    expect(shared.others).toEqual(changesForNode('web-9', [changes.at(-2)!, { kind: 'entry', after: entry({ id: 'everywhere' }) }]));
  });
});
