import { chmodSync, closeSync, openSync, statSync } from 'node:fs';
import BetterSqlite3 from 'better-sqlite3';
import type { Database, Statement } from 'better-sqlite3';
import {
  AgentIdError,
  alreadyExists,
  failedPrecondition,
  internal,
  invalidArgument,
  notFound,
  unavailable,
} from '../common/errors.js';
import { silentLogger, type Logger } from '../common/logger.js';
import { applyMigrations } from './migrations.js';
import { FINAL_TASK_STATES, joinTokenRefusal, mergeRevocation, taskChangeKey } from './rules.js';
import {
  AUTHORITY_COLUMNS,
  authorityFromRow,
  authorityToRow,
  columns,
  duplicateIdentityMessage,
  ENTRY_COLUMNS,
  entryFromRow,
  entryToRow,
  ISSUANCE_COLUMNS,
  issuanceFromRow,
  issuanceToRow,
  JOIN_TOKEN_COLUMNS,
  joinTokenFromRow,
  joinTokenToRow,
  NODE_COLUMNS,
  nodeFromRow,
  nodeToRow,
  REVOCATION_COLUMNS,
  revocationFromRow,
  revocationToRow,
  TASK_COLUMNS,
  taskFromRow,
  taskToRow,
  type AuthorityRow,
  type EntryRow,
  type IssuanceRow,
  type JoinTokenRow,
  type NodeRow,
  type RevocationRow,
  type TaskRow,
} from './sql-rows.js';
import {
  asyncDatastore,
  type SyncAnchorStore,
  type SyncAuthorityStore,
  type SyncEngine,
  type SyncEntryStore,
  type SyncIssuanceStore,
  type SyncJoinTokenStore,
  type SyncNodeStore,
  type SyncRevocationStore,
  type SyncStores,
  type SyncTaskStore,
} from './sync-engine.js';
import type {
  AuthorityRecord,
  Change,
  ChangeResource,
  Datastore,
  IssuanceRecord,
  JoinTokenRecord,
  NewRegistrationEntry,
  NodeRecord,
  RegistrationEntry,
  Revocation,
  TaskRecord,
  TaskState,
} from './types.js';

/*
 * SQLite Datastore (better-sqlite3: a synchronous engine behind the asynchronous contract through
 * sync-engine.ts).
 *
 * Durability: WAL with synchronous=FULL, so every committed change (entries, tasks, revocations,
 * issuance batches) is fsynced before the call returns; neither a killed process nor a power cut
 * loses it. Every write to entries, tasks, revocations and authorities appends its change-feed row
 * in the same transaction.
 *
 * The SQL stays portable (ON CONFLICT upserts, BIGINT/TEXT columns, JSON as TEXT, ordering in
 * ORDER BY) so a PostgreSQL store can implement the same interfaces with the same statements.
 * Orders match rules.ts, which the memory store uses.
 */

export interface SqliteDatastoreOptions {
  logger?: Logger;
  /** How long a write waits for another process's lock before failing with `unavailable`. */
  busyTimeoutMs?: number;
}

type Db = Database;

const sqliteCode = (err: unknown): string | undefined =>
  err instanceof BetterSqlite3.SqliteError ? err.code : undefined;

/**
 * Turns driver errors into AgentIdErrors. Anything else (our own errors, and whatever a
 * transaction() callback throws) passes through untouched so callers see their own error.
 */
function mapError(db: Db, err: unknown, what: string): unknown {
  if (err instanceof AgentIdError) return err;
  if (!db.open) return failedPrecondition('datastore: closed');
  const code = sqliteCode(err);
  if (code === undefined) return err;
  if (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED')) {
    return unavailable(`datastore: ${what}: database is locked by another writer`, err);
  }
  return internal(`datastore: ${what} failed (${code})`, err);
}

function guard<T>(db: Db, what: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw mapError(db, err, what);
  }
}

/** Appends change-feed rows; callers run it inside the transaction of the change itself. */
class ChangeLog {
  private readonly insert: Statement<[string, string]>;
  private readonly after: Statement<[number, number], Change>;
  private readonly latest: Statement<[], { head: number | null }>;
  private readonly older: Statement<[number]>;

