import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../common/logger.js';
import { createMemoryDatastore } from '../datastore/memory.js';
import { openSqliteDatastore } from '../datastore/sqlite.js';
import { authorityFixture, entryFixture, revocationFixture, taskFixture } from '../datastore/conformance.js';
import type { Datastore } from '../datastore/types.js';
import { ReadModel, type StateChange } from './read-model.js';

const T0 = Date.UTC(2026, 0, 1);
const load = (datastore: Datastore, pollIntervalMs = 60_000) => ReadModel.load({ datastore, logger: silentLogger(), pollIntervalMs });

describe('ReadModel', () => {
  const cleanups: (() => unknown)[] = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it('loads entries, active tasks only, the deny list and published authorities', async () => {
    const ds = createMemoryDatastore();
    await ds.entries.create(entryFixture(), T0);
    await ds.tasks.create(taskFixture());
    await ds.tasks.create(taskFixture({ id: 'done' }));
    await ds.tasks.finish('a1', 'done', 'ended', T0 + 1, 'finished');
    await ds.revocations.add(revocationFixture());
    await ds.authorities.put(authorityFixture());
    const model = await load(ds);
    expect(model.entries.get('e-1')?.spiffeId).toBe(entryFixture().spiffeId);
    expect(model.activeTasks().map((t) => t.id)).toEqual(['t1']);
    expect(model.isRevoked(revocationFixture().spiffeId)).toBe(true);
    expect(model.authorities().map((a) => a.serverId)).toEqual(['server-a']);
    expect(model.revision).toBe(await ds.changes.head());
  });

  it('applies each committed write once, with the record before and after', async () => {
    const ds = createMemoryDatastore();
    const model = await load(ds);
    const seen: StateChange[] = [];
    model.onChange((changes) => seen.push(...changes));

    await ds.entries.create(entryFixture(), T0);
    await ds.tasks.create(taskFixture());
    await model.sync();
    expect(seen.map((c) => c.kind)).toEqual(['entry', 'task']);
    expect(seen[0]).toMatchObject({ kind: 'entry', before: undefined, after: { id: 'e-1', revision: 1 } });

    seen.length = 0;
    await ds.entries.update(entryFixture({ hint: 'v2' }), T0 + 1);
    await ds.tasks.finish('a1', 't1', 'revoked', T0 + 2, 'compromised');
    await ds.revocations.add(revocationFixture());
    await model.sync();
    expect(seen).toMatchObject([
      { kind: 'entry', before: { revision: 1 }, after: { revision: 2, hint: 'v2' } },
      { kind: 'task', before: { state: 'active' }, after: { state: 'revoked' } },
      { kind: 'revocation', spiffeId: revocationFixture().spiffeId, before: undefined },
    ]);
    expect(model.activeTasks()).toEqual([]);
    expect(model.isRevoked(revocationFixture().spiffeId)).toBe(true);

    seen.length = 0;
    await model.sync();
    expect(seen).toEqual([]);
    await ds.entries.delete('e-1');
    await model.sync();
    expect(seen).toMatchObject([{ kind: 'entry', before: { id: 'e-1' }, after: undefined }]);
    expect(model.entries.get('e-1')).toBeUndefined();
  });

  it('a rolled-back transaction never reaches the model', async () => {
    const ds = createMemoryDatastore();
    const model = await load(ds);
    const seen: StateChange[] = [];
    model.onChange((changes) => seen.push(...changes));
    await expect(
      ds.transaction(async (tx) => {
        await tx.tasks.create(taskFixture());
        throw new Error('abandoned');
      }),
    ).rejects.toThrow('abandoned');
    await model.sync();
    expect(seen).toEqual([]);
    expect(model.activeTasks()).toEqual([]);
  });

  it('follows on its own once started: notifications from this handle, polling for another writer', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'agentid-state-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, 'agentid.db');
    const mine = openSqliteDatastore(file);
    const other = openSqliteDatastore(file);
    cleanups.push(() => mine.close(), () => other.close());
    const model = await load(mine, 50);
    model.start();
    cleanups.push(() => model.close());

    await mine.tasks.create(taskFixture({ id: 'local' }));
    await expect.poll(() => model.activeTasks().map((t) => t.id), { timeout: 5000 }).toEqual(['local']);
    // Another server's write: no notification reaches this handle, the poll finds it.
    await other.revocations.add(revocationFixture());
    await expect.poll(() => model.isRevoked(revocationFixture().spiffeId), { timeout: 5000 }).toBe(true);
  });

  it('reports not up to date while the datastore fails, keeps what it holds, and recovers', async () => {
    const ds = createMemoryDatastore();
    let down = false;
    const flaky: Datastore = {
      ...ds,
      changes: { ...ds.changes, since: (after, limit) => (down ? Promise.reject(new Error('database unreachable')) : ds.changes.since(after, limit)) },
    };
    await ds.tasks.create(taskFixture());
    const model = await load(flaky);
    down = true;
    await ds.revocations.add(revocationFixture());
    await expect(model.sync()).rejects.toThrow('unreachable');
    expect(model.upToDate).toBe(false);
    expect(model.activeTasks().map((t) => t.id)).toEqual(['t1']);
    down = false;
    await model.sync();
    expect(model.upToDate).toBe(true);
    expect(model.isRevoked(revocationFixture().spiffeId)).toBe(true);
  });
});
