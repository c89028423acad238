/**
 * The issuance journal on real files: what a crash left in it is recorded at the next open (a
 * record already in the datastore and a torn last line are skipped), appends resolve once written,
 * and the file is emptied once everything in it is in the datastore.
 */
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../common/logger.js';
import { issuanceFixture } from './conformance.js';
import { createMemoryDatastore } from './memory.js';
import { BatchedIssuances } from './batched-issuances.js';
import { IssuanceJournal } from './issuance-journal.js';

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
});
