import type { Database } from 'better-sqlite3';
import { failedPrecondition, internal } from '../common/errors.js';
import type { Logger } from '../common/logger.js';

/*
 * Versioned schema migrations. Rules:
 *  - append only: never edit a migration that has shipped; add the next version instead;
 *  - each migration runs in its own transaction together with the row that records it, so a
 *    crash leaves the schema either before or after a migration, never half-way;
 *  - a database whose recorded version is newer than the code knows is refused: older code
 *    writing into a newer schema could silently drop data it does not understand.
 * The version lives in a table rather than PRAGMA user_version so that a PostgreSQL
 * implementation can keep the same scheme. Types are portable: BIGINT for milliseconds (SQLite
 * gives it INTEGER affinity), TEXT for JSON.
 */

export interface Migration {
  version: number;
  description: string;
  sql: string;
}

/** The tables and columns of per-host agents (version 5), the same text on SQLite and PostgreSQL. */
export const NODES_SQL = `
  -- null: the entry applies on every agent and on the server's own socket; a name: only on that node's agent.
  ALTER TABLE registration_entries ADD COLUMN node TEXT;
  -- null: bound on the server's host; a name: bound on that node's host (the server never checks it in its /proc).
  ALTER TABLE tasks ADD COLUMN node TEXT;
  CREATE INDEX tasks_node ON tasks (node) WHERE node IS NOT NULL;

  CREATE TABLE nodes (
    name            TEXT   NOT NULL PRIMARY KEY,
    spiffe_id       TEXT   NOT NULL,
    attestation     TEXT   NOT NULL CHECK (attestation IN ('join_token', 'x509pop')),
    state           TEXT   NOT NULL CHECK (state IN ('active', 'evicted')),
    task_agents     TEXT   NOT NULL,  -- JSON array of agent namespaces
    created_at      BIGINT NOT NULL,
    last_seen_at    BIGINT NOT NULL,
    svid_expires_at BIGINT NOT NULL,
    evicted_at      BIGINT
  );

  -- The SHA-256 of each join token, never the token; a row is used at most once (used_at).
  CREATE TABLE join_tokens (
    hash        TEXT   NOT NULL PRIMARY KEY,
    node        TEXT   NOT NULL,
    task_agents TEXT   NOT NULL,  -- JSON array of agent namespaces
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    created_by  TEXT   NOT NULL
  );
  CREATE INDEX join_tokens_expires_at ON join_tokens (expires_at);
`;