  constructor(db: Db) {
    this.insert = db.prepare('INSERT INTO changes (resource, key) VALUES (?, ?)');
    this.after = db.prepare('SELECT revision, resource, key FROM changes WHERE revision > ? ORDER BY revision LIMIT ?');
    this.latest = db.prepare("SELECT seq AS head FROM sqlite_sequence WHERE name = 'changes'");
    this.older = db.prepare('DELETE FROM changes WHERE revision < ?');
  }

  add(resource: ChangeResource, key: string): void {
    this.insert.run(resource, key);
  }

  since(after: number, limit: number): Change[] {
    return this.after.all(after, limit);
  }

  /** The AUTOINCREMENT sequence, so the head survives pruning of every row. */
  head(): number {
    return this.latest.get()?.head ?? 0;
  }

  prune(beforeRevision: number): number {
    return this.older.run(beforeRevision).changes;
  }
}

class SqliteEntryStore implements SyncEntryStore {
  private readonly insert: Statement;
  private readonly replace: Statement;
  private readonly remove: Statement;
  private readonly byId: Statement<[string], EntryRow>;
  private readonly byIdentity: Statement<[string, string], { id: string }>;
  private readonly all: Statement<[], EntryRow>;

  constructor(
    private readonly db: Db,
    private readonly log: ChangeLog,
  ) {
    this.insert = db.prepare(
      `INSERT INTO registration_entries (${columns(ENTRY_COLUMNS)}) VALUES (${columns(ENTRY_COLUMNS, '@')})`,
    );
    this.replace = db.prepare(
      `UPDATE registration_entries SET spiffe_id = @spiffe_id, selectors = @selectors, selectors_hash = @selectors_hash,
         x509_ttl_ms = @x509_ttl_ms, jwt_ttl_ms = @jwt_ttl_ms, hint = @hint, dns_names = @dns_names,
         federates_with = @federates_with, include_tasks = @include_tasks, expires_at = @expires_at, node = @node, updated_at = @updated_at, revision = @revision
       WHERE id = @id`,
    );
    this.remove = db.prepare('DELETE FROM registration_entries WHERE id = ?');
    this.byId = db.prepare(`SELECT ${columns(ENTRY_COLUMNS)} FROM registration_entries WHERE id = ?`);
    this.byIdentity = db.prepare('SELECT id FROM registration_entries WHERE spiffe_id = ? AND selectors_hash = ?');
    this.all = db.prepare(`SELECT ${columns(ENTRY_COLUMNS)} FROM registration_entries ORDER BY created_at, id`);
  }

  create(entry: NewRegistrationEntry, now: number): RegistrationEntry {
    const record: RegistrationEntry = { ...entry, createdAt: now, updatedAt: now, revision: 1 };
    const params = entryToRow(record);
    return guard(this.db, 'create entry', () =>
      this.db
        .transaction(() => {
          try {
            this.insert.run(params);
          } catch (err) {
            throw this.constraintError(err, params) ?? err;
          }
          this.log.add('entry', record.id);
          return this.get(record.id)!;
        })
        .immediate(),
    );
  }

  update(entry: NewRegistrationEntry, now: number, expectedRevision?: number): RegistrationEntry {
    return guard(this.db, 'update entry', () =>
      this.db
        .transaction(() => {
          const current = this.byId.get(entry.id);
          if (!current) throw notFound(`entry ${entry.id} not found`);
          if (expectedRevision !== undefined && expectedRevision !== current.revision) {
            throw failedPrecondition(
              `entry ${entry.id}: revision ${expectedRevision} is stale (current revision ${current.revision})`,
            );
          }
          const params = entryToRow({
            ...entry,
            createdAt: current.created_at,
            updatedAt: now,
            revision: current.revision + 1,
          });
          try {
            this.replace.run(params);
          } catch (err) {
            throw this.constraintError(err, params) ?? err;
          }
          this.log.add('entry', entry.id);
          return this.get(entry.id)!;
        })
        .immediate(),
    );
  }

  delete(id: string): RegistrationEntry {
    return guard(this.db, 'delete entry', () =>
      this.db
        .transaction(() => {
          const current = this.byId.get(id);
          if (!current) throw notFound(`entry ${id} not found`);
          this.remove.run(id);
          this.log.add('entry', id);
          return entryFromRow(current);
        })
        .immediate(),
    );
  }

