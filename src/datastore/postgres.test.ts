import BetterSqlite3 from 'better-sqlite3';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../config/index.js';
import { openDatastore } from './index.js';
import { isAgentIdError } from '../common/errors.js';
import { startPostgresCluster, type PostgresCluster } from '../../test/support/postgres.js';
import { datastoreConformance, entryFixture, expectCode, issuanceFixture, revocationFixture, taskFixture } from './conformance.js';
import { applyMigrations, SCHEMA_VERSION } from './migrations.js';
import { openPostgresDatastore } from './postgres.js';
import { describePostgresUrl } from './postgres-url.js';
import { applyPostgresMigrations, POSTGRES_MIGRATIONS, POSTGRES_SQL } from './postgres-migrations.js';
import { MIGRATIONS } from './migrations.js';
import type { Datastore, Stores } from './types.js';

const T0 = Date.UTC(2026, 0, 1);
const TD = 'spiffe://example.org';

/*
 * PostgreSQL-specific behaviour against a real server: one throwaway cluster for this file, a
 * fresh database (schema tests) or schema per test. Two Datastore instances on one database stand for two servers (two
 * pools, two listeners).
 */

let cluster: PostgresCluster;
let databases = 0;
const opened: Datastore[] = [];

beforeAll(async () => {
  cluster = await startPostgresCluster();
});
afterAll(async () => {
  await cluster?.stop();
});
afterEach(async () => {
  await Promise.all(opened.splice(0).map((ds) => ds.close()));
});

let schemas = 0;
/** A fresh schema in one shared database: most tests need only their own tables. */
async function freshSchema(): Promise<string> {
  schemas += 1;
  return cluster.createSchema('pgtest', `t${schemas}`);
}

async function freshDatabase(): Promise<string> {
  databases += 1;
  return cluster.createDatabase(`pgtest_${databases}`);
}

const dbName = (url: string) => describePostgresUrl(url).database;

async function open(url: string, poolSize?: number): Promise<Datastore> {
  const ds = await openPostgresDatastore(url, { poolSize });
  opened.push(ds);
  return ds;
}

async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

/** Resolves on the listener's next call. */
function nextWake(ds: Datastore): Promise<void> {
  return new Promise((resolve) => {
    const stop = ds.changes.watch(() => {
      stop();
      resolve();
    });
  });
}

/**
 * A transaction on `ds` that has created entry `id` (so it holds the change lock) and then waits;
 * resolves once it is waiting. `release` lets it go on: to `then`, and to commit.
 */
async function holdTransaction(
  ds: Datastore,
  id: string,
  then: (tx: Stores) => Promise<unknown> = async () => undefined,
): Promise<{ release: () => void; done: Promise<unknown> }> {
  let reached!: () => void;
  const inside = new Promise<void>((r) => (reached = r));
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const done = ds.transaction(async (tx) => {
    await tx.entries.create(entryFixture({ id, spiffeId: `${TD}/${id}` }), T0);
    reached();
    await gate;
    return then(tx);
  });
  await inside;
  return { release, done };
}

async function waitFor<T>(probe: () => Promise<T | undefined>): Promise<T> {
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    await new Promise((r) => setTimeout(r, 20));
  }
}

/*
 * The conformance suite that memory and SQLite run, unchanged: every test on a fresh schema, with a
 * second handle (another server) on the same one.
 */
let conformanceSchemas = 0;
datastoreConformance('postgresql', async () => {
  conformanceSchemas += 1;
  const url = await cluster.createSchema('conformance', `t${conformanceSchemas}`);
  const handles: Datastore[] = [];
  const openHandle = async () => {
    const handle = await openPostgresDatastore(url);
    handles.push(handle);
    return handle;
  };
  let ds = await openHandle();
  return {
    ds,
    reopen: async () => {
      await ds.close();
      ds = await openHandle();
      return ds;
    },
    second: openHandle,
    cleanup: async () => {
      await Promise.all(handles.map((h) => h.close()));
    },
  };
});

