/**
 * The issuance journal on real files: what a crash left in it is recorded at the next open (a
 * record already in the datastore and a torn last line are skipped), appends resolve once written,
 * and the file is emptied once everything in it is in the datastore. The pipelined group commit is
 * checked on a real file whose syncs the test holds and releases: a second batch is written and
 * synced while the first sync runs, no append resolves before a sync that started after its write
 * returned, a third batch waits for a free sync slot, and a failed sync fails the batch whose sync
 * overlapped it. Records the batcher let go of during a long datastore outage are read back from
 * the journal, once their write has finished, and recorded when the datastore is back.
 */
import { statSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat, writeFile, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../common/logger.js';
import { issuanceFixture } from './conformance.js';
import { createMemoryDatastore } from './memory.js';
import { BatchedIssuances } from './batched-issuances.js';
import { IssuanceJournal, type JournalFile } from './issuance-journal.js';
import type { IssuanceRecord } from './types.js';

/** A held datasync: the real sync runs only when the test releases it (or fails it). */
interface HeldSync {
  /** The file's contents when the sync was called. */
  contents: string;
  release(): void;
  fail(err: Error): void;
}

/** The journal's real file, with some of its operations replaced. */
function fileWith(file: FileHandle, replaced: Partial<JournalFile>): JournalFile {
  return {
    readFile: () => file.readFile(),
    write: (data: Buffer) => file.write(data),
    truncate: (length: number) => file.truncate(length),
    close: () => file.close(),
    datasync: () => file.datasync(),
    ...replaced,
  };
}

/** Wraps the journal's real file so that every datasync after open() waits for the test. */
function holdingSyncs(held: HeldSync[], path: string) {
  return (file: FileHandle): JournalFile => fileWith(file, {
    datasync: async () => {
      if (!opened.has(path)) {
        opened.add(path);
        return file.datasync();
      }
      const contents = await readFile(path, 'utf8');
      await new Promise<void>((resolve, reject) =>
        held.push({ contents, release: resolve, fail: reject }),
      );
      await file.datasync();
    },
  });
}

/** A journal on `name` whose syncs the test holds, with record a appended, then b, and both syncs running. */
async function twoSyncsRunning(name: string) {
  const path = join(dir, name);
  const held: HeldSync[] = [];
  const journal = await IssuanceJournal.open(path, createMemoryDatastore().issuances, silentLogger(), holdingSyncs(held, path));
  const a = track(journal.append([issuanceFixture({ serial: 'a' })]));
  await until(() => held.length === 1);
  // While A's sync runs, B is written and its own sync starts without waiting for A's.
  const b = track(journal.append([issuanceFixture({ serial: 'b' })]));
  await until(() => held.length === 2);
  return { path, held, journal, a, b };
}

/** Journals whose open() (which syncs once, unheld) is over. */
const opened = new Set<string>();

/** Settles pending I/O callbacks and microtasks. */
async function settle(): Promise<void> {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
}

/** Tracks a promise's outcome without awaiting it. */
function track(p: Promise<void>): { state: 'pending' | 'resolved' | 'rejected' } {
  const t = { state: 'pending' as 'pending' | 'resolved' | 'rejected' };
  p.then(
    () => (t.state = 'resolved'),
    () => (t.state = 'rejected'),
  );
  return t;
}

/** A memory datastore whose issuance writes fail while `outage.down` is set. */
function storeWithOutage() {
  const ds = createMemoryDatastore();
  const outage = { down: false };
  const store = {
    ...ds.issuances,
    record: async (records: readonly IssuanceRecord[]) => {
      if (outage.down) throw new Error('datastore unavailable');
      return ds.issuances.record(records);
    },
  };
  return { ds, store, outage };
}

async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setTimeout(r, 5));
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agentid-journal-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('IssuanceJournal', () => {
  it('records at open what a crash left in it, skipping records already stored and a torn last line, then starts empty', async () => {
    const path = join(dir, 'recover.journal');
    const ds = createMemoryDatastore();
    await ds.issuances.record([issuanceFixture({ serial: 'already' })]);
    const lines = [issuanceFixture({ serial: 'already' }), issuanceFixture({ serial: 'lost-1' }), issuanceFixture({ serial: 'lost-2' })].map((r) => JSON.stringify(r));
    await writeFile(path, `${lines.join('\n')}\n{"kind":"x509","ser`);
    const journal = await IssuanceJournal.open(path, ds.issuances, silentLogger());
    const stored = await ds.issuances.listForSpiffeId(issuanceFixture().spiffeId);
    expect(stored.map((r) => r.serial).sort()).toEqual(['already', 'lost-1', 'lost-2']);
    expect((await stat(path)).size).toBe(0);
    await journal.close();
  });

  it('holds X.509 records until the datastore has them, then empties; JWT records are not journaled', async () => {
    const path = join(dir, 'run.journal');
    const ds = createMemoryDatastore();
    const journal = await IssuanceJournal.open(path, ds.issuances, silentLogger());
    const batched = new BatchedIssuances(ds.issuances, silentLogger(), { flushIntervalMs: 60_000 }, journal);
    await batched.queue([issuanceFixture({ serial: 'x1' }), issuanceFixture({ kind: 'jwt', serial: 'j1' })]);
    const written = (await readFile(path, 'utf8')).trim().split('\n').map((l) => JSON.parse(l).serial);
    expect(written).toEqual(['x1']);
    expect(batched.queue([issuanceFixture({ kind: 'jwt', serial: 'j2' })])).toBeUndefined();

    // A crash now: a new journal on the same file records x1 into another (empty) datastore.
    const after = createMemoryDatastore();
    const copy = join(dir, 'copy.journal');
    await writeFile(copy, await readFile(path));
    await (await IssuanceJournal.open(copy, after.issuances, silentLogger())).close();
    expect((await after.issuances.listForSpiffeId(issuanceFixture().spiffeId)).map((r) => r.serial)).toEqual(['x1']);

    // Once the batch is in the datastore, the journal starts over.
    await batched.flush();
    await journal.close();
    expect((await stat(path)).size).toBe(0);
  });

  it('syncs the next batch while a sync runs, and resolves each append only after a sync that started after its write', async () => {
    const { path, held, journal, a, b } = await twoSyncsRunning('pipelined.journal');
    const [syncA, syncB] = [held[0]!, held[1]!];
    expect(syncA.contents).toContain('"serial":"a"');
    expect(syncA.contents).not.toContain('"serial":"b"');
    expect(syncB.contents).toContain('"serial":"b"');

    // Two syncs in flight: C is neither written nor synced until one returns.
    const c = track(journal.append([issuanceFixture({ serial: 'c' })]));
    await settle();
    expect(held.length).toBe(2);
    expect(await readFile(path, 'utf8')).not.toContain('"serial":"c"');
    expect([a.state, b.state, c.state]).toEqual(['pending', 'pending', 'pending']);

    // B's sync returns first: B is durable, A is not yet (its own sync still runs).
    syncB.release();
    await until(() => b.state !== 'pending');
    expect(b.state).toBe('resolved');
    expect(a.state).toBe('pending');
    // The freed slot goes to C.
    await until(() => held.length === 3);
    expect(held[2]!.contents).toContain('"serial":"c"');
    expect(c.state).toBe('pending');

    syncA.release();
    held[2]!.release();
    await until(() => a.state !== 'pending' && c.state !== 'pending');
    expect([a.state, c.state]).toEqual(['resolved', 'resolved']);
    await journal.close();
  });

  it('fails the batch whose sync failed and the one whose sync overlapped it, and keeps working after', async () => {
    const { held, journal, a, b } = await twoSyncsRunning('failing.journal');
    const [syncA, syncB] = held.splice(0);

    syncA!.fail(new Error('EIO'));
    await until(() => a.state !== 'pending');
    expect(a.state).toBe('rejected');
    // B's sync started before A's failed: whatever it returns, B is not trusted.
    syncB!.release();
    await until(() => b.state !== 'pending');
    expect(b.state).toBe('rejected');

    // A sync that starts after the failure counts again.
    const c = track(journal.append([issuanceFixture({ serial: 'c' })]));
    await until(() => held.length === 1);
    held.shift()!.release();
    await until(() => c.state !== 'pending');
    expect(c.state).toBe('resolved');
    await journal.close();
  });

  it('empties the file only when nothing is being written or synced', async () => {
    const { path, held, journal, a, b } = await twoSyncsRunning('truncate.journal');
    // Both records reach the datastore while B's sync still runs: B's record must stay in the file
    // until that sync is over (a truncate now would sync an empty file and hand out B undurable).
    journal.committed(2);
    held.shift()!.release();
    await until(() => a.state === 'resolved');
    await settle();
    expect(await readFile(path, 'utf8')).toContain('"serial":"b"');
    held.shift()!.release();
    await until(() => b.state === 'resolved');
    await until(() => held.length === 0);
    await journal.close();
    expect((await stat(path)).size).toBe(0);
  });

  it('after a write cut short, the next record starts on its own line and is recovered', async () => {
    const path = join(dir, 'torn.journal');
    let cutNext = false;
    const journal = await IssuanceJournal.open(path, createMemoryDatastore().issuances, silentLogger(), (file) => fileWith(file, {
      write: async (data: Buffer) => {
        if (!cutNext) return file.write(data);
        cutNext = false;
        // Half the line reaches the file, then the disk is full.
        await file.write(data.subarray(0, data.length >> 1));
        throw Object.assign(new Error('no space left on device'), { code: 'ENOSPC' });
      },
    }));
    cutNext = true;
    await expect(journal.append([issuanceFixture({ serial: 'torn' })])).rejects.toThrow(/no space/);
    await journal.append([issuanceFixture({ serial: 'after' })]);

    const after = createMemoryDatastore();
    const copy = join(dir, 'torn-copy.journal');
    await writeFile(copy, await readFile(path));
    await (await IssuanceJournal.open(copy, after.issuances, silentLogger())).close();
    expect((await after.issuances.listForSpiffeId(issuanceFixture().spiffeId)).map((r) => r.serial)).toEqual(['after']);
    await journal.close();
  });

  it('records dropped from memory during a long datastore outage are read back from the journal once it is back', async () => {
    const path = join(dir, 'outage.journal');
    const { ds, store, outage } = storeWithOutage();
    const journal = await IssuanceJournal.open(path, store, silentLogger());
    const batched = new BatchedIssuances(store, silentLogger(), { flushIntervalMs: 60_000, maxBatch: 2, maxPending: 3 }, journal);

    outage.down = true;
    for (const serial of ['x1', 'x2', 'x3', 'x4', 'x5']) await batched.queue([issuanceFixture({ serial })]);
    batched.queue([issuanceFixture({ kind: 'jwt', serial: 'j1' })]);
    // Only the newest three are still in memory; x1, x2 and x3 are only in the journal now.
    expect(batched.pendingCount).toBe(3);
    expect(batched.dropped).toBe(3);
    await expect(batched.flush()).rejects.toThrow(/unavailable/);

    outage.down = false;
    await batched.flush();
    const stored = await ds.issuances.listForSpiffeId(issuanceFixture().spiffeId);
    expect(stored.filter((r) => r.kind === 'x509').map((r) => r.serial).sort()).toEqual(['x1', 'x2', 'x3', 'x4', 'x5']);
    // Everything the journal held is in the datastore: it is emptied again.
    await until(() => statSync(path).size === 0);
    await journal.close();
  });

  it('reads a dropped record back only after its journal write has finished', async () => {
    const path = join(dir, 'slow-write.journal');
    const { ds, store, outage } = storeWithOutage();
    outage.down = true;
    let gate: (() => void) | undefined;
    const journal = await IssuanceJournal.open(path, store, silentLogger(), (file) => fileWith(file, {
      write: async (data: Buffer) => {
        if (data.includes('"slow"')) await new Promise<void>((resolve) => (gate = resolve));
        return file.write(data);
      },
    }));
    const batched = new BatchedIssuances(store, silentLogger(), { flushIntervalMs: 60_000, maxBatch: 10, maxPending: 1 }, journal);
    const slow = batched.queue([issuanceFixture({ serial: 'slow' })])!;
    await until(() => gate !== undefined);
    const next = batched.queue([issuanceFixture({ serial: 'next' })])!;
    expect(batched.dropped).toBe(1);
    outage.down = false;
    const flushed = batched.flush();
    await settle();
    gate!();
    await Promise.all([flushed, slow, next]);
    const stored = await ds.issuances.listForSpiffeId(issuanceFixture().spiffeId);
    expect(stored.map((r) => r.serial).sort()).toEqual(['next', 'slow']);
    await journal.close();
  });
});
