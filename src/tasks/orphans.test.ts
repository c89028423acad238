import { describe, expect, it } from 'vitest';
import type { AuditEventInput } from '../audit/index.js';
import type { Actor } from '../common/actor.js';
import { ManualClock } from '../common/clock.js';
import { silentLogger } from '../common/logger.js';
import { taskFixture } from '../datastore/conformance.js';
import { createMemoryDatastore } from '../datastore/memory.js';
import type { Datastore, TaskRecord } from '../datastore/types.js';
import { ReadModel, type StateChange } from '../state/read-model.js';
import { TrustDomain } from '../spiffe/spiffe-id.js';
import { Revoker } from './revocations.js';
import { TaskService } from './service.js';

const SYSTEM: Actor = { role: 'admin', agents: [], spiffeId: 'agentid:system' };
const T0 = Date.UTC(2026, 0, 1);

/** A task service on a memory datastore that counts its transactions, over a made-up process table. */
async function setup(tasks: TaskRecord[], running: Map<number, string>) {
  const clock = new ManualClock(T0 + 1000);
  const inner = createMemoryDatastore();
  let transactions = 0;
  const datastore: Datastore = { ...inner, transaction: (fn) => (transactions++, inner.transaction(fn)) };
  for (const t of tasks) await inner.tasks.create(t);
  const audit: AuditEventInput[] = [];
  const sink = { append: (e: AuditEventInput) => void audit.push(e) };
  const state = await ReadModel.load({ datastore, logger: silentLogger(), pollIntervalMs: 60_000 });
  const emitted: StateChange[][] = [];
  state.onChange((changes) => emitted.push(changes));
  const revoker = new Revoker({ datastore, issuances: datastore.issuances, state, clock, audit: sink, maxSvidTtlMs: 3_600_000 });
  const isAlive = async (ref: { pid: number; startTime: string }) => running.get(ref.pid) === ref.startTime;
  const service = new TaskService({
    trustDomain: TrustDomain.parse('example.org'),
    datastore,
    revoker,
    state,
    processes: { inspect: async () => undefined, isAlive, runningPids: async () => new Set(running.keys()), cgroupExists: async () => true, cgroupProcessOwners: async () => new Set<number>() },
    policy: { defaultTtlMs: 600_000, maxTtlMs: 3_600_000, x509TtlMs: 900_000, jwtTtlMs: 300_000 },
    clock,
    audit: sink,
  });
  return { service, state, inner, audit, emitted, clock, transactions: () => transactions };
}

const bound = (id: string, pid: number, extra: Partial<TaskRecord> = {}) =>
  taskFixture({ agent: 'coder', id, binding: { kind: 'process', pid, startTime: '1', descendants: false }, ...extra });

describe('TaskService: ending tasks in bulk', () => {
  it('ends every orphaned task of a pass in one transaction, reported to the read model as one change set', async () => {
    const tasks = [bound('alive', 11), ...Array.from({ length: 40 }, (_, i) => bound(`gone-${i}`, 1000 + i))];
    const t = await setup(tasks, new Map([[11, '1']]));
    await t.service.endOrphaned(SYSTEM);

    expect(t.transactions()).toBe(1);
    // One change set, so the issuer re-signs its CRLs once for all of them (server/issuer.ts).
    const withRevocations = t.emitted.filter((set) => set.some((c) => c.kind === 'revocation'));
    expect(withRevocations).toHaveLength(1);
    expect(withRevocations[0]!.filter((c) => c.kind === 'revocation')).toHaveLength(40);
    // Each one ended, denied and audited as when it is ended alone.
    expect(t.state.activeTasks().map((x) => x.id)).toEqual(['alive']);
    for (let i = 0; i < 40; i++) {
      const ended = await t.inner.tasks.get('coder', `gone-${i}`);
      expect(ended).toMatchObject({ state: 'ended', endReason: 'bound process exited' });
      expect(t.state.isRevoked(ended!.spiffeId)).toBe(true);
    }
    expect(t.audit.filter((e) => e.type === 'task.ended')).toHaveLength(40);
    expect(t.audit.filter((e) => e.type === 'revocation.added')).toHaveLength(40);
    expect(t.audit.find((e) => e.type === 'task.ended')).toMatchObject({ reason: 'bound process exited', agent: 'coder', task: 'gone-0' });

    // Nothing left to end: no transaction at all.
    await t.service.endOrphaned(SYSTEM);
    expect(t.transactions()).toBe(1);
  });

  it('expires every task past its end in one transaction, with the same records as before', async () => {
    const tasks = [bound('later', 11, { expiresAt: T0 + 60_000 }), bound('due-1', 11, { expiresAt: T0 }), bound('due-2', 11, { expiresAt: T0 + 500 })];
    const t = await setup(tasks, new Map([[11, '1']]));
    expect(await t.service.expireDue(SYSTEM)).toBe(T0 + 60_000);
    expect(t.transactions()).toBe(1);
    expect(await t.inner.tasks.get('coder', 'due-1')).toMatchObject({ state: 'expired', endReason: 'task lifetime reached' });
    expect(t.audit.filter((e) => e.type === 'task.ended').map((e) => (e as { reason: string }).reason)).toEqual(['expired: task lifetime reached', 'expired: task lifetime reached']);
    expect(t.audit.find((e) => e.type === 'revocation.added')).toMatchObject({ reason: 'task expired: task lifetime reached' });
    expect(t.state.activeTasks().map((x) => x.id)).toEqual(['later']);
  });

  it('leaves a task that was ended meanwhile as it is', async () => {
    const t = await setup([bound('gone', 1000)], new Map());
    // Ended by an admin after the read model saw it active: the pass must not end it again.
    await t.inner.tasks.finish('coder', 'gone', 'revoked', T0 + 10, 'by hand');
    await t.service.endOrphaned(SYSTEM);
    expect(await t.inner.tasks.get('coder', 'gone')).toMatchObject({ state: 'revoked', endReason: 'by hand' });
    expect(t.audit).toEqual([]);
  });
});