describe('postgres datastore: schema', () => {
  it('applies the same migration versions as SQLite, once, and reopening changes nothing', async () => {
    expect(POSTGRES_MIGRATIONS.map((m) => [m.version, m.description])).toEqual(MIGRATIONS.map((m) => [m.version, m.description]));
    for (const description of Object.keys(POSTGRES_SQL)) expect(MIGRATIONS.map((m) => m.description)).toContain(description);
    const url = await freshDatabase();
    // Two servers starting at once on an empty database: each migration is applied exactly once.
    await Promise.all([open(url), open(url), open(url)]);
    await open(url);
    const rows = await cluster.query(dbName(url), 'SELECT version, description FROM schema_migrations ORDER BY version');
    expect(rows.map((r) => [Number(r.version), r.description])).toEqual(MIGRATIONS.map((m) => [m.version, m.description]));
  });

  it('has the same tables and columns as the SQLite schema', async () => {
    const sqlite = new BetterSqlite3(':memory:');
    applyMigrations(sqlite);
    const tables = (sqlite.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name").all() as { name: string }[]).map((t) => t.name);
    const sqliteColumns = Object.fromEntries(
      tables.map((t) => [t, (sqlite.prepare(`PRAGMA table_info(${t})`).all() as { name: string }[]).map((c) => c.name).sort()]),
    );
    sqlite.close();
    const url = await freshDatabase();
    await open(url);
    const database = dbName(url);
    const rows = await cluster.query<{ table_name: string; column_name: string }>(
      database,
      "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public' ORDER BY table_name, column_name",
    );
    const pgColumns: Record<string, string[]> = {};
    for (const r of rows) (pgColumns[r.table_name] ??= []).push(r.column_name);
    for (const cols of Object.values(pgColumns)) cols.sort();
    expect(pgColumns).toEqual(sqliteColumns);
  });

  it('refuses a database whose schema is newer than this code', async () => {
    const url = await freshDatabase();
    await open(url);
    await cluster.query(dbName(url), "INSERT INTO schema_migrations VALUES ($1, 'from the future')", [SCHEMA_VERSION + 1]);
    await expectCode(() => openPostgresDatastore(url), 'failed_precondition', /newer than this agentid supports/);
  });

  it('a failed migration leaves the version where it was', async () => {
    const url = await freshDatabase();
    const pg = (await import('pg')).default;
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      const broken = [...POSTGRES_MIGRATIONS.slice(0, 1), { version: 2, description: 'broken', sql: 'CREATE TABLE x (a INT); SELECT nope' }];
      await expect(applyPostgresMigrations(client, { migrations: broken })).rejects.toThrow(/nope/);
      const { rows } = await client.query('SELECT MAX(version) AS v FROM schema_migrations');
      expect(Number(rows[0].v)).toBe(1);
      const { rows: tables } = await client.query("SELECT 1 FROM information_schema.tables WHERE table_name = 'x'");
      expect(tables).toEqual([]);
    } finally {
      await client.end();
    }
  });
});