  get(id: string): RegistrationEntry | undefined {
    return guard(this.db, 'get entry', () => {
      const row = this.byId.get(id);
      return row && entryFromRow(row);
    });
  }

  list(): RegistrationEntry[] {
    return guard(this.db, 'list entries', () => this.all.all().map(entryFromRow));
  }

  private constraintError(err: unknown, params: EntryRow): AgentIdError | undefined {
    const code = sqliteCode(err);
    if (code === 'SQLITE_CONSTRAINT_PRIMARYKEY') return alreadyExists(`entry ${params.id} already exists`);
    if (code === 'SQLITE_CONSTRAINT_UNIQUE') {
      const other = this.byIdentity.get(params.spiffe_id, params.selectors_hash);
      return alreadyExists(duplicateIdentityMessage(params.spiffe_id, other?.id));
    }
    return undefined;
  }
}

class SqliteTaskStore implements SyncTaskStore {
  private readonly insert: Statement;
  private readonly byKey: Statement<[string, string], TaskRow>;
  private readonly byId: Statement<[string], TaskRow>;
  private readonly setFinal: Statement;
  private readonly lists: Record<'all' | 'agent' | 'state' | 'both', Statement<unknown[], TaskRow>>;
  private readonly onNode: Statement<[string], TaskRow>;

  constructor(
    private readonly db: Db,
    private readonly log: ChangeLog,
  ) {
    this.insert = db.prepare(
      `INSERT INTO tasks (${columns(TASK_COLUMNS)}) VALUES (${columns(TASK_COLUMNS, '@')})`,
    );
    this.byKey = db.prepare(`SELECT ${columns(TASK_COLUMNS)} FROM tasks WHERE agent = ? AND id = ?`);
    this.byId = db.prepare(`SELECT ${columns(TASK_COLUMNS)} FROM tasks WHERE id = ? ORDER BY created_at, agent, id`);
    this.setFinal = db.prepare(
      `UPDATE tasks SET state = @state, ended_at = @ended_at, end_reason = @end_reason
       WHERE agent = @agent AND id = @id AND state = 'active'`,
    );
    const order = 'ORDER BY created_at, agent, id';
    this.onNode = db.prepare(`SELECT ${columns(TASK_COLUMNS)} FROM tasks WHERE node = ? ${order}`);
    this.lists = {
      all: db.prepare(`SELECT ${columns(TASK_COLUMNS)} FROM tasks ${order}`),
      agent: db.prepare(`SELECT ${columns(TASK_COLUMNS)} FROM tasks WHERE agent = ? ${order}`),
      state: db.prepare(`SELECT ${columns(TASK_COLUMNS)} FROM tasks WHERE state = ? ${order}`),
      both: db.prepare(`SELECT ${columns(TASK_COLUMNS)} FROM tasks WHERE agent = ? AND state = ? ${order}`),
    };
  }

  create(task: TaskRecord): TaskRecord {
    return guard(this.db, 'create task', () => this.db.transaction(() => {
      try {
        this.insert.run(taskToRow(task));
      } catch (err) {
        if (sqliteCode(err) === 'SQLITE_CONSTRAINT_PRIMARYKEY') {
          throw alreadyExists(`task ${task.agent}/${task.id} already exists`);
        }
        if (sqliteCode(err) === 'SQLITE_CONSTRAINT_CHECK') throw invalidArgument(`task: unknown state ${task.state}`);
        throw err;
      }
      this.log.add('task', taskChangeKey(task.agent, task.id));
      return this.get(task.agent, task.id)!;
    }).immediate());
  }

  get(agent: string, id: string): TaskRecord | undefined {
    return guard(this.db, 'get task', () => {
      const row = this.byKey.get(agent, id);
      return row && taskFromRow(row);
    });
  }

  findById(id: string): TaskRecord[] {
    return guard(this.db, 'find task', () => this.byId.all(id).map(taskFromRow));
  }

  list(filter: { agent?: string; state?: TaskState; node?: string } = {}): TaskRecord[] {
    return guard(this.db, 'list tasks', () => {
      const { agent, state, node } = filter;
      if (node !== undefined) {
        // A node's tasks by the tasks_node index; the other conditions on those few rows.
        return this.onNode.all(node).filter((r) => (agent === undefined || r.agent === agent) && (state === undefined || r.state === state)).map(taskFromRow);
      }
      const rows =
        agent !== undefined && state !== undefined
          ? this.lists.both.all(agent, state)
          : agent !== undefined
            ? this.lists.agent.all(agent)
            : state !== undefined
              ? this.lists.state.all(state)
              : this.lists.all.all();
      return rows.map(taskFromRow);
    });
  }

