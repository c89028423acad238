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
import { normalizeSelectors, type Selector } from '../spiffe/selector.js';
import { applyMigrations } from './migrations.js';
import { FINAL_TASK_STATES, isThenable, mergeRevocation, selectorSetHash } from './rules.js';
import type {
  Datastore,
  EntryStore,
  IssuanceRecord,
  IssuanceStore,
  NewRegistrationEntry,
  RegistrationEntry,
  Revocation,
  RevocationStore,
  TaskBinding,
  TaskRecord,
  TaskState,
  TaskStore,
} from './types.js';

/*
 * SQLite Datastore (better-sqlite3, synchronous).
 *
 * Durability: WAL with synchronous=FULL, so every committed change to entries, tasks and
 * revocations is fsynced before the call returns; neither a killed process nor a power cut loses
 * it. Issuance rows are the exception (see SqliteIssuanceStore.record).
 *
 * The SQL stays portable (ON CONFLICT upserts, BIGINT/TEXT columns, JSON as TEXT, ordering in
 * ORDER BY) so a PostgreSQL store can implement the same interfaces with the same statements.
 * Orders match rules.ts, which the memory store uses.
 */

export interface SqliteDatastoreOptions {
  logger?: Logger;
  /** How long a write waits for another process's lock before failing with `unavailable`. */
  busyTimeoutMs?: number;
  /**
   * fsync every issuance row as well (synchronous=FULL for record()). Off by default: see
   * SqliteIssuanceStore.record for the trade-off.
   */
  durableIssuances?: boolean;
}

type Db = Database;

interface EntryRow {
  id: string;
  spiffe_id: string;
  selectors: string;
  x509_ttl_ms: number;
  jwt_ttl_ms: number;
  hint: string;
  dns_names: string;
  federates_with: string;
  include_tasks: number;
  expires_at: number | null;
  created_at: number;
  updated_at: number;
  revision: number;
}

interface TaskRow {
  agent: string;
  id: string;
  spiffe_id: string;
  binding: string;
  metadata: string;
  state: TaskState;
  x509_ttl_ms: number;
  jwt_ttl_ms: number;
  created_at: number;
  expires_at: number;
  ended_at: number | null;
  end_reason: string | null;
  created_by: string;
}

interface RevocationRow {
  spiffe_id: string;
  reason: string;
  revoked_at: number;
  revoked_by: string;
  keep_until: number;
}

interface IssuanceRow {
  kind: 'x509' | 'jwt';
  serial: string;
  spiffe_id: string;
  issuer_id: string;
  issued_at: number;
  not_after: number;
  task: string | null;
}

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

function entryFromRow(r: EntryRow): RegistrationEntry {
  return {
    id: r.id,
    spiffeId: r.spiffe_id,
    selectors: JSON.parse(r.selectors) as Selector[],
    x509TtlMs: r.x509_ttl_ms,
    jwtTtlMs: r.jwt_ttl_ms,
    hint: r.hint,
    dnsNames: JSON.parse(r.dns_names) as string[],
    federatesWith: JSON.parse(r.federates_with) as string[],
    includeTasks: r.include_tasks !== 0,
    expiresAt: r.expires_at,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    revision: r.revision,
  };
}

function entryToParams(e: RegistrationEntry) {
  // Only {type, value} is stored, whatever extra properties a caller's selector objects carry.
  const selectors = normalizeSelectors(e.selectors).map((s) => ({ type: s.type, value: s.value }));
  return {
    id: e.id,
    spiffe_id: e.spiffeId,
    selectors: JSON.stringify(selectors),
    selectors_hash: selectorSetHash(selectors),
    x509_ttl_ms: e.x509TtlMs,
    jwt_ttl_ms: e.jwtTtlMs,
    hint: e.hint,
    dns_names: JSON.stringify(e.dnsNames),
    federates_with: JSON.stringify(e.federatesWith),
    include_tasks: e.includeTasks ? 1 : 0,
    expires_at: e.expiresAt,
    created_at: e.createdAt,
    updated_at: e.updatedAt,
    revision: e.revision,
  };
}

function taskFromRow(r: TaskRow): TaskRecord {
  return {
    id: r.id,
    agent: r.agent,
    spiffeId: r.spiffe_id,
    binding: JSON.parse(r.binding) as TaskBinding,
    metadata: JSON.parse(r.metadata) as Record<string, string>,
    state: r.state,
    x509TtlMs: r.x509_ttl_ms,
    jwtTtlMs: r.jwt_ttl_ms,
    createdAt: r.created_at,
    expiresAt: r.expires_at,
    endedAt: r.ended_at,
    endReason: r.end_reason,
    createdBy: r.created_by,
  };
}