describe('postgres datastore', () => {
  it('never puts the password of a URL into what it logs', () => {
    expect(describePostgresUrl('postgresql://agentid:s3cret@db.example.org:5433/agentid?sslmode=require')).toEqual({
      host: 'db.example.org:5433',
      database: 'agentid',
    });
    expect(describePostgresUrl('postgresql:///agentid?host=%2Ftmp%2Fpg')).toEqual({ host: '/tmp/pg', database: 'agentid' });
    expect(JSON.stringify(describePostgresUrl('postgresql://u:s3cret@h/d'))).not.toContain('s3cret');
  });

  it('reports unavailable when the server cannot be reached', async () => {
    await expectCode(() => openPostgresDatastore('postgresql:///agentid?host=/nonexistent-agentid-dir'), 'unavailable', /unreachable \(ENOENT\)/);
    await expectCode(() => openPostgresDatastore('postgresql://agentid@127.0.0.1:1/agentid'), 'unavailable', /unreachable \(ECONNREFUSED\)/);
  });

  it('reports failed_precondition, not unavailable, for what retrying cannot fix', async () => {
    await expectCode(() => openPostgresDatastore(cluster.url('no_such_database')), 'failed_precondition', /no_such_database .*does not exist \(3D000\)/);
    const url = await freshDatabase();
    await cluster.query(dbName(url), 'CREATE ROLE limited LOGIN');
    const limited = url.replace('user=postgres', 'user=limited');
    await expectCode(() => openPostgresDatastore(limited), 'failed_precondition', /may not create or change the tables.*\(42501\)/);
  });

  it('a user limited to reading and writing rows can run on a database the owner has migrated', async () => {
    const url = await freshDatabase();
    await (await open(url)).entries.create(entryFixture(), T0);
    for (const statement of [
      'CREATE ROLE app LOGIN',
      'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app',
      'GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO app',
    ]) {
      await cluster.query(dbName(url), statement);
    }
    const app = await open(url.replace('user=postgres', 'user=app'));
    await app.revocations.add(revocationFixture());
    await app.changes.prune(1);
    expect((await app.entries.list()).map((e) => e.id)).toEqual(['e-1']);
    expect(await app.changes.head()).toBe(2);
  });

  it('orders text binary (as SQLite and memory do) in a database whose default collation is linguistic', async () => {
    const ds = await open(await freshSchema());
    for (const id of ['a', 'B', '_c']) await ds.entries.create(entryFixture({ id, spiffeId: `${TD}/${id}` }), T0);
    expect((await ds.entries.list()).map((e) => e.id)).toEqual(['B', '_c', 'a']);
  });

  it('issuance batches: a serial twice in one batch is refused, and a large batch commits or fails whole', async () => {
    const ds = await open(await freshSchema());
    await expectCode(
      () => ds.issuances.record([issuanceFixture({ serial: 'fresh' }), issuanceFixture({ serial: 'twice' }), issuanceFixture({ serial: 'twice' })]),
      'already_exists',
      /x509 serial twice already recorded/,
    );
    expect(await ds.issuances.countForSpiffeId(issuanceFixture().spiffeId)).toBe(0);
    const many = Array.from({ length: 2500 }, (_, n) => issuanceFixture({ serial: `s${n}` }));
    await expectCode(() => ds.issuances.record([...many, issuanceFixture({ serial: 's7' })]), 'already_exists', /serial s7 /);
    expect(await ds.issuances.countForSpiffeId(issuanceFixture().spiffeId)).toBe(0);
    await ds.issuances.record(many);
    expect(await ds.issuances.countForSpiffeId(issuanceFixture().spiffeId)).toBe(2500);
  });
});

describe('openDatastore', () => {
  it('opens the PostgreSQL database datastore.url names, logging host and database but never the password', async () => {
    const url = `${await freshSchema()}&password=s3cret-in-url`;
    const lines: string[] = [];
    const logger = pino({ level: 'debug' }, { write: (line: string) => void lines.push(line) });
    const config = loadConfig({ env: { HOME: '/home/op' }, flags: { datastore: url }, uid: 1000, cwd: '/' });
    const ds = await openDatastore(config, { logger });
    opened.push(ds);
    expect(ds.kind).toBe('postgresql');
    await ds.entries.create(entryFixture(), T0);
    const log = lines.join('');
    expect(log).toContain(dbName(url));
    expect(log).toContain(cluster.socketDir);
    expect(log).not.toContain('s3cret');

    const unreachable = loadConfig({
      env: { HOME: '/home/op' },
      flags: { datastore: 'postgresql://agentid:s3cret@%2Fnonexistent-agentid-dir/agentid' },
      uid: 1000,
      cwd: '/',
    });
    const err = await rejection(openDatastore(unreachable, { logger }));
    expect(isAgentIdError(err, 'unavailable')).toBe(true);
    expect(JSON.stringify({ message: (err as Error).message, log: lines.join('') })).not.toContain('s3cret');
  });
});