  finish(agent: string, id: string, state: Exclude<TaskState, 'active'>, at: number, reason: string): TaskRecord {
    if (!FINAL_TASK_STATES.has(state)) throw invalidArgument(`task: final state must be ended, revoked or expired, not ${String(state)}`);
    return guard(this.db, 'finish task', () =>
      this.db
        .transaction(() => {
          // The state = 'active' condition in the UPDATE is what enforces "only active -> final".
          const changed = this.setFinal.run({ agent, id, state, ended_at: at, end_reason: reason }).changes;
          const row = this.byKey.get(agent, id);
          if (!row) throw notFound(`task ${agent}/${id} not found`);
          if (changed === 0) throw failedPrecondition(`task ${agent}/${id} is ${row.state}, not active`);
          this.log.add('task', taskChangeKey(agent, id));
          return taskFromRow(row);
        })
        .immediate(),
    );
  }
}

class SqliteRevocationStore implements SyncRevocationStore {
  private readonly upsert: Statement;
  private readonly byId: Statement<[string], RevocationRow>;
  private readonly all: Statement<[], RevocationRow>;
  private readonly expired: Statement<[number], { spiffe_id: string }>;

  constructor(
    private readonly db: Db,
    private readonly log: ChangeLog,
  ) {
    this.upsert = db.prepare(
      `INSERT INTO revocations (${columns(REVOCATION_COLUMNS)}) VALUES (${columns(REVOCATION_COLUMNS, '@')})
       ON CONFLICT (spiffe_id) DO UPDATE SET reason = excluded.reason, revoked_at = excluded.revoked_at,
         revoked_by = excluded.revoked_by, keep_until = excluded.keep_until`,
    );
    this.byId = db.prepare(`SELECT ${columns(REVOCATION_COLUMNS)} FROM revocations WHERE spiffe_id = ?`);
    this.all = db.prepare(
      `SELECT ${columns(REVOCATION_COLUMNS)} FROM revocations ORDER BY revoked_at, spiffe_id`,
    );
    this.expired = db.prepare('DELETE FROM revocations WHERE keep_until < ? RETURNING spiffe_id');
  }

  add(revocation: Revocation): Revocation {
    return guard(this.db, 'add revocation', () =>
      this.db
        .transaction(() => {
          const existing = this.byId.get(revocation.spiffeId);
          const merged = mergeRevocation(existing && revocationFromRow(existing), revocation);
          this.upsert.run(revocationToRow(merged));
          this.log.add('revocation', merged.spiffeId);
          return merged;
        })
        .immediate(),
    );
  }

  get(spiffeId: string): Revocation | undefined {
    return guard(this.db, 'get revocation', () => {
      const row = this.byId.get(spiffeId);
      return row && revocationFromRow(row);
    });
  }

  list(): Revocation[] {
    return guard(this.db, 'list revocations', () => this.all.all().map(revocationFromRow));
  }

  prune(now: number): number {
    return guard(this.db, 'prune revocations', () =>
      this.db
        .transaction(() => {
          const gone = this.expired.all(now);
          for (const r of gone) this.log.add('revocation', r.spiffe_id);
          return gone.length;
        })
        .immediate(),
    );
  }
}

/*
 * The issuances table is append + prune: record() inserts one row per SVID (hot path), prune()
 * drops expired rows; nothing updates a row.
 */
class SqliteIssuanceStore implements SyncIssuanceStore {
  private readonly insert: Statement;
  private readonly forId: Statement<[string], IssuanceRow>;
  private readonly latest: Statement<[string], { latest: number | null }>;
  private readonly count: Statement<[string], { n: number }>;
  private readonly revokedUnexpired: Statement<[number], IssuanceRow>;
  private readonly expired: Statement<[number]>;

