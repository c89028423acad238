import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AuditLog, verifyAuditFile } from '../audit/index.js';
import { SYSTEM_ACTOR } from '../common/actor.js';
import { ManualClock } from '../common/clock.js';
import { silentLogger } from '../common/logger.js';
import { taskFixture } from '../datastore/conformance.js';
import { createMemoryDatastore } from '../datastore/memory.js';
import { ReadModel } from '../state/read-model.js';
import { TrustDomain } from '../spiffe/spiffe-id.js';
import { Revoker } from './revocations.js';
import { TaskService } from './service.js';

const T0 = Date.UTC(2026, 0, 1);
const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** A task service on a memory datastore with a real audit file, counting its writes. */
async function setup() {
  const dir = mkdtempSync(join(tmpdir(), 'agentid-audit-writes-'));
  dirs.push(dir);
  const file = join(dir, 'audit.log');
  const clock = new ManualClock(T0 + 1000);
  const audit = AuditLog.open({ file, clock, logger: silentLogger() });
  const writes: boolean[] = [];
  audit.observe({ wrote: (durable) => writes.push(durable) });
  const datastore = createMemoryDatastore();
  for (const id of ['a', 'b']) await datastore.tasks.create(taskFixture({ agent: 'coder', id }));
  const state = await ReadModel.load({ datastore, logger: silentLogger(), pollIntervalMs: 60_000 });
  const revoker = new Revoker({ datastore, issuances: datastore.issuances, state, clock, audit, maxSvidTtlMs: 3_600_000 });
  const service = new TaskService({
    trustDomain: TrustDomain.parse('example.org'),
    datastore,
    revoker,
    state,
    processes: { inspect: async () => undefined, isAlive: async () => true, runningPids: async () => new Set<number>(), cgroupExists: async () => true, cgroupProcessOwners: async () => new Set<number>() },
    policy: { defaultTtlMs: 600_000, maxTtlMs: 3_600_000, x509TtlMs: 900_000, jwtTtlMs: 300_000 },
    clock,
    audit,
  });
  const lines = () => readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { type: string; task?: string; spiffe_id?: string });
  return { service, audit, file, writes, lines };
}

describe('TaskService: audit writes of a task end', () => {
  it('writes the task line and its revocation line in order, in one durable write (one fsync)', async () => {
    const t = await setup();
    await t.service.revoke({ agent: 'coder', id: 'a' }, 'compromised', SYSTEM_ACTOR);
    expect(t.writes).toEqual([true]);
    await t.service.end({ agent: 'coder', id: 'b' }, 'done', SYSTEM_ACTOR);
    expect(t.writes).toEqual([true, true]);
    expect(t.lines().map((l) => [l.type, l.task ?? l.spiffe_id])).toEqual([
      ['task.revoked', 'a'],
      ['revocation.added', taskFixture({ agent: 'coder', id: 'a' }).spiffeId],
      ['task.ended', 'b'],
      ['revocation.added', taskFixture({ agent: 'coder', id: 'b' }).spiffeId],
    ]);
    expect((await verifyAuditFile(t.file)).ok).toBe(true);
    // Revoking a task that already ended audits the revocation alone.
    await t.service.revoke({ agent: 'coder', id: 'b' }, 'late', SYSTEM_ACTOR);
    expect(t.lines().at(-1)!.type).toBe('revocation.added');
    expect(t.writes).toHaveLength(3);
    t.audit.close();
  });
});
