/*
 * Datastore throughput, SQLite and PostgreSQL side by side, through the Datastore interface:
 * sequential admin writes (each its own transaction and change row), issuance batches, feed reads,
 * and for PostgreSQL how long a write on one server takes to wake another (LISTEN/NOTIFY).
 * PostgreSQL runs in a throwaway cluster (test/support/postgres.ts) with fsync off, so its figures
 * are an upper bound for the protocol and locking cost, not for a durable disk.
 *
 *   node --import tsx bench/datastore.ts
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { entryFixture, issuanceFixture, revocationFixture } from '../src/datastore/conformance.js';
import { openPostgresDatastore } from '../src/datastore/postgres.js';
import { openSqliteDatastore } from '../src/datastore/sqlite.js';
import type { Datastore } from '../src/datastore/types.js';
import { startPostgresCluster } from '../test/support/postgres.js';

const WRITES = 500;
const BATCHES = 20;
const BATCH_SIZE = 1_000;
const WAKES = 200;
const T0 = Date.UTC(2026, 0, 1);

interface Row {
  store: string;
  metric: string;
  value: number;
  unit: string;
}
const rows: Row[] = [];
const add = (store: string, metric: string, value: number, unit: string) =>
  rows.push({ store, metric, value: Math.round(value * 10) / 10, unit });

function percentile(sorted: number[], p: number): number {
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[Math.min(rank, sorted.length) - 1]!;
}

async function rate(store: string, metric: string, count: number, fn: (i: number) => Promise<unknown>): Promise<void> {
  const start = performance.now();
  for (let i = 0; i < count; i++) await fn(i);
  add(store, metric, count / ((performance.now() - start) / 1000), '/s');
}

async function measure(store: string, ds: Datastore): Promise<void> {
  await rate(store, 'entries.create (sequential)', WRITES, (i) =>
    ds.entries.create(entryFixture({ id: `e${i}`, spiffeId: `spiffe://bench.example/e${i}` }), T0),
  );
  await rate(store, 'revocations.add (sequential)', WRITES, (i) =>
    ds.revocations.add(revocationFixture({ spiffeId: `spiffe://bench.example/r${i}` })),
  );
  await rate(store, `transaction: entry + revocation`, WRITES, (i) =>
    ds.transaction(async (tx) => {
      await tx.entries.create(entryFixture({ id: `t${i}`, spiffeId: `spiffe://bench.example/t${i}` }), T0);
      await tx.revocations.add(revocationFixture({ spiffeId: `spiffe://bench.example/t${i}` }));
    }),
  );
  const start = performance.now();
  for (let b = 0; b < BATCHES; b++) {
    await ds.issuances.record(Array.from({ length: BATCH_SIZE }, (_, i) => issuanceFixture({ serial: `${b}-${i}` })));
  }
  add(store, `issuances.record (batches of ${BATCH_SIZE})`, (BATCHES * BATCH_SIZE) / ((performance.now() - start) / 1000), 'rows/s');
  const feedStart = performance.now();
  let cursor = 0;
  let read = 0;
  for (;;) {
    const changes = await ds.changes.since(cursor, 1000);
    if (changes.length === 0) break;
    read += changes.length;
    cursor = changes.at(-1)!.revision;
  }
  add(store, 'changes.since (pages of 1000)', read / ((performance.now() - feedStart) / 1000), 'changes/s');
}

async function wakeLatency(a: Datastore, b: Datastore): Promise<void> {
  const samples: number[] = [];
  let wake: (() => void) | undefined;
  await new Promise<void>((resolve) => {
    let first = true;
    b.changes.watch(() => {
      if (first) {
        first = false;
        resolve();
      }
      wake?.();
    });
  });
  for (let i = 0; i < WAKES; i++) {
    const woken = new Promise<void>((resolve) => (wake = resolve));
    const start = performance.now();
    await a.revocations.add(revocationFixture({ spiffeId: `spiffe://bench.example/w${i}` }));
    await woken;
    samples.push(performance.now() - start);
  }
  samples.sort((x, y) => x - y);
  add('postgresql', 'write on A until B is woken, p50', percentile(samples, 50), 'ms');
  add('postgresql', 'write on A until B is woken, p99', percentile(samples, 99), 'ms');
}

async function main(): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'agentid-bench-ds-'));
  const sqlite = await openSqliteDatastore(join(dir, 'agentid.db'));
  try {
    await measure('sqlite', sqlite);
  } finally {
    await sqlite.close();
    rmSync(dir, { recursive: true, force: true });
  }

  const cluster = await startPostgresCluster();
  try {
    const url = await cluster.createDatabase('bench');
    const a = await openPostgresDatastore(url);
    const b = await openPostgresDatastore(url);
    try {
      await measure('postgresql', a);
      await wakeLatency(a, b);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  } finally {
    await cluster.stop();
  }

  console.log('| Store | What | Result |\n|---|---|---|');
  for (const r of rows) console.log(`| ${r.store} | ${r.metric} | ${r.value} ${r.unit} |`);
  for (const r of rows) console.log(JSON.stringify({ bench: 'datastore', ...r }));
}

await main();