  constructor(private readonly db: Db) {
    this.insert = db.prepare(
      `INSERT INTO issuances (${columns(ISSUANCE_COLUMNS)}) VALUES (${columns(ISSUANCE_COLUMNS, '@')})`,
    );
    this.forId = db.prepare(
      `SELECT ${columns(ISSUANCE_COLUMNS)} FROM issuances WHERE spiffe_id = ? ORDER BY issued_at, serial, kind`,
    );
    this.latest = db.prepare('SELECT MAX(not_after) AS latest FROM issuances WHERE spiffe_id = ?');
    this.count = db.prepare('SELECT COUNT(*) AS n FROM issuances WHERE spiffe_id = ?');
    // CROSS JOIN fixes SQLite's join order: from the deny list into issuances_spiffe_id. Left to
    // the planner (no ANALYZE statistics) it walked every unexpired issuance by not_after instead,
    // 78 ms per CRL rebuild with 100,000 issuances (the agents benchmark), on every task end.
    this.revokedUnexpired = db.prepare(
      `SELECT ${columns(ISSUANCE_COLUMNS, 'i.')}
       FROM revocations r CROSS JOIN issuances i ON i.spiffe_id = r.spiffe_id
       WHERE i.kind = 'x509' AND i.not_after >= ?
       ORDER BY i.issued_at, i.serial, i.kind`,
    );
    this.expired = db.prepare('DELETE FROM issuances WHERE not_after < ?');
  }

  /** One transaction (one fsync) per batch: callers batch the SVIDs of a rotation storm. */
  record(issuances: readonly IssuanceRecord[]): void {
    guard(this.db, 'record issuances', () =>
      this.db
        .transaction(() => {
          for (const issuance of issuances) {
            try {
              this.insert.run(issuanceToRow(issuance));
            } catch (err) {
              if (sqliteCode(err) === 'SQLITE_CONSTRAINT_PRIMARYKEY') {
                throw alreadyExists(`issuance: ${issuance.kind} serial ${issuance.serial} already recorded`);
              }
              if (sqliteCode(err) === 'SQLITE_CONSTRAINT_CHECK') throw invalidArgument(`issuance: unknown kind ${issuance.kind}`);
              throw err;
            }
          }
        })
        .immediate(),
    );
  }

  listForSpiffeId(spiffeId: string): IssuanceRecord[] {
    return guard(this.db, 'list issuances', () => this.forId.all(spiffeId).map(issuanceFromRow));
  }

  latestNotAfter(spiffeId: string): number | undefined {
    return guard(this.db, 'latest issuance', () => this.latest.get(spiffeId)?.latest ?? undefined);
  }

  listRevokedUnexpired(now: number): IssuanceRecord[] {
    return guard(this.db, 'list revoked issuances', () => this.revokedUnexpired.all(now).map(issuanceFromRow));
  }

  countForSpiffeId(spiffeId: string): number {
    return guard(this.db, 'count issuances', () => this.count.get(spiffeId)?.n ?? 0);
  }

  prune(now: number): number {
    return guard(this.db, 'prune issuances', () => this.expired.run(now).changes);
  }
}

class SqliteAuthorityStore implements SyncAuthorityStore {
  private readonly upsert: Statement;
  private readonly byId: Statement<[string], AuthorityRow>;
  private readonly all: Statement<[], AuthorityRow>;
  private readonly retired: Statement<[number], { server_id: string }>;

  constructor(
    private readonly db: Db,
    private readonly log: ChangeLog,
  ) {
    this.upsert = db.prepare(
      `INSERT INTO authorities (${columns(AUTHORITY_COLUMNS)}) VALUES (${columns(AUTHORITY_COLUMNS, '@')})
       ON CONFLICT (server_id) DO UPDATE SET x509_authorities = excluded.x509_authorities, jwt_keys = excluded.jwt_keys,
         crls = excluded.crls, updated_at = excluded.updated_at, retire_at = excluded.retire_at`,
    );
    this.byId = db.prepare(`SELECT ${columns(AUTHORITY_COLUMNS)} FROM authorities WHERE server_id = ?`);
    this.all = db.prepare(`SELECT ${columns(AUTHORITY_COLUMNS)} FROM authorities ORDER BY server_id`);
    this.retired = db.prepare('DELETE FROM authorities WHERE retire_at IS NOT NULL AND retire_at < ? RETURNING server_id');
  }

  put(record: AuthorityRecord): void {
    guard(this.db, 'publish authority', () =>
      this.db
        .transaction(() => {
          this.upsert.run(authorityToRow(record));
          this.log.add('authority', record.serverId);
        })
        .immediate(),
    );
  }

