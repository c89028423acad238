import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import BetterSqlite3 from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  datastoreConformance,
  entryFixture,
  expectCode,
  issuanceFixture,
  nodeFixture,
  revocationFixture,
  taskFixture,
} from './conformance.js';
import { applyMigrations, MIGRATIONS, SCHEMA_VERSION } from './migrations.js';
import { openSqliteDatastore } from './sqlite.js';
import type { Datastore } from './types.js';

const T0 = Date.UTC(2026, 0, 1);

datastoreConformance('sqlite', () => {
  const dir = mkdtempSync(join(tmpdir(), 'agentid-ds-'));
  const file = join(dir, 'agentid.db');
  let ds = openSqliteDatastore(file);
  return {
    ds,
    // Another process on the same file (several handles, one SQLite database).
    second: async () => openSqliteDatastore(file),
    reopen: async () => {
      await ds.close();
      ds = openSqliteDatastore(file);
      return ds;
    },
    cleanup: async () => {
      await ds.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
});

describe('sqlite datastore', () => {
  let dir: string;
  let file: string;
  const open: Datastore[] = [];
  const openDs = () => {
    const ds = openSqliteDatastore(file);
    open.push(ds);
    return ds;
  };
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'agentid-ds-'));
    file = join(dir, 'agentid.db');
  });
  afterEach(async () => {
    for (const ds of open.splice(0)) await ds.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function writeEverything(ds: Datastore): Promise<void> {
    await ds.entries.create(entryFixture({ dnsNames: ['a1.example.org'], expiresAt: T0 + 1000 }), T0);
    await ds.tasks.create(taskFixture());
    await ds.tasks.create(taskFixture({ id: 't2', binding: { kind: 'cgroup', path: '/agents/a1/t2' } }));
    await ds.tasks.finish('a1', 't2', 'revoked', T0 + 5, 'compromised');
    await ds.revocations.add(revocationFixture());
    await ds.issuances.record([issuanceFixture()]);
  }

  async function snapshot(ds: Datastore) {
    return {
      entries: await ds.entries.list(),
      tasks: await ds.tasks.list(),
      revocations: await ds.revocations.list(),
      issuances: await ds.issuances.listForSpiffeId(issuanceFixture().spiffeId),
    };
  }

  it('keeps everything across close and reopen', async () => {
    const first = openDs();
    await writeEverything(first);
    const before = await snapshot(first);
    await first.close();
    const after = await snapshot(openDs());
    expect(after).toEqual(before);
    expect(after.entries).toHaveLength(1);
    expect(after.tasks.map((t) => t.state)).toEqual(['active', 'revoked']);
  });

  it('creates the database and its WAL owner-only (0600), even with a permissive umask', async () => {
    const old = process.umask(0);
    try {
      const ds = openDs();
      await ds.entries.create(entryFixture(), T0);
      expect(statSync(file).mode & 0o777).toBe(0o600);
      expect(statSync(`${file}-wal`).mode & 0o777).toBe(0o600);
    } finally {
      process.umask(old);
    }
  });

  it('tightens a pre-existing world-readable database file to 0600', async () => {
    writeFileSync(file, '', { mode: 0o644 });
    openDs();
    expect(statSync(file).mode & 0o777).toBe(0o600);
  });

  it('applies migrations to an empty database once; re-applying is a no-op', async () => {
    const db = new BetterSqlite3(file);
    try {
      expect(applyMigrations(db)).toEqual({ from: 0, to: SCHEMA_VERSION });
      expect(applyMigrations(db)).toEqual({ from: SCHEMA_VERSION, to: SCHEMA_VERSION });
      const rows = db.prepare('SELECT version, description FROM schema_migrations ORDER BY version').all();
      expect(rows).toEqual(MIGRATIONS.map((m) => ({ version: m.version, description: m.description })));
      const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").pluck().all();
      expect(tables).toEqual(['anchors', 'authorities', 'changes', 'integrity_anchor', 'issuances', 'join_tokens', 'nodes', 'registration_entries', 'revocations', 'schema_migrations', 'sqlite_sequence', 'tasks']);
    } finally {
      db.close();
    }
    // And the datastore opens the already migrated file.
    expect(await openDs().entries.list()).toEqual([]);
  });

  it('version 5 keeps the change feed of a version-4 database: rows, pruned head, and no revision reused', async () => {
    const db = new BetterSqlite3(file);
    try {
      applyMigrations(db, { migrations: MIGRATIONS.slice(0, 4) });
      const add = db.prepare('INSERT INTO changes (resource, key) VALUES (?, ?)');
      for (let i = 0; i < 5; i++) add.run('entry', `e-${i}`);
      db.prepare('DELETE FROM changes WHERE revision < 4').run();
      db.prepare("INSERT INTO tasks (agent, id, spiffe_id, binding, metadata, state, x509_ttl_ms, jwt_ttl_ms, created_at, expires_at, created_by) VALUES ('a1', 't0', 'spiffe://example.org/agent/a1/task/t0', '{}', '{}', 'active', 1, 1, 1, 2, 'old')").run();
      expect(applyMigrations(db)).toEqual({ from: 4, to: SCHEMA_VERSION });
    } finally {
      db.close();
    }
    const ds = openDs();
    expect(await ds.changes.head()).toBe(5);
    expect((await ds.changes.since(0)).map((c) => [c.revision, c.key])).toEqual([[4, 'e-3'], [5, 'e-4']]);
    expect((await ds.tasks.get('a1', 't0'))?.node).toBeNull();
    await ds.nodes.put(nodeFixture());
    expect(await ds.changes.since(5)).toEqual([{ revision: 6, resource: 'node', key: 'web-1' }]);
  });

  it('refuses a database written by a newer schema version, naming both versions', async () => {
    await openDs().close();
    const db = new BetterSqlite3(file);
    db.prepare('INSERT INTO schema_migrations (version, description) VALUES (?, ?)').run(SCHEMA_VERSION + 1, 'from the future');
    db.close();
    await expectCode(
      () => openDs(),
      'failed_precondition',
      new RegExp(`schema version ${SCHEMA_VERSION + 1} is newer than this agentid supports \\(${SCHEMA_VERSION}\\)`),
    );
  });

  it('a failing migration leaves neither its tables nor its version behind', async () => {
    const db = new BetterSqlite3(file);
    try {
      const broken = [
        ...MIGRATIONS,
        { version: MIGRATIONS.length + 1, description: 'half-broken', sql: 'CREATE TABLE extra (x TEXT); SELECT * FROM missing_table;' },
      ];
      expect(() => applyMigrations(db, { migrations: broken })).toThrow(/missing_table/);
      const tables = db.prepare("SELECT name FROM sqlite_master WHERE name = 'extra'").all();
      expect(tables).toEqual([]);
      expect(applyMigrations(db)).toEqual({ from: SCHEMA_VERSION, to: SCHEMA_VERSION });
    } finally {
      db.close();
    }
  });

  it('refuses a migration list with a gap in its versions', async () => {
    const db = new BetterSqlite3(':memory:');
    try {
      const gap = [MIGRATIONS[0]!, { version: 3, description: 'skips 2', sql: 'SELECT 1' }];
      expect(() => applyMigrations(db, { migrations: gap })).toThrow(/version 3, expected 2/);
    } finally {
      db.close();
    }
  });

  it('loses nothing when the writing process is SIGKILLed right after the calls return', async () => {
    const sqliteModule = fileURLToPath(new URL('./sqlite.ts', import.meta.url));
    // conformance.ts imports vitest; the child only needs the fixtures, so it is given them as JSON.
    const fixtures = JSON.stringify({
      entry: entryFixture(),
      task: taskFixture(),
      revocation: revocationFixture(),
      issuance: issuanceFixture(),
    });
    const script = `
      import { openSqliteDatastore } from ${JSON.stringify(sqliteModule)};
      const f = JSON.parse(process.env.FIXTURES);
      const ds = openSqliteDatastore(process.env.DB_FILE);
      await ds.entries.create(f.entry, ${T0});
      await ds.tasks.create(f.task);
      await ds.tasks.finish(f.task.agent, f.task.id, 'ended', ${T0 + 1}, 'done');
      await ds.revocations.add(f.revocation);
      await ds.issuances.record([f.issuance]);
      process.kill(process.pid, 'SIGKILL');
    `;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      env: { ...process.env, DB_FILE: file, FIXTURES: fixtures },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const signal = await new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, sig) => resolve(sig)));
    expect(signal, stderr).toBe('SIGKILL');
    // The process never closed the database: the rows live only in the WAL, not yet checkpointed.
    expect(statSync(`${file}-wal`).size).toBeGreaterThan(0);

    const ds = openDs();
    expect(await ds.entries.list()).toEqual([{ ...entryFixture(), createdAt: T0, updatedAt: T0, revision: 1 }]);
    expect(await ds.tasks.list()).toEqual([{ ...taskFixture(), state: 'ended', endedAt: T0 + 1, endReason: 'done' }]);
    expect(await ds.revocations.list()).toEqual([revocationFixture()]);
    expect(await ds.issuances.listForSpiffeId(issuanceFixture().spiffeId)).toEqual([issuanceFixture()]);
  });
});