export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    description: 'entries, tasks, revocations, issuances',
    sql: `
      CREATE TABLE registration_entries (
        id             TEXT    NOT NULL PRIMARY KEY,
        spiffe_id      TEXT    NOT NULL,
        selectors      TEXT    NOT NULL,  -- JSON array of {"type","value"}, canonical order
        selectors_hash TEXT    NOT NULL,  -- sha256 of the canonical selector set (uniqueness)
        x509_ttl_ms    BIGINT  NOT NULL,
        jwt_ttl_ms     BIGINT  NOT NULL,
        hint           TEXT    NOT NULL,
        dns_names      TEXT    NOT NULL,  -- JSON array of strings
        federates_with TEXT    NOT NULL,  -- JSON array of trust domain names
        expires_at     BIGINT,
        created_at     BIGINT  NOT NULL,
        updated_at     BIGINT  NOT NULL,
        revision       BIGINT  NOT NULL,
        CONSTRAINT registration_entries_identity UNIQUE (spiffe_id, selectors_hash)
      );

      CREATE TABLE tasks (
        agent       TEXT   NOT NULL,
        id          TEXT   NOT NULL,
        spiffe_id   TEXT   NOT NULL,
        binding     TEXT   NOT NULL,  -- JSON TaskBinding
        metadata    TEXT   NOT NULL,  -- JSON object of strings
        state       TEXT   NOT NULL CHECK (state IN ('active', 'ended', 'revoked', 'expired')),
        x509_ttl_ms BIGINT NOT NULL,
        jwt_ttl_ms  BIGINT NOT NULL,
        created_at  BIGINT NOT NULL,
        expires_at  BIGINT NOT NULL,
        ended_at    BIGINT,
        end_reason  TEXT,
        created_by  TEXT   NOT NULL,
        PRIMARY KEY (agent, id)
      );
      CREATE INDEX tasks_state ON tasks (state);

      CREATE TABLE revocations (
        spiffe_id  TEXT   NOT NULL PRIMARY KEY,
        reason     TEXT   NOT NULL,
        revoked_at BIGINT NOT NULL,
        revoked_by TEXT   NOT NULL,
        keep_until BIGINT NOT NULL
      );
      CREATE INDEX revocations_keep_until ON revocations (keep_until);

      -- Append + prune only: one row per SVID minted, never updated; rows go when they expire.
      CREATE TABLE issuances (
        kind      TEXT   NOT NULL CHECK (kind IN ('x509', 'jwt')),
        serial    TEXT   NOT NULL,
        spiffe_id TEXT   NOT NULL,
        issuer_id TEXT   NOT NULL,
        issued_at BIGINT NOT NULL,
        not_after BIGINT NOT NULL,
        task      TEXT,
        PRIMARY KEY (kind, serial)
      );
      CREATE INDEX issuances_spiffe_id ON issuances (spiffe_id, not_after);
      CREATE INDEX issuances_not_after ON issuances (not_after);
    `,
  },
  {
    version: 2,
    description: 'registration_entries.include_tasks',
    sql: `
      -- Existing entries keep serving uids and binaries only, never processes bound to a task.
      ALTER TABLE registration_entries ADD COLUMN include_tasks BOOLEAN NOT NULL DEFAULT FALSE;
    `,
  },
  {
    version: 3,
    description: 'integrity_anchor',
    sql: `
      -- One row: this database's identity and generation, the CA roots and the audit head it was
      -- anchored with (src/integrity/anchors.ts; the same anchors live in <data-dir>/integrity.json).
      CREATE TABLE integrity_anchor (
        id    INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
        value TEXT    NOT NULL  -- JSON
      );
    `,
  },
  {
    version: 4,
    description: 'change feed, task ID index, published authorities, anchors',
    sql: `
      -- One row per committed change to entries, tasks, revocations or authorities, written in the
      -- same transaction as the change: readers follow it by revision (the in-memory read model,
      -- other servers on the same database).
      CREATE TABLE changes (
        revision INTEGER PRIMARY KEY AUTOINCREMENT,
        resource TEXT NOT NULL CHECK (resource IN ('entry', 'task', 'revocation', 'authority')),
        key      TEXT NOT NULL
      );
      CREATE INDEX tasks_id ON tasks (id);

      CREATE TABLE authorities (
        server_id         TEXT   NOT NULL PRIMARY KEY,
        x509_authorities  TEXT   NOT NULL,  -- JSON array of base64 DER certificates
        jwt_keys          TEXT   NOT NULL,  -- JSON array of public JWKs
        crls              TEXT   NOT NULL,  -- JSON array of base64 DER CRLs
        updated_at        BIGINT NOT NULL,
        retire_at         BIGINT
      );

      CREATE TABLE anchors (
        name  TEXT NOT NULL PRIMARY KEY,
        value TEXT NOT NULL
      );
    `,
  },
  {
    version: 5,
    description: 'nodes, join tokens, entry and task node',
    sql: `${NODES_SQL}
      -- The change feed learns resource 'node'. SQLite cannot change a CHECK constraint in place:
      -- the table is rebuilt, and its AUTOINCREMENT sequence carried over, so no revision is ever
      -- reused (the head survives pruning of every row).
      CREATE TABLE changes_v5 (
        revision INTEGER PRIMARY KEY AUTOINCREMENT,
        resource TEXT NOT NULL CHECK (resource IN ('entry', 'task', 'revocation', 'authority', 'node')),
        key      TEXT NOT NULL
      );
      INSERT INTO changes_v5 (revision, resource, key) SELECT revision, resource, key FROM changes ORDER BY revision;
      DELETE FROM sqlite_sequence WHERE name = 'changes_v5';
      INSERT INTO sqlite_sequence (name, seq) SELECT 'changes_v5', seq FROM sqlite_sequence WHERE name = 'changes';
      DROP TABLE changes;
      ALTER TABLE changes_v5 RENAME TO changes;
    `,
  },
];

/** The schema version this code writes. */
export const SCHEMA_VERSION: number = MIGRATIONS[MIGRATIONS.length - 1]?.version ?? 0;

const VERSION_TABLE = `CREATE TABLE IF NOT EXISTS schema_migrations (
  version     BIGINT NOT NULL PRIMARY KEY,
  description TEXT   NOT NULL
)`;

export function currentSchemaVersion(db: Database): number {
  db.exec(VERSION_TABLE);
  const row = db.prepare('SELECT MAX(version) AS v FROM schema_migrations').get() as { v: number | null };
  return row.v ?? 0;
}

export function checkOrder(migrations: readonly Migration[]): void {
  migrations.forEach((m, i) => {
    if (m.version !== i + 1) throw internal(`datastore: migration #${i} has version ${m.version}, expected ${i + 1}`);
  });
}

export function refuseNewer(found: number, known: number): never {
  throw failedPrecondition(
    `datastore: database schema version ${found} is newer than this agentid supports (${known}); ` +
      'run a newer agentid or restore a backup taken before the upgrade',
  );
}

/**
 * Brings the database to the latest known version. Each step takes the write lock first
 * (BEGIN IMMEDIATE) and re-reads the version, so two processes opening the same file at once
 * apply each migration exactly once.
 */
export function applyMigrations(
  db: Database,
  options: { migrations?: readonly Migration[]; logger?: Logger } = {},
): { from: number; to: number } {
  const migrations = options.migrations ?? MIGRATIONS;
  checkOrder(migrations);
  const known = migrations.length;
  const from = currentSchemaVersion(db);
  if (from > known) refuseNewer(from, known);
  const record = db.prepare('INSERT INTO schema_migrations (version, description) VALUES (?, ?)');
  for (const m of migrations) {
    db.transaction(() => {
      const current = currentSchemaVersion(db);
      if (current > known) refuseNewer(current, known);
      if (current >= m.version) return;
      db.exec(m.sql);
      record.run(m.version, m.description);
      options.logger?.info({ version: m.version, description: m.description }, 'datastore: applied migration');
    }).immediate();
  }
  return { from, to: currentSchemaVersion(db) };
}