  get(serverId: string): AuthorityRecord | undefined {
    return guard(this.db, 'get authority', () => {
      const row = this.byId.get(serverId);
      return row && authorityFromRow(row);
    });
  }

  list(): AuthorityRecord[] {
    return guard(this.db, 'list authorities', () => this.all.all().map(authorityFromRow));
  }

  prune(now: number): number {
    return guard(this.db, 'prune authorities', () =>
      this.db
        .transaction(() => {
          const gone = this.retired.all(now);
          for (const r of gone) this.log.add('authority', r.server_id);
          return gone.length;
        })
        .immediate(),
    );
  }
}

class SqliteAnchorStore implements SyncAnchorStore {
  private readonly byName: Statement<[string], { value: string }>;
  private readonly upsert: Statement<[string, string]>;

  constructor(private readonly db: Db) {
    this.byName = db.prepare('SELECT value FROM anchors WHERE name = ?');
    this.upsert = db.prepare('INSERT INTO anchors (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value');
  }

  get(name: string): string | undefined {
    return guard(this.db, 'get anchor', () => this.byName.get(name)?.value);
  }

  put(name: string, value: string): void {
    guard(this.db, 'put anchor', () => this.upsert.run(name, value));
  }
}

class SqliteNodeStore implements SyncNodeStore {
  private readonly upsert: Statement;
  private readonly byName: Statement<[string], NodeRow>;
  private readonly all: Statement<[], NodeRow>;

  constructor(
    private readonly db: Db,
    private readonly log: ChangeLog,
  ) {
    this.upsert = db.prepare(
      `INSERT INTO nodes (${columns(NODE_COLUMNS)}) VALUES (${columns(NODE_COLUMNS, '@')})
       ON CONFLICT (name) DO UPDATE SET spiffe_id = excluded.spiffe_id, attestation = excluded.attestation, state = excluded.state,
         task_agents = excluded.task_agents, created_at = excluded.created_at, last_seen_at = excluded.last_seen_at,
         svid_expires_at = excluded.svid_expires_at, evicted_at = excluded.evicted_at`,
    );
    this.byName = db.prepare(`SELECT ${columns(NODE_COLUMNS)} FROM nodes WHERE name = ?`);
    this.all = db.prepare(`SELECT ${columns(NODE_COLUMNS)} FROM nodes ORDER BY name`);
  }

  put(node: NodeRecord): NodeRecord {
    return guard(this.db, 'put node', () =>
      this.db
        .transaction(() => {
          try {
            this.upsert.run(nodeToRow(node));
          } catch (err) {
            if (sqliteCode(err) === 'SQLITE_CONSTRAINT_CHECK') throw invalidArgument(`node: unknown state or attestation (${node.state}, ${node.attestation})`);
            throw err;
          }
          this.log.add('node', node.name);
          return this.get(node.name)!;
        })
        .immediate(),
    );
  }

  get(name: string): NodeRecord | undefined {
    return guard(this.db, 'get node', () => {
      const row = this.byName.get(name);
      return row && nodeFromRow(row);
    });
  }

  list(): NodeRecord[] {
    return guard(this.db, 'list nodes', () => this.all.all().map(nodeFromRow));
  }
}

class SqliteJoinTokenStore implements SyncJoinTokenStore {
  private readonly insert: Statement;
  private readonly use: Statement<[number, string, number], JoinTokenRow>;
  private readonly byHash: Statement<[string], JoinTokenRow>;
  private readonly expired: Statement<[number]>;

  constructor(private readonly db: Db) {
    this.insert = db.prepare(`INSERT INTO join_tokens (${columns(JOIN_TOKEN_COLUMNS)}) VALUES (${columns(JOIN_TOKEN_COLUMNS, '@')})`);
    // The conditions in the UPDATE are what make a token one-time: two concurrent uses cannot both match.
    this.use = db.prepare(
      `UPDATE join_tokens SET used_at = ? WHERE hash = ? AND used_at IS NULL AND expires_at >= ? RETURNING ${columns(JOIN_TOKEN_COLUMNS)}`,
    );
    this.byHash = db.prepare(`SELECT ${columns(JOIN_TOKEN_COLUMNS)} FROM join_tokens WHERE hash = ?`);
    this.expired = db.prepare('DELETE FROM join_tokens WHERE expires_at < ?');
  }