describe('postgres datastore: two servers on one database', () => {
  it('unique-constraint races: exactly one create wins, the other gets already_exists', async () => {
    const url = await freshSchema();
    const [a, b] = [await open(url), await open(url)];
    for (let round = 0; round < 10; round++) {
      const results = await Promise.allSettled([
        a.entries.create(entryFixture({ id: `same-id-${round}`, spiffeId: `${TD}/a${round}` }), T0),
        b.entries.create(entryFixture({ id: `same-id-${round}`, spiffeId: `${TD}/b${round}` }), T0),
        a.entries.create(entryFixture({ id: `ida-${round}`, spiffeId: `${TD}/same${round}` }), T0),
        b.entries.create(entryFixture({ id: `idb-${round}`, spiffeId: `${TD}/same${round}` }), T0),
        a.tasks.create(taskFixture({ id: `t${round}` })),
        b.tasks.create(taskFixture({ id: `t${round}` })),
      ]);
      for (let pair = 0; pair < 3; pair++) {
        const [x, y] = [results[pair * 2]!, results[pair * 2 + 1]!];
        expect([x.status, y.status].sort()).toEqual(['fulfilled', 'rejected']);
        const lost = (x.status === 'rejected' ? x : y) as PromiseRejectedResult;
        expect(isAgentIdError(lost.reason, 'already_exists'), String(lost.reason)).toBe(true);
      }
    }
    expect(await a.entries.list()).toHaveLength(20);
    expect(await b.tasks.list()).toHaveLength(10);
  });

  it('concurrent revocations of one ID merge: the latest keepUntil and the earliest revokedAt survive', async () => {
    const url = await freshSchema();
    const [a, b] = [await open(url, 4), await open(url, 4)];
    const adds = Array.from({ length: 40 }, (_, n) =>
      (n % 2 === 0 ? a : b).revocations.add(
        revocationFixture({ keepUntil: T0 + ((n * 7919) % 40) * 1000, revokedAt: T0 + ((n * 104_729) % 40), revokedBy: `op${n}` }),
      ),
    );
    await Promise.all(adds);
    const stored = await a.revocations.get(revocationFixture().spiffeId);
    expect(stored).toMatchObject({ keepUntil: T0 + 39_000, revokedAt: T0 });
    // revokedBy travels with the earliest revokedAt: n with (n * 104729) % 40 === 0 is n = 0 only.
    expect(stored?.revokedBy).toBe('op0');
  });

  it('a write on server A wakes server B through LISTEN/NOTIFY, and B reads it by revision', async () => {
    const url = await freshSchema();
    const [a, b] = [await open(url), await open(url)];
    await nextWake(b); // the first wake comes once B is listening
    const cursor = await b.changes.head();
    const woken = nextWake(b);
    await a.entries.create(entryFixture(), T0);
    await woken;
    expect(await b.changes.since(cursor)).toEqual([{ revision: cursor + 1, resource: 'entry', key: 'e-1' }]);
  });

  it('when B loses its notification connection it reconnects and wakes, so a change made meanwhile is read', async () => {
    const url = await freshSchema();
    const [a, b] = [await open(url), await open(url)];
    await nextWake(b);
    const cursor = await b.changes.head();
    const woken = nextWake(b);
    const killed = await cluster.query(
      dbName(url),
      "SELECT pg_terminate_backend(pid) AS done FROM pg_stat_activity WHERE application_name = 'agentid-listen'",
    );
    expect(killed).toEqual([{ done: true }]);
    await a.revocations.add(revocationFixture());
    await woken;
    // Whether the wake came from the reconnect or from the notification, the feed has the change.
    expect(await b.changes.since(cursor)).toEqual([{ revision: cursor + 1, resource: 'revocation', key: revocationFixture().spiffeId }]);
    // And the listener is back: the next write wakes B again.
    const again = nextWake(b);
    await a.tasks.create(taskFixture());
    await again;
  });

  it('a reader that gets no notification at all still finds every change by polling the feed', async () => {
    const url = await freshSchema();
    const [a, b] = [await open(url), await open(url)];
    await a.entries.create(entryFixture(), T0);
    await a.tasks.create(taskFixture());
    await a.tasks.finish('a1', 't1', 'ended', T0 + 1, 'done');
    await a.revocations.add(revocationFixture());
    await a.authorities.put({ serverId: 'server-a', x509Authorities: ['AAAA'], jwtKeys: [{ kid: 'k1' }], crls: [], updatedAt: T0, retireAt: null });
    await a.entries.delete('e-1');
    expect((await b.changes.since(0)).map((c) => `${c.revision} ${c.resource} ${c.key}`)).toEqual([
      '1 entry e-1',
      '2 task a1/t1',
      '3 task a1/t1',
      `4 revocation ${revocationFixture().spiffeId}`,
      '5 authority server-a',
      '6 entry e-1',
    ]);
    expect(await b.changes.since(2, 2)).toHaveLength(2);
    expect(await b.changes.head()).toBe(6);
  });

  it('revisions become visible in order: a writer that drew a later revision waits for the earlier to commit', async () => {
    const url = await freshSchema();
    const [a, b, reader] = [await open(url), await open(url), await open(url)];
    const slow = await holdTransaction(a, 'first');
    const fast = b.entries.create(entryFixture({ id: 'second', spiffeId: `${TD}/second` }), T0);
    // B must now be waiting for A (without the change lock it would simply commit revision 2).
    const database = dbName(url);
    const waiting = await Promise.race([
      fast.then(() => 'committed'),
      waitFor(async () => {
        const rows = await cluster.query(database, "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted");
        return rows.length > 0 ? 'waiting' : undefined;
      }),
    ]);
    const seen = (await reader.changes.since(0)).map((c) => c.revision);
    slow.release();
    await Promise.all([slow.done, fast]);
    expect(waiting).toBe('waiting');
    expect(seen).toEqual([]);
    const cursor = Math.max(0, ...seen);
    expect((await reader.changes.since(cursor)).map((c) => c.key)).toEqual(['first', 'second']);
  });

  it('many concurrent writers on two servers: a reader following the feed by revision misses nothing', async () => {
    const url = await freshSchema();
    const [a, b, reader] = [await open(url, 4), await open(url, 4), await open(url)];
    let cursor = 0;
    const seen: number[] = [];
    let writing = true;
    const follow = (async () => {
      while (writing) {
        for (const c of await reader.changes.since(cursor)) {
          seen.push(c.revision);
          cursor = c.revision;
        }
      }
    })();
    await Promise.all(
      Array.from({ length: 60 }, (_, n) =>
        n % 3 === 0
          ? (n % 2 ? a : b).transaction(async (tx) => {
              await tx.entries.create(entryFixture({ id: `tx-${n}`, spiffeId: `${TD}/tx-${n}` }), T0);
              await tx.revocations.add(revocationFixture({ spiffeId: `${TD}/tx-${n}` }));
            })
          : (n % 2 ? a : b).entries.create(entryFixture({ id: `e-${n}`, spiffeId: `${TD}/e-${n}` }), T0),
      ),
    );
    writing = false;
    await follow;
    for (const c of await reader.changes.since(cursor)) seen.push(c.revision);
    const all = (await reader.changes.since(0, 10_000)).map((c) => c.revision);
    expect(all).toHaveLength(80);
    expect(seen).toEqual(all);
  });
});