const revocationFromRow = (r: RevocationRow): Revocation => ({
  spiffeId: r.spiffe_id,
  reason: r.reason,
  revokedAt: r.revoked_at,
  revokedBy: r.revoked_by,
  keepUntil: r.keep_until,
});

const issuanceFromRow = (r: IssuanceRow): IssuanceRecord => ({
  kind: r.kind,
  serial: r.serial,
  spiffeId: r.spiffe_id,
  issuerId: r.issuer_id,
  issuedAt: r.issued_at,
  notAfter: r.not_after,
  task: r.task,
});

const ENTRY_COLUMNS =
  'id, spiffe_id, selectors, x509_ttl_ms, jwt_ttl_ms, hint, dns_names, federates_with, include_tasks, expires_at, created_at, updated_at, revision';
const TASK_COLUMNS =
  'agent, id, spiffe_id, binding, metadata, state, x509_ttl_ms, jwt_ttl_ms, created_at, expires_at, ended_at, end_reason, created_by';
const ISSUANCE_COLUMNS = 'kind, serial, spiffe_id, issuer_id, issued_at, not_after, task';

class SqliteEntryStore implements EntryStore {
  private readonly insert: Statement;
  private readonly replace: Statement;
  private readonly remove: Statement;
  private readonly byId: Statement<[string], EntryRow>;
  private readonly byIdentity: Statement<[string, string], { id: string }>;
  private readonly all: Statement<[], EntryRow>;

  constructor(private readonly db: Db) {
    this.insert = db.prepare(
      `INSERT INTO registration_entries (${ENTRY_COLUMNS}, selectors_hash) VALUES
       (@id, @spiffe_id, @selectors, @x509_ttl_ms, @jwt_ttl_ms, @hint, @dns_names, @federates_with, @include_tasks, @expires_at,
        @created_at, @updated_at, @revision, @selectors_hash)`,
    );
    this.replace = db.prepare(
      `UPDATE registration_entries SET spiffe_id = @spiffe_id, selectors = @selectors, selectors_hash = @selectors_hash,
         x509_ttl_ms = @x509_ttl_ms, jwt_ttl_ms = @jwt_ttl_ms, hint = @hint, dns_names = @dns_names,
         federates_with = @federates_with, include_tasks = @include_tasks, expires_at = @expires_at, updated_at = @updated_at, revision = @revision
       WHERE id = @id`,
    );
    this.remove = db.prepare('DELETE FROM registration_entries WHERE id = ?');
    this.byId = db.prepare(`SELECT ${ENTRY_COLUMNS} FROM registration_entries WHERE id = ?`);
    this.byIdentity = db.prepare('SELECT id FROM registration_entries WHERE spiffe_id = ? AND selectors_hash = ?');
    this.all = db.prepare(`SELECT ${ENTRY_COLUMNS} FROM registration_entries ORDER BY created_at, id`);
  }

