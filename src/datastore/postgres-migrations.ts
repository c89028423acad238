import type pg from 'pg';
import type { Logger } from '../common/logger.js';
import { checkOrder, MIGRATIONS, NODES_SQL, refuseNewer, type Migration } from './migrations.js';

/*
 * The PostgreSQL schema follows the SQLite migrations version for version (same numbers, same
 * descriptions, same tables and columns), so a database's version means the same thing whichever
 * store wrote it. Most statements are portable as written; where the dialects differ, the
 * PostgreSQL text of that migration is given here, by its description (a test checks that each
 * names a migration, so a renamed or renumbered one cannot silently fall back to SQLite's text):
 *  - the change feed: changes.revision is an identity column (SQLite: INTEGER PRIMARY KEY
 *    AUTOINCREMENT). Both never reuse a revision; only PostgreSQL needs the advisory lock of
 *    postgres.ts to make revisions also become visible in order. Version 5 widens its resource
 *    check in place (SQLite rebuilds the table).
 */
export const POSTGRES_SQL: Readonly<Record<string, string>> = {
  'change feed, task ID index, published authorities, anchors': `
    CREATE TABLE changes (
      revision BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      resource TEXT NOT NULL CHECK (resource IN ('entry', 'task', 'revocation', 'authority')),
      key      TEXT NOT NULL
    );
    CREATE INDEX tasks_id ON tasks (id);

    CREATE TABLE authorities (
      server_id         TEXT   NOT NULL PRIMARY KEY,
      x509_authorities  TEXT   NOT NULL,
      jwt_keys          TEXT   NOT NULL,
      crls              TEXT   NOT NULL,
      updated_at        BIGINT NOT NULL,
      retire_at         BIGINT
    );

    CREATE TABLE anchors (
      name  TEXT NOT NULL PRIMARY KEY,
      value TEXT NOT NULL
    );
  `,
  'nodes, join tokens, entry and task node': `${NODES_SQL}
    ALTER TABLE changes DROP CONSTRAINT changes_resource_check;
    ALTER TABLE changes ADD CONSTRAINT changes_resource_check
      CHECK (resource IN ('entry', 'task', 'revocation', 'authority', 'node'));
  `,
};

export const POSTGRES_MIGRATIONS: readonly Migration[] = MIGRATIONS.map((m) => ({ ...m, sql: POSTGRES_SQL[m.description] ?? m.sql }));

/**
 * Serializes schema changes between servers starting at once: every migration step holds this
 * transaction-level advisory lock, so each version is applied exactly once. An arbitrary constant,
 * distinct from the change-feed lock in postgres.ts.
 */
export const MIGRATION_LOCK_KEY = 0x61676d69; // "agmi"

const VERSION_TABLE = `CREATE TABLE schema_migrations (
  version     BIGINT NOT NULL PRIMARY KEY,
  description TEXT   NOT NULL
)`;

/**
 * Creates the version table when it is missing. Checked first rather than CREATE TABLE IF NOT
 * EXISTS, which needs the CREATE privilege even when the table exists: a server running as a user
 * limited to reading and writing rows can then open a database that is already up to date.
 */
async function ensureVersionTable(client: pg.ClientBase): Promise<void> {
  const { rows } = await client.query<{ present: boolean }>("SELECT to_regclass('schema_migrations') IS NOT NULL AS present");
  if (!rows[0]?.present) await client.query(VERSION_TABLE);
}

async function recordedVersion(client: pg.ClientBase): Promise<number> {
  const { rows } = await client.query<{ v: string | number | null }>('SELECT MAX(version) AS v FROM schema_migrations');
  return Number(rows[0]?.v ?? 0);
}

/**
 * Brings the database to the latest known version, one transaction per migration (with the row
 * that records it). Each step takes the migration lock first and then re-reads the version; even
 * the version table is created under the lock, because two servers creating it at once would
 * otherwise both pass the check and one then fail on the catalog's unique index.
 */
export async function applyPostgresMigrations(
  client: pg.ClientBase,
  options: { migrations?: readonly Migration[]; logger?: Logger } = {},
): Promise<{ from: number; to: number }> {
  const migrations = options.migrations ?? POSTGRES_MIGRATIONS;
  checkOrder(migrations);
  const known = migrations.length;
  let from: number | undefined;
  let to = 0;
  for (const m of migrations) {
    await client.query('BEGIN');
    try {
      await client.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK_KEY]);
      await ensureVersionTable(client);
      const current = await recordedVersion(client);
      from ??= current;
      if (current > known) refuseNewer(current, known);
      to = current;
      if (current < m.version) {
        await client.query(m.sql);
        await client.query('INSERT INTO schema_migrations (version, description) VALUES ($1, $2)', [m.version, m.description]);
        options.logger?.info({ version: m.version, description: m.description }, 'datastore: applied migration');
        to = m.version;
      }
      await client.query('COMMIT');
    } catch (err) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw err;
    }
  }
  return { from: from ?? 0, to };
}