describe('postgres datastore: losing the server', () => {
  it('is unavailable while the server is down, and recovers when it is back', async () => {
    const url = await freshSchema();
    const [a, b] = [await open(url), await open(url)];
    await a.entries.create(entryFixture(), T0);
    await nextWake(b);
    await cluster.pause();
    // B's listener comes back by itself, and wakes once it has reconnected.
    const back = nextWake(b);
    try {
      await expectCode(() => a.ping(), 'unavailable');
      await expectCode(() => a.entries.list(), 'unavailable');
      await expectCode(() => a.revocations.add(revocationFixture()), 'unavailable');
      await expectCode(() => a.transaction(async (tx) => tx.tasks.create(taskFixture())), 'unavailable');
    } finally {
      await cluster.start();
    }
    await back;
    // The pool hands out fresh connections.
    await a.ping();
    expect((await a.entries.list()).map((e) => e.id)).toEqual(['e-1']);
    const woken = nextWake(b);
    await a.revocations.add(revocationFixture());
    await woken;
    expect(await b.revocations.list()).toHaveLength(1);
  });

  it('a server stuck inside a transaction loses it, and with it the change lock, so other servers can write', async () => {
    const url = await freshSchema();
    const stuck = await openPostgresDatastore(url, { idleInTransactionTimeoutMs: 300 });
    opened.push(stuck);
    const other = await open(url);
    const held = await holdTransaction(stuck, 'stuck', (tx) => tx.revocations.add(revocationFixture()));
    // Waits for the lock until the database ends the idle transaction, then goes through.
    await other.entries.create(entryFixture({ id: 'other', spiffeId: `${TD}/other` }), T0);
    held.release();
    await expectCode(() => held.done, 'unavailable');
    expect((await other.entries.list()).map((e) => e.id)).toEqual(['other']);
    expect(await other.revocations.list()).toEqual([]);
  });

  it('a statement that waits longer than the statement timeout fails with unavailable', async () => {
    const url = await freshSchema();
    const impatient = await openPostgresDatastore(url, { statementTimeoutMs: 200 });
    opened.push(impatient);
    const holder = await open(url);
    const held = await holdTransaction(holder, 'holder');
    await expectCode(() => impatient.entries.create(entryFixture({ id: 'late', spiffeId: `${TD}/late` }), T0), 'unavailable');
    held.release();
    await held.done;
    expect((await impatient.entries.list()).map((e) => e.id)).toEqual(['holder']);
  });
});