  create(entry: NewRegistrationEntry, now: number): RegistrationEntry {
    const record: RegistrationEntry = { ...entry, createdAt: now, updatedAt: now, revision: 1 };
    const params = entryToParams(record);
    return guard(this.db, 'create entry', () => {
      try {
        this.insert.run(params);
      } catch (err) {
        throw this.constraintError(err, params) ?? err;
      }
      return this.get(record.id)!;
    });
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
          const params = entryToParams({
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

  private constraintError(err: unknown, params: ReturnType<typeof entryToParams>): AgentIdError | undefined {
    const code = sqliteCode(err);
    if (code === 'SQLITE_CONSTRAINT_PRIMARYKEY') return alreadyExists(`entry ${params.id} already exists`);
    if (code === 'SQLITE_CONSTRAINT_UNIQUE') {
      const other = this.byIdentity.get(params.spiffe_id, params.selectors_hash);
      return alreadyExists(
        `entry: an entry with spiffe_id ${params.spiffe_id} and the same selectors already exists (${other?.id ?? 'unknown'})`,
      );
    }
    return undefined;
  }
}

class SqliteTaskStore implements TaskStore {
  private readonly insert: Statement;
  private readonly byKey: Statement<[string, string], TaskRow>;
  private readonly setFinal: Statement;
  private readonly lists: Record<'all' | 'agent' | 'state' | 'both', Statement<unknown[], TaskRow>>;

  constructor(private readonly db: Db) {
    this.insert = db.prepare(
      `INSERT INTO tasks (${TASK_COLUMNS}) VALUES
       (@agent, @id, @spiffe_id, @binding, @metadata, @state, @x509_ttl_ms, @jwt_ttl_ms, @created_at, @expires_at,
        @ended_at, @end_reason, @created_by)`,
    );
    this.byKey = db.prepare(`SELECT ${TASK_COLUMNS} FROM tasks WHERE agent = ? AND id = ?`);
    this.setFinal = db.prepare(
      `UPDATE tasks SET state = @state, ended_at = @ended_at, end_reason = @end_reason
       WHERE agent = @agent AND id = @id AND state = 'active'`,
    );
    const order = 'ORDER BY created_at, agent, id';
    this.lists = {
      all: db.prepare(`SELECT ${TASK_COLUMNS} FROM tasks ${order}`),
      agent: db.prepare(`SELECT ${TASK_COLUMNS} FROM tasks WHERE agent = ? ${order}`),
      state: db.prepare(`SELECT ${TASK_COLUMNS} FROM tasks WHERE state = ? ${order}`),
      both: db.prepare(`SELECT ${TASK_COLUMNS} FROM tasks WHERE agent = ? AND state = ? ${order}`),
    };
  }

  create(task: TaskRecord): TaskRecord {
    return guard(this.db, 'create task', () => {
      try {
        this.insert.run({
          agent: task.agent,
          id: task.id,
          spiffe_id: task.spiffeId,
          binding: JSON.stringify(task.binding),
          metadata: JSON.stringify(task.metadata),
          state: task.state,
          x509_ttl_ms: task.x509TtlMs,
          jwt_ttl_ms: task.jwtTtlMs,
          created_at: task.createdAt,
          expires_at: task.expiresAt,
          ended_at: task.endedAt,
          end_reason: task.endReason,
          created_by: task.createdBy,
        });
      } catch (err) {
        if (sqliteCode(err) === 'SQLITE_CONSTRAINT_PRIMARYKEY') {
          throw alreadyExists(`task ${task.agent}/${task.id} already exists`);
        }
        if (sqliteCode(err) === 'SQLITE_CONSTRAINT_CHECK') throw invalidArgument(`task: unknown state ${task.state}`);
        throw err;
      }
      return this.get(task.agent, task.id)!;
    });
  }

  get(agent: string, id: string): TaskRecord | undefined {
    return guard(this.db, 'get task', () => {
      const row = this.byKey.get(agent, id);
      return row && taskFromRow(row);
    });
  }

  list(filter: { agent?: string; state?: TaskState } = {}): TaskRecord[] {
    return guard(this.db, 'list tasks', () => {
      const { agent, state } = filter;
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
          return taskFromRow(row);
        })
        .immediate(),
    );
  }
}

class SqliteRevocationStore implements RevocationStore {
  private readonly upsert: Statement;
  private readonly byId: Statement<[string], RevocationRow>;
  private readonly all: Statement<[], RevocationRow>;
  private readonly expired: Statement<[number]>;

  constructor(private readonly db: Db) {
    this.upsert = db.prepare(
      `INSERT INTO revocations (spiffe_id, reason, revoked_at, revoked_by, keep_until)
       VALUES (@spiffe_id, @reason, @revoked_at, @revoked_by, @keep_until)
       ON CONFLICT (spiffe_id) DO UPDATE SET reason = excluded.reason, revoked_at = excluded.revoked_at,
         revoked_by = excluded.revoked_by, keep_until = excluded.keep_until`,
    );
    this.byId = db.prepare('SELECT spiffe_id, reason, revoked_at, revoked_by, keep_until FROM revocations WHERE spiffe_id = ?');
    this.all = db.prepare(
      'SELECT spiffe_id, reason, revoked_at, revoked_by, keep_until FROM revocations ORDER BY revoked_at, spiffe_id',
    );
    this.expired = db.prepare('DELETE FROM revocations WHERE keep_until < ?');
  }

  add(revocation: Revocation): Revocation {
    return guard(this.db, 'add revocation', () =>
      this.db
        .transaction(() => {
          const existing = this.byId.get(revocation.spiffeId);
          const merged = mergeRevocation(existing && revocationFromRow(existing), revocation);
          this.upsert.run({
            spiffe_id: merged.spiffeId,
            reason: merged.reason,
            revoked_at: merged.revokedAt,
            revoked_by: merged.revokedBy,
            keep_until: merged.keepUntil,
          });
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
    return guard(this.db, 'prune revocations', () => this.expired.run(now).changes);
  }
}

/*
 * The issuances table is append + prune: record() inserts one row per SVID (hot path), prune()
 * drops expired rows; nothing updates a row.
 */
class SqliteIssuanceStore implements IssuanceStore {
  private readonly insert: Statement;
  private readonly syncNormal: Statement;
  private readonly syncFull: Statement;
  private readonly forId: Statement<[string], IssuanceRow>;
  private readonly latest: Statement<[string], { latest: number | null }>;
  private readonly count: Statement<[string], { n: number }>;
  private readonly revokedUnexpired: Statement<[number], IssuanceRow>;
  private readonly expired: Statement<[number]>;

  constructor(
    private readonly db: Db,
    private readonly durable: boolean,
  ) {
    this.insert = db.prepare(
      `INSERT INTO issuances (${ISSUANCE_COLUMNS}) VALUES (@kind, @serial, @spiffe_id, @issuer_id, @issued_at, @not_after, @task)`,
    );
    this.syncNormal = db.prepare('PRAGMA synchronous = NORMAL');
    this.syncFull = db.prepare('PRAGMA synchronous = FULL');
    this.forId = db.prepare(
      `SELECT ${ISSUANCE_COLUMNS} FROM issuances WHERE spiffe_id = ? ORDER BY issued_at, serial, kind`,
    );
    this.latest = db.prepare('SELECT MAX(not_after) AS latest FROM issuances WHERE spiffe_id = ?');
    this.count = db.prepare('SELECT COUNT(*) AS n FROM issuances WHERE spiffe_id = ?');
    this.revokedUnexpired = db.prepare(
      `SELECT ${ISSUANCE_COLUMNS.split(', ').map((c) => `i.${c}`).join(', ')}
       FROM issuances i JOIN revocations r ON r.spiffe_id = i.spiffe_id
       WHERE i.kind = 'x509' AND i.not_after >= ?
       ORDER BY i.issued_at, i.serial, i.kind`,
    );
    this.expired = db.prepare('DELETE FROM issuances WHERE not_after < ?');
  }

  /**
   * One prepared INSERT per SVID. Outside a transaction the commit runs with synchronous=NORMAL:
   * in WAL mode that still survives a killed process (the row is in the OS once the call returns)
   * but skips the fsync, which at thousands of rotations a second would stall the event loop. A
   * power cut may lose the newest rows; callers that derive a revocation's keepUntil from
   * latestNotAfter should floor it at now + the maximum TTL. Callers that record many SVIDs at
   * once can wrap them in transaction() to get one fully synced commit for the batch.
   */
  record(issuance: IssuanceRecord): void {
    guard(this.db, 'record issuance', () => {
      const params = {
        kind: issuance.kind,
        serial: issuance.serial,
        spiffe_id: issuance.spiffeId,
        issuer_id: issuance.issuerId,
        issued_at: issuance.issuedAt,
        not_after: issuance.notAfter,
        task: issuance.task,
      };
      const relaxed = !this.durable && !this.db.inTransaction;
      if (relaxed) this.syncNormal.run();
      try {
        this.insert.run(params);
      } catch (err) {
        if (sqliteCode(err) === 'SQLITE_CONSTRAINT_PRIMARYKEY') {
          throw alreadyExists(`issuance: ${issuance.kind} serial ${issuance.serial} already recorded`);
        }
        if (sqliteCode(err) === 'SQLITE_CONSTRAINT_CHECK') throw invalidArgument(`issuance: unknown kind ${issuance.kind}`);
        throw err;
      } finally {
        if (relaxed) this.syncFull.run();
      }
    });
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
  return new SqliteDatastore(db, opts.durableIssuances ?? false);
}

class SqliteDatastore implements Datastore {
  readonly entries: EntryStore;
  readonly tasks: TaskStore;
  readonly revocations: RevocationStore;
  readonly issuances: IssuanceStore;

  constructor(
    private readonly db: Db,
    durableIssuances: boolean,
  ) {
    this.entries = new SqliteEntryStore(db);
    this.tasks = new SqliteTaskStore(db);
    this.revocations = new SqliteRevocationStore(db);
    this.issuances = new SqliteIssuanceStore(db, durableIssuances);
  }

  /** Nested calls become savepoints; the outermost takes the write lock at BEGIN (IMMEDIATE). */
  transaction<T>(fn: () => T): T {
    return guard(this.db, 'transaction', () =>
      this.db
        .transaction(() => {
          const result = fn();
          // better-sqlite3 would commit as soon as the promise is returned, before its work is done.
          if (isThenable(result)) throw internal('datastore: transaction function must be synchronous');
          return result;
        })
        .immediate(),
    );
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}