  create(token: JoinTokenRecord): JoinTokenRecord {
    return guard(this.db, 'create join token', () => {
      try {
        this.insert.run(joinTokenToRow(token));
      } catch (err) {
        if (sqliteCode(err) === 'SQLITE_CONSTRAINT_PRIMARYKEY') throw alreadyExists('join token already exists');
        throw err;
      }
      return joinTokenFromRow(this.byHash.get(token.hash)!);
    });
  }

  consume(hash: string, now: number): JoinTokenRecord {
    return guard(this.db, 'consume join token', () =>
      this.db
        .transaction(() => {
          const row = this.use.get(now, hash, now);
          if (row) return joinTokenFromRow(row);
          const refusal = joinTokenRefusal(this.byHash.get(hash));
          if (!refusal) throw notFound('join token not found');
          throw failedPrecondition(refusal);
        })
        .immediate(),
    );
  }

  prune(now: number): number {
    return guard(this.db, 'prune join tokens', () => this.expired.run(now).changes);
  }
}

/**
 * Creates the file owner-only (0600) before SQLite touches it: it holds the registration data
 * that decides who gets which identity. SQLite gives the -wal and -shm files the main file's mode.
 * A pre-existing file that is group/world accessible is tightened and the change logged.
 */
function prepareFile(file: string, logger: Logger): void {
  if (file === ':memory:' || file === '' || file.startsWith('file:')) return;
  try {
    closeSync(openSync(file, 'wx', 0o600));
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EEXIST') throw failedPrecondition(`datastore: cannot create database file ${file} (${code ?? 'error'})`, err);
  }
  for (const f of [file, `${file}-wal`, `${file}-shm`]) {
    let mode: number;
    try {
      mode = statSync(f).mode & 0o777;
    } catch {
      continue;
    }
    if ((mode & 0o077) !== 0) {
      chmodSync(f, 0o600);
      logger.warn({ file: f, mode: mode.toString(8) }, 'datastore: file was accessible to other users; set to 0600');
    }
  }
}

export function openSqliteDatastore(file: string, opts: SqliteDatastoreOptions = {}): Datastore {
  const logger = opts.logger ?? silentLogger();
  prepareFile(file, logger);
  let db: Db;
  try {
    db = new BetterSqlite3(file);
  } catch (err) {
    throw failedPrecondition(`datastore: cannot open ${file}`, err);
  }
  try {
    db.pragma(`busy_timeout = ${Math.max(0, Math.floor(opts.busyTimeoutMs ?? 5000))}`);
    const mode = db.pragma('journal_mode = WAL', { simple: true });
    if (mode !== 'wal' && file !== ':memory:') throw failedPrecondition(`datastore: ${file} cannot use WAL mode (got ${String(mode)})`);
    db.pragma('synchronous = FULL');
    db.pragma('foreign_keys = ON');
    const { from, to } = applyMigrations(db, { logger });
    logger.debug({ file, from, to }, 'datastore: opened');
  } catch (err) {
    const mapped = mapError(db, err, 'open');
    db.close();
    throw mapped;
  }
  const log = new ChangeLog(db);
  const stores: SyncStores = {
    entries: new SqliteEntryStore(db, log),
    tasks: new SqliteTaskStore(db, log),
    revocations: new SqliteRevocationStore(db, log),
    issuances: new SqliteIssuanceStore(db),
    authorities: new SqliteAuthorityStore(db, log),
    anchors: new SqliteAnchorStore(db),
    nodes: new SqliteNodeStore(db, log),
    joinTokens: new SqliteJoinTokenStore(db),
    changes: log,
  };
  const ping = db.prepare('SELECT 1');
  const engine: SyncEngine = {
    kind: 'sqlite',
    stores,
    // IMMEDIATE takes the write lock at BEGIN, so a transaction never fails half-way on a lock.
    begin: () => db.exec('BEGIN IMMEDIATE'),
    commit: () => db.exec('COMMIT'),
    rollback: () => {
      if (db.inTransaction) db.exec('ROLLBACK');
    },
    ping: () => ping.get(),
    close: () => {
      if (db.open) db.close();
    },
    mapError: (err, what) => mapError(db, err, what),
  };
  return asyncDatastore(engine);
}
