import pg from 'pg';
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
import { applyPostgresMigrations } from './postgres-migrations.js';
import { describePostgresUrl } from './postgres-url.js';
import { FINAL_TASK_STATES, joinTokenRefusal, taskChangeKey } from './rules.js';
import {
  AUTHORITY_COLUMNS,
  authorityFromRow,
  columns,
  authorityToRow,
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
import type {
  AnchorStore,
  AuthorityRecord,
  AuthorityStore,
  Change,
  ChangeFeed,
  ChangeResource,
  Datastore,
  EntryStore,
  IssuanceRecord,
  IssuanceStore,
  JoinTokenRecord,
  JoinTokenStore,
  NewRegistrationEntry,
  NodeRecord,
  NodeStore,
  RegistrationEntry,
  Revocation,
  RevocationStore,
  Stores,
  TaskRecord,
  TaskState,
  TaskStore,
} from './types.js';

/*
 * PostgreSQL Datastore (the `pg` driver, pooled), with the semantics of the SQLite store: the
 * same schema versions, errors, messages and orders (rules.ts).
 *
 * Change feed ordering. Every write to entries, tasks, revocations or authorities appends a
 * `changes` row in its own transaction, and readers follow the feed by revision ("give me what
 * came after N"). An identity column alone does not make that safe: revisions are drawn when a
 * row is inserted but become visible when its transaction commits, so transaction 1 may draw 5,
 * transaction 2 draw 6 and commit first; a reader that sees 6 moves its cursor past 5 and never
 * reads it. Therefore every change-writing transaction takes one transaction-level advisory lock
 * (CHANGE_LOCK_KEY) before its first change-writing statement (a single store call: before
 * anything; inside transaction(): at its first such call, before that call's row locks), and holds
 * it until it commits or rolls back. Writers
 * are thus serialized from the moment they draw a revision to the moment it is visible, and
 * revisions become visible in order, across every server on the database. PostgreSQL releases the
 * lock only after the commit is visible to other sessions, so the next writer's revision is always
 * drawn after the previous one can be read. The cost is that change-writing transactions (admin
 * writes: entries, tasks, revocations, authorities) run one at a time; issuances and anchors do
 * not take the lock. (A transaction() that upserts an anchor and then writes a change could, in
 * theory, deadlock with another server doing the same the other way round; PostgreSQL then aborts
 * one, which the caller sees as `unavailable` and retries.)
 *
 * Other servers learn of changes by LISTEN/NOTIFY: a writer calls pg_notify in the transaction
 * (delivered at commit, dropped on rollback), and one dedicated connection per datastore listens
 * and reconnects with backoff. Notifications are only a wake-up: readers re-read the feed by
 * revision and also poll, so a lost notification only delays.
 *
 * Statement-level atomicity. In PostgreSQL a failed statement aborts the whole transaction; in
 * SQLite only the statement is undone. So that a caller inside transaction() sees the same thing
 * on both (a duplicate create fails, the transaction goes on), each store write inside a
 * transaction runs in a savepoint.
 *
 * Orders: text columns compare with COLLATE "C" (binary, as SQLite and rules.compareText), whatever
 * the database's default collation is.
 */

export interface PostgresDatastoreOptions {
  logger?: Logger;
  /** Connections in the pool (default 10); the change listener uses one more. */
  poolSize?: number;
  /** How long to wait for a connection before failing with `unavailable` (default 5000 ms). */
  connectTimeoutMs?: number;
  /**
   * Longest a statement may run, waits for the change lock included (default 30000 ms); past it the
   * call fails with `unavailable` instead of hanging.
   */
  statementTimeoutMs?: number;
  /**
   * The database ends a session that sits in an open transaction this long (default 60000 ms), so a
   * stuck or paused server cannot hold the change lock and stop every other server's writes.
   */
  idleInTransactionTimeoutMs?: number;
}

/** Serializes change-writing transactions (see the header). An arbitrary constant: "agch". */
export const CHANGE_LOCK_KEY = 0x61676368;
/** NOTIFY channel that wakes change-feed readers on other servers. */
export const CHANGE_CHANNEL = 'agentid_changes';

/** Anchor (in the anchors table) holding the highest pruned revision; see PgChangeFeed.head. */
const PRUNED_ANCHOR = 'datastore.changes.pruned_through';

const LISTEN_BACKOFF_MIN_MS = 100;
const LISTEN_BACKOFF_MAX_MS = 5_000;

/*
 * BIGINT (int8) comes back from the driver as a string, because it may exceed 2^53. Every BIGINT
 * here is milliseconds, a count or a revision, far below that: parse them as numbers, for this
 * pool only (the driver's global parser table stays untouched).
 */
const INT8_OID = 20;
const typeParsers = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    oid === INT8_OID ? (value: string) => Number(value) : pg.types.getTypeParser(oid, format)) as typeof pg.types.getTypeParser,
};

/** SQLSTATEs that mean the server is gone, going or not accepting us yet: retry later. */
const UNAVAILABLE_SQLSTATES = new Set(['57P01', '57P02', '57P03', '57014', '25P03', '53300', '53400', '40001', '40P01']);
const UNAVAILABLE_ERRNOS = new Set([
  'ECONNREFUSED', 'ENOENT', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ENOTFOUND',
]);
// The driver reports a dropped or timed-out connection with these messages and no code.
const UNAVAILABLE_MESSAGES = /Connection terminated|not queryable|timeout exceeded when trying to connect|Connection ended/i;

function isConnectionError(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && (code.startsWith('08') || UNAVAILABLE_SQLSTATES.has(code) || UNAVAILABLE_ERRNOS.has(code))) {
    return true;
  }
  return code === undefined && UNAVAILABLE_MESSAGES.test(err.message);
}

/** True when the connection itself is unusable (it must not go back to the pool). */
function isBrokenConnection(err: unknown): boolean {
  const code = (err as { code?: unknown } | undefined)?.code;
  return isConnectionError(err) && code !== '40001' && code !== '40P01';
}

const sqlState = (err: unknown): string | undefined =>
  err instanceof pg.DatabaseError ? err.code : undefined;

/**
 * Turns driver errors into AgentIdErrors. Our own errors, and whatever a transaction() callback
 * throws, pass through untouched so callers see their own error.
 */
function mapError(err: unknown, what: string): unknown {
  if (err instanceof AgentIdError) return err;
  if (isConnectionError(err)) {
    const code = (err as { code?: unknown }).code;
    if (code === '40001' || code === '40P01') {
      return unavailable(`datastore: ${what}: conflicted with a concurrent write; retry`, err);
    }
    return unavailable(`datastore: ${what}: database unreachable${typeof code === 'string' ? ` (${code})` : ''}`, err);
  }
  const state = sqlState(err);
  if (state !== undefined) return internal(`datastore: ${what} failed (${state})`, err);
  return err;
}

interface Queryable {
  query<R extends pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>>;
}

interface WriteOptions {
  /** The write appends to the change feed: take the change lock first (see the header). */
  changes: boolean;
}

/**
 * How store methods reach the database: through the pool (every write its own transaction) or
 * through one open transaction (every write a savepoint in it).
 */
interface Executor {
  read<R extends pg.QueryResultRow>(what: string, text: string, values?: unknown[]): Promise<R[]>;
  write<T>(what: string, options: WriteOptions, fn: (q: Queryable) => Promise<T>): Promise<T>;
}

const LOCK_SQL = `SELECT pg_advisory_xact_lock(${CHANGE_LOCK_KEY})`;

async function appendChanges(q: Queryable, resource: ChangeResource, keys: readonly string[]): Promise<void> {
  if (keys.length === 0) return;
  await q.query('INSERT INTO changes (resource, key) SELECT $1::text, k FROM unnest($2::text[]) WITH ORDINALITY AS t(k, n) ORDER BY n', [
    resource,
    keys,
  ]);
  // Delivered when (and only if) the transaction commits; equal payloads in one transaction fold into one.
  await q.query('SELECT pg_notify($1, $2)', [CHANGE_CHANNEL, '']);
}

const placeholders = (count: number, offset = 0) => Array.from({ length: count }, (_, i) => `$${offset + i + 1}`).join(', ');
const valuesOf = <R extends object>(row: R, cols: readonly (keyof R)[]) => cols.map((c) => row[c]);

/** Reads one table's records: its record columns, through an executor, converted from rows. */
class RecordReader<R extends pg.QueryResultRow, T> {
  constructor(
    private readonly x: Executor,
    private readonly table: string,
    private readonly cols: readonly string[],
    private readonly fromRow: (row: R) => T,
  ) {}

  async one(what: string, where: string, values: unknown[]): Promise<T | undefined> {
    const rows = await this.x.read<R>(what, `SELECT ${columns(this.cols)} FROM ${this.table} WHERE ${where}`, values);
    return rows[0] && this.fromRow(rows[0]);
  }

  async all(what: string, whereAndOrder: string, values: unknown[] = []): Promise<T[]> {
    const rows = await this.x.read<R>(what, `SELECT ${columns(this.cols)} FROM ${this.table} ${whereAndOrder}`, values);
    return rows.map(this.fromRow);
  }
}

class PgEntryStore implements EntryStore {
  private readonly records: RecordReader<EntryRow, RegistrationEntry>;

  constructor(private readonly x: Executor) {
    this.records = new RecordReader(x, 'registration_entries', ENTRY_COLUMNS, entryFromRow);
  }

  async create(entry: NewRegistrationEntry, now: number): Promise<RegistrationEntry> {
    const row = entryToRow({ ...entry, createdAt: now, updatedAt: now, revision: 1 });
    try {
      return await this.x.write('create entry', { changes: true }, async (q) => {
        const { rows } = await q.query<EntryRow>(
          `INSERT INTO registration_entries (${columns(ENTRY_COLUMNS)}) VALUES (${placeholders(ENTRY_COLUMNS.length)})
           RETURNING ${columns(ENTRY_COLUMNS)}`,
          valuesOf(row, ENTRY_COLUMNS),
        );
        await appendChanges(q, 'entry', [row.id]);
        return entryFromRow(rows[0]!);
      });
    } catch (err) {
      throw (await this.constraintError(err, row)) ?? err;
    }
  }

  async update(entry: NewRegistrationEntry, now: number, expectedRevision?: number): Promise<RegistrationEntry> {
    let attempted: EntryRow | undefined;
    try {
      return await this.x.write('update entry', { changes: true }, async (q) => {
        const current = (
          await q.query<EntryRow>(`SELECT ${columns(ENTRY_COLUMNS)} FROM registration_entries WHERE id = $1 FOR UPDATE`, [entry.id])
        ).rows[0];
        if (!current) throw notFound(`entry ${entry.id} not found`);
        if (expectedRevision !== undefined && expectedRevision !== current.revision) {
          throw failedPrecondition(
            `entry ${entry.id}: revision ${expectedRevision} is stale (current revision ${current.revision})`,
          );
        }
        attempted = entryToRow({ ...entry, createdAt: current.created_at, updatedAt: now, revision: current.revision + 1 });
        const { rows } = await q.query<EntryRow>(
          `UPDATE registration_entries SET spiffe_id = $2, selectors = $3, selectors_hash = $4, x509_ttl_ms = $5,
             jwt_ttl_ms = $6, hint = $7, dns_names = $8, federates_with = $9, include_tasks = $10, expires_at = $11,
             updated_at = $12, revision = $13, node = $14
           WHERE id = $1 RETURNING ${columns(ENTRY_COLUMNS)}`,
          [
            attempted.id, attempted.spiffe_id, attempted.selectors, attempted.selectors_hash, attempted.x509_ttl_ms,
            attempted.jwt_ttl_ms, attempted.hint, attempted.dns_names, attempted.federates_with, attempted.include_tasks,
            attempted.expires_at, attempted.updated_at, attempted.revision, attempted.node,
          ],
        );
        await appendChanges(q, 'entry', [entry.id]);
        return entryFromRow(rows[0]!);
      });
    } catch (err) {
      throw (attempted && (await this.constraintError(err, attempted))) ?? err;
    }
  }

  async delete(id: string): Promise<RegistrationEntry> {
    return this.x.write('delete entry', { changes: true }, async (q) => {
      const { rows } = await q.query<EntryRow>(
        `DELETE FROM registration_entries WHERE id = $1 RETURNING ${columns(ENTRY_COLUMNS)}`,
        [id],
      );
      if (!rows[0]) throw notFound(`entry ${id} not found`);
      await appendChanges(q, 'entry', [id]);
      return entryFromRow(rows[0]);
    });
  }

  async get(id: string): Promise<RegistrationEntry | undefined> {
    return this.records.one('get entry', 'id = $1', [id]);
  }

  async list(): Promise<RegistrationEntry[]> {
    return this.records.all('list entries', 'ORDER BY created_at, id COLLATE "C"');
  }

  /** The unique-violation cause of a failed insert/update, with SQLite's messages; the write was rolled back. */
  private async constraintError(err: unknown, row: EntryRow): Promise<AgentIdError | undefined> {
    if (!(err instanceof AgentIdError) || !(err.cause instanceof pg.DatabaseError) || err.cause.code !== '23505') {
      return undefined;
    }
    if (err.cause.constraint === 'registration_entries_pkey') return alreadyExists(`entry ${row.id} already exists`);
    const other = await this.x.read<{ id: string }>(
      'create entry',
      'SELECT id FROM registration_entries WHERE spiffe_id = $1 AND selectors_hash = $2',
      [row.spiffe_id, row.selectors_hash],
    );
    return alreadyExists(duplicateIdentityMessage(row.spiffe_id, other[0]?.id));
  }
}

const TASK_ORDER = 'ORDER BY created_at, agent COLLATE "C", id COLLATE "C"';

class PgTaskStore implements TaskStore {
  private readonly records: RecordReader<TaskRow, TaskRecord>;

  constructor(private readonly x: Executor) {
    this.records = new RecordReader(x, 'tasks', TASK_COLUMNS, taskFromRow);
  }

  async create(task: TaskRecord): Promise<TaskRecord> {
    const row = taskToRow(task);
    try {
      return await this.x.write('create task', { changes: true }, async (q) => {
        const { rows } = await q.query<TaskRow>(
          `INSERT INTO tasks (${columns(TASK_COLUMNS)}) VALUES (${placeholders(TASK_COLUMNS.length)}) RETURNING ${columns(TASK_COLUMNS)}`,
          valuesOf(row, TASK_COLUMNS),
        );
        await appendChanges(q, 'task', [taskChangeKey(task.agent, task.id)]);
        return taskFromRow(rows[0]!);
      });
    } catch (err) {
      const state = err instanceof AgentIdError ? sqlState(err.cause) : undefined;
      if (state === '23505') throw alreadyExists(`task ${task.agent}/${task.id} already exists`);
      if (state === '23514') throw invalidArgument(`task: unknown state ${task.state}`);
      throw err;
    }
  }

  async get(agent: string, id: string): Promise<TaskRecord | undefined> {
    return this.records.one('get task', 'agent = $1 AND id = $2', [agent, id]);
  }

  async findById(id: string): Promise<TaskRecord[]> {
    return this.records.all('find task', `WHERE id = $1 ${TASK_ORDER}`, [id]);
  }

  async list(filter: { agent?: string; state?: TaskState; node?: string } = {}): Promise<TaskRecord[]> {
    const conditions: string[] = [];
    const values: unknown[] = [];
    if (filter.node !== undefined) {
      values.push(filter.node);
      conditions.push(`node = $${values.length}`);
    }
    if (filter.agent !== undefined) {
      values.push(filter.agent);
      conditions.push(`agent = $${values.length}`);
    }
    if (filter.state !== undefined) {
      values.push(filter.state);
      conditions.push(`state = $${values.length}`);
    }
    const where = conditions.length > 0 ? `WHERE ${conditions.join(' AND ')}` : '';
    return this.records.all('list tasks', `${where} ${TASK_ORDER}`, values);
  }

  async finish(agent: string, id: string, state: Exclude<TaskState, 'active'>, at: number, reason: string): Promise<TaskRecord> {
    if (!FINAL_TASK_STATES.has(state)) throw invalidArgument(`task: final state must be ended, revoked or expired, not ${String(state)}`);
    return this.x.write('finish task', { changes: true }, async (q) => {
      // The state = 'active' condition is what enforces "only active -> final".
      const { rows } = await q.query<TaskRow>(
        `UPDATE tasks SET state = $3, ended_at = $4, end_reason = $5 WHERE agent = $1 AND id = $2 AND state = 'active'
         RETURNING ${columns(TASK_COLUMNS)}`,
        [agent, id, state, at, reason],
      );
      if (!rows[0]) {
        const found = await q.query<{ state: TaskState }>('SELECT state FROM tasks WHERE agent = $1 AND id = $2', [agent, id]);
        if (!found.rows[0]) throw notFound(`task ${agent}/${id} not found`);
        throw failedPrecondition(`task ${agent}/${id} is ${found.rows[0].state}, not active`);
      }
      await appendChanges(q, 'task', [taskChangeKey(agent, id)]);
      return taskFromRow(rows[0]);
    });
  }
}

class PgRevocationStore implements RevocationStore {
  private readonly records: RecordReader<RevocationRow, Revocation>;

  constructor(private readonly x: Executor) {
    this.records = new RecordReader(x, 'revocations', REVOCATION_COLUMNS, revocationFromRow);
  }

  /**
   * mergeRevocation (rules.ts), applied by the database in one upsert: two servers adding the same
   * ID at once never lose the later keepUntil, whatever order they commit in. In the SET list,
   * `r.` is the stored row and `excluded.` the incoming one.
   */
  async add(revocation: Revocation): Promise<Revocation> {
    const row = revocationToRow(revocation);
    return this.x.write('add revocation', { changes: true }, async (q) => {
      const { rows } = await q.query<RevocationRow>(
        `INSERT INTO revocations AS r (${columns(REVOCATION_COLUMNS)}) VALUES (${placeholders(REVOCATION_COLUMNS.length)})
         ON CONFLICT (spiffe_id) DO UPDATE SET
           reason     = CASE WHEN excluded.reason <> '' THEN excluded.reason ELSE r.reason END,
           revoked_by = CASE WHEN excluded.revoked_at < r.revoked_at THEN excluded.revoked_by ELSE r.revoked_by END,
           revoked_at = LEAST(r.revoked_at, excluded.revoked_at),
           keep_until = GREATEST(r.keep_until, excluded.keep_until)
         RETURNING ${columns(REVOCATION_COLUMNS)}`,
        valuesOf(row, REVOCATION_COLUMNS),
      );
      await appendChanges(q, 'revocation', [revocation.spiffeId]);
      return revocationFromRow(rows[0]!);
    });
  }

  async get(spiffeId: string): Promise<Revocation | undefined> {
    return this.records.one('get revocation', 'spiffe_id = $1', [spiffeId]);
  }

  async list(): Promise<Revocation[]> {
    return this.records.all('list revocations', 'ORDER BY revoked_at, spiffe_id COLLATE "C"');
  }

  /** Dropping a revocation is a change too: readers must take the ID off their deny lists. */
  async prune(now: number): Promise<number> {
    return this.x.write('prune revocations', { changes: true }, async (q) => {
      const { rows } = await q.query<{ spiffe_id: string }>('DELETE FROM revocations WHERE keep_until < $1 RETURNING spiffe_id', [now]);
      const keys = rows.map((r) => r.spiffe_id).sort();
      await appendChanges(q, 'revocation', keys);
      return keys.length;
    });
  }
}

const ISSUANCE_ORDER = 'ORDER BY issued_at, serial COLLATE "C", kind COLLATE "C"';

class PgIssuanceStore implements IssuanceStore {
  private readonly records: RecordReader<IssuanceRow, IssuanceRecord>;

  constructor(private readonly x: Executor) {
    this.records = new RecordReader(x, 'issuances', ISSUANCE_COLUMNS, issuanceFromRow);
  }

  /**
   * One statement for the batch: each column travels as one array parameter (unnest), so a batch
   * of thousands costs one round trip and no parameter-count limit applies. Conflicting rows are
   * skipped by ON CONFLICT and found by comparing what came back, so the error names the first
   * duplicate in the batch's order (SQLite's message); the whole batch then rolls back.
   */
  async record(issuances: readonly IssuanceRecord[]): Promise<void> {
    if (issuances.length === 0) return;
    for (const i of issuances) {
      if (i.kind !== 'x509' && i.kind !== 'jwt') throw invalidArgument(`issuance: unknown kind ${String(i.kind)}`);
    }
    await this.x.write('record issuances', { changes: false }, async (q) => {
      const rowsIn = issuances.map(issuanceToRow);
      const { rows } = await q.query<{ kind: string; serial: string }>(
        `INSERT INTO issuances (${columns(ISSUANCE_COLUMNS)})
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::text[])
         ON CONFLICT (kind, serial) DO NOTHING RETURNING kind, serial`,
        ISSUANCE_COLUMNS.map((c) => rowsIn.map((r) => r[c])),
      );
      if (rows.length === issuances.length) return;
      const inserted = new Set(rows.map((r) => `${r.kind}\n${r.serial}`));
      const duplicate = issuances.find((i) => !inserted.delete(`${i.kind}\n${i.serial}`))!;
      throw alreadyExists(`issuance: ${duplicate.kind} serial ${duplicate.serial} already recorded`);
    });
  }

  async listForSpiffeId(spiffeId: string): Promise<IssuanceRecord[]> {
    return this.records.all('list issuances', `WHERE spiffe_id = $1 ${ISSUANCE_ORDER}`, [spiffeId]);
  }

  async latestNotAfter(spiffeId: string): Promise<number | undefined> {
    const rows = await this.x.read<{ latest: number | null }>(
      'latest issuance',
      'SELECT MAX(not_after) AS latest FROM issuances WHERE spiffe_id = $1',
      [spiffeId],
    );
    return rows[0]?.latest ?? undefined;
  }

  async listRevokedUnexpired(now: number): Promise<IssuanceRecord[]> {
    const rows = await this.x.read<IssuanceRow>(
      'list revoked issuances',
      `SELECT ${columns(ISSUANCE_COLUMNS, 'i.')}
       FROM issuances i JOIN revocations r ON r.spiffe_id = i.spiffe_id
       WHERE i.kind = 'x509' AND i.not_after >= $1
       ORDER BY i.issued_at, i.serial COLLATE "C", i.kind COLLATE "C"`,
      [now],
    );
    return rows.map(issuanceFromRow);
  }

  async countForSpiffeId(spiffeId: string): Promise<number> {
    const rows = await this.x.read<{ n: number }>('count issuances', 'SELECT COUNT(*) AS n FROM issuances WHERE spiffe_id = $1', [spiffeId]);
    return rows[0]?.n ?? 0;
  }

  async prune(now: number): Promise<number> {
    return this.x.write('prune issuances', { changes: false }, async (q) => {
      return (await q.query('DELETE FROM issuances WHERE not_after < $1', [now])).rowCount ?? 0;
    });
  }
}

class PgAuthorityStore implements AuthorityStore {
  private readonly records: RecordReader<AuthorityRow, AuthorityRecord>;

  constructor(private readonly x: Executor) {
    this.records = new RecordReader(x, 'authorities', AUTHORITY_COLUMNS, authorityFromRow);
  }

  async put(record: AuthorityRecord): Promise<void> {
    const row = authorityToRow(record);
    await this.x.write('publish authority', { changes: true }, async (q) => {
      await q.query(
        `INSERT INTO authorities (${columns(AUTHORITY_COLUMNS)}) VALUES (${placeholders(AUTHORITY_COLUMNS.length)})
         ON CONFLICT (server_id) DO UPDATE SET x509_authorities = excluded.x509_authorities, jwt_keys = excluded.jwt_keys,
           crls = excluded.crls, updated_at = excluded.updated_at, retire_at = excluded.retire_at`,
        valuesOf(row, AUTHORITY_COLUMNS),
      );
      await appendChanges(q, 'authority', [record.serverId]);
    });
  }

  async get(serverId: string): Promise<AuthorityRecord | undefined> {
    return this.records.one('get authority', 'server_id = $1', [serverId]);
  }

  async list(): Promise<AuthorityRecord[]> {
    return this.records.all('list authorities', 'ORDER BY server_id COLLATE "C"');
  }

  async prune(now: number): Promise<number> {
    return this.x.write('prune authorities', { changes: true }, async (q) => {
      const { rows } = await q.query<{ server_id: string }>(
        'DELETE FROM authorities WHERE retire_at IS NOT NULL AND retire_at < $1 RETURNING server_id',
        [now],
      );
      const keys = rows.map((r) => r.server_id).sort();
      await appendChanges(q, 'authority', keys);
      return keys.length;
    });
  }
}

class PgAnchorStore implements AnchorStore {
  constructor(private readonly x: Executor) {}

  async get(name: string): Promise<string | undefined> {
    const rows = await this.x.read<{ value: string }>('get anchor', 'SELECT value FROM anchors WHERE name = $1', [name]);
    return rows[0]?.value;
  }

  async put(name: string, value: string): Promise<void> {
    await this.x.write('put anchor', { changes: false }, async (q) => {
      await q.query('INSERT INTO anchors (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value', [
        name,
        value,
      ]);
    });
  }
}

class PgNodeStore implements NodeStore {
  private readonly records: RecordReader<NodeRow, NodeRecord>;

  constructor(private readonly x: Executor) {
    this.records = new RecordReader(x, 'nodes', NODE_COLUMNS, nodeFromRow);
  }

  async put(node: NodeRecord): Promise<NodeRecord> {
    const row = nodeToRow(node);
    try {
      return await this.x.write('put node', { changes: true }, async (q) => {
        const { rows } = await q.query<NodeRow>(
          `INSERT INTO nodes (${columns(NODE_COLUMNS)}) VALUES (${placeholders(NODE_COLUMNS.length)})
           ON CONFLICT (name) DO UPDATE SET spiffe_id = excluded.spiffe_id, attestation = excluded.attestation, state = excluded.state,
             task_agents = excluded.task_agents, created_at = excluded.created_at, last_seen_at = excluded.last_seen_at,
             svid_expires_at = excluded.svid_expires_at, evicted_at = excluded.evicted_at
           RETURNING ${columns(NODE_COLUMNS)}`,
          valuesOf(row, NODE_COLUMNS),
        );
        await appendChanges(q, 'node', [node.name]);
        return nodeFromRow(rows[0]!);
      });
    } catch (err) {
      if (err instanceof AgentIdError && sqlState(err.cause) === '23514') {
        throw invalidArgument(`node: unknown state or attestation (${node.state}, ${node.attestation})`);
      }
      throw err;
    }
  }

  async get(name: string): Promise<NodeRecord | undefined> {
    return this.records.one('get node', 'name = $1', [name]);
  }

  async list(): Promise<NodeRecord[]> {
    return this.records.all('list nodes', 'ORDER BY name COLLATE "C"');
  }
}

class PgJoinTokenStore implements JoinTokenStore {
  constructor(private readonly x: Executor) {}

  async create(token: JoinTokenRecord): Promise<JoinTokenRecord> {
    const row = joinTokenToRow(token);
    try {
      return await this.x.write('create join token', { changes: false }, async (q) => {
        const { rows } = await q.query<JoinTokenRow>(
          `INSERT INTO join_tokens (${columns(JOIN_TOKEN_COLUMNS)}) VALUES (${placeholders(JOIN_TOKEN_COLUMNS.length)})
           RETURNING ${columns(JOIN_TOKEN_COLUMNS)}`,
          valuesOf(row, JOIN_TOKEN_COLUMNS),
        );
        return joinTokenFromRow(rows[0]!);
      });
    } catch (err) {
      if (err instanceof AgentIdError && sqlState(err.cause) === '23505') throw alreadyExists('join token already exists');
      throw err;
    }
  }

  async consume(hash: string, now: number): Promise<JoinTokenRecord> {
    return this.x.write('consume join token', { changes: false }, async (q) => {
      // The conditions in the UPDATE are what make a token one-time: of two concurrent uses, the
      // second waits for the first's row lock, re-checks used_at, and matches nothing.
      const { rows } = await q.query<JoinTokenRow>(
        `UPDATE join_tokens SET used_at = $1 WHERE hash = $2 AND used_at IS NULL AND expires_at >= $1
         RETURNING ${columns(JOIN_TOKEN_COLUMNS)}`,
        [now, hash],
      );
      if (rows[0]) return joinTokenFromRow(rows[0]);
      const found = await q.query<JoinTokenRow>(`SELECT ${columns(JOIN_TOKEN_COLUMNS)} FROM join_tokens WHERE hash = $1`, [hash]);
      const refusal = joinTokenRefusal(found.rows[0]);
      if (!refusal) throw notFound('join token not found');
      throw failedPrecondition(refusal);
    });
  }

  async prune(now: number): Promise<number> {
    return this.x.write('prune join tokens', { changes: false }, async (q) => {
      const result = await q.query('DELETE FROM join_tokens WHERE expires_at < $1', [now]);
      return result.rowCount ?? 0;
    });
  }
}

class PgStores implements Stores {
  readonly entries: EntryStore;
  readonly tasks: TaskStore;
  readonly revocations: RevocationStore;
  readonly issuances: IssuanceStore;
  readonly authorities: AuthorityStore;
  readonly anchors: AnchorStore;
  readonly nodes: NodeStore;
  readonly joinTokens: JoinTokenStore;

  constructor(x: Executor) {
    this.nodes = new PgNodeStore(x);
    this.joinTokens = new PgJoinTokenStore(x);
    this.entries = new PgEntryStore(x);
    this.tasks = new PgTaskStore(x);
    this.revocations = new PgRevocationStore(x);
    this.issuances = new PgIssuanceStore(x);
    this.authorities = new PgAuthorityStore(x);
    this.anchors = new PgAnchorStore(x);
  }
}

/** Connects from the pool, mapping "cannot connect" (and a closed datastore) to our errors. */
async function connect(pool: pg.Pool, isClosed: () => boolean, what: string): Promise<pg.PoolClient> {
  if (isClosed()) throw failedPrecondition('datastore: closed');
  try {
    return await pool.connect();
  } catch (err) {
    if (isClosed()) throw failedPrecondition('datastore: closed');
    throw mapError(err, what);
  }
}

/** Rolls back after a failure; a connection that broke (or cannot roll back) is destroyed, not reused. */
async function rollback(client: pg.PoolClient, cause: unknown): Promise<Error | undefined> {
  if (isBrokenConnection(cause)) return cause as Error;
  try {
    await client.query('ROLLBACK');
    return undefined;
  } catch (err) {
    return err instanceof Error ? err : new Error('rollback failed');
  }
}

/** Store calls outside transaction(): reads straight from the pool, each write its own transaction. */
class PoolExecutor implements Executor {
  constructor(
    private readonly pool: pg.Pool,
    private readonly isClosed: () => boolean,
    private readonly committed: () => void,
  ) {}

  async read<R extends pg.QueryResultRow>(what: string, text: string, values?: unknown[]): Promise<R[]> {
    if (this.isClosed()) throw failedPrecondition('datastore: closed');
    try {
      return (await this.pool.query<R>(text, values)).rows;
    } catch (err) {
      if (this.isClosed()) throw failedPrecondition('datastore: closed');
      throw mapError(err, what);
    }
  }

  async write<T>(what: string, options: WriteOptions, fn: (q: Queryable) => Promise<T>): Promise<T> {
    const client = await connect(this.pool, this.isClosed, what);
    let discard: Error | undefined;
    try {
      await client.query('BEGIN');
      if (options.changes) await client.query(LOCK_SQL);
      const result = await fn(client);
      await client.query('COMMIT');
      if (options.changes) this.committed();
      return result;
    } catch (err) {
      discard = await rollback(client, err);
      throw mapError(err, what);
    } finally {
      client.release(discard);
    }
  }
}

/**
 * Store calls inside transaction(), all on its one connection. Calls run one at a time in the
 * order made (a connection runs one statement at a time anyway, and a savepoint must not
 * interleave with another call's statements), each write in a savepoint.
 */
class TransactionExecutor implements Executor {
  private tail: Promise<unknown> = Promise.resolve();
  private locked = false;
  private finished = false;
  wroteChanges = false;

  constructor(private readonly client: pg.PoolClient) {}

  read<R extends pg.QueryResultRow>(what: string, text: string, values?: unknown[]): Promise<R[]> {
    return this.serial(async () => {
      try {
        return (await this.client.query<R>(text, values)).rows;
      } catch (err) {
        throw mapError(err, what);
      }
    });
  }

  write<T>(what: string, options: WriteOptions, fn: (q: Queryable) => Promise<T>): Promise<T> {
    return this.serial(async () => {
      try {
        // Taken at transaction level, not in the savepoint, and kept until the end (see the header).
        if (options.changes && !this.locked) {
          await this.client.query(LOCK_SQL);
          this.locked = true;
        }
        await this.client.query('SAVEPOINT agentid_write');
        let result: T;
        try {
          result = await fn(this.client);
        } catch (err) {
          if (!isBrokenConnection(err)) await this.client.query('ROLLBACK TO SAVEPOINT agentid_write');
          throw err;
        }
        await this.client.query('RELEASE SAVEPOINT agentid_write');
        if (options.changes) this.wroteChanges = true;
        return result;
      } catch (err) {
        throw mapError(err, what);
      }
    });
  }

  /** Waits for calls still running (a callback may have forgotten to await one), then refuses more. */
  async finish(): Promise<void> {
    await this.tail;
    this.finished = true;
  }

  abandon(): void {
    this.finished = true;
  }

  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.tail.then(() => {
      if (this.finished) throw failedPrecondition('datastore: transaction already finished');
      return fn();
    });
    this.tail = run.catch(() => undefined);
    return run;
  }
}

/**
 * The dedicated LISTEN connection. It reconnects with exponential backoff (with jitter, so servers
 * that lost the database together do not reconnect in lockstep); after every (re)connect it wakes
 * the readers once, because notifications sent while it was away are gone.
 */
class ChangeNotifications {
  private client: pg.Client | undefined;
  private timer: NodeJS.Timeout | undefined;
  private failures = 0;
  private stopped = false;
  private readonly given = new WeakSet<pg.Client>();

  constructor(
    private readonly config: pg.ClientConfig,
    private readonly wake: () => void,
    private readonly logger: Logger,
    private readonly target: { host: string; database: string },
  ) {}

  start(): void {
    void this.connect();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    const client = this.client;
    this.client = undefined;
    if (client) {
      this.given.add(client);
      await client.end().catch(() => undefined);
    }
  }

  private async connect(): Promise<void> {
    if (this.stopped) return;
    const client = new pg.Client({ ...this.config, application_name: 'agentid-listen' });
    client.on('error', (err) => this.lost(client, err));
    client.on('end', () => this.lost(client, undefined));
    client.on('notification', () => this.wake());
    try {
      await client.connect();
      await client.query(`LISTEN ${CHANGE_CHANNEL}`);
    } catch (err) {
      this.lost(client, err);
      return;
    }
    if (this.stopped) {
      this.given.add(client);
      await client.end().catch(() => undefined);
      return;
    }
    this.client = client;
    if (this.failures > 0) this.logger.info({ ...this.target }, 'datastore: change notifications restored');
    this.failures = 0;
    this.wake();
  }

  private lost(client: pg.Client, err: unknown): void {
    if (this.given.has(client)) return;
    this.given.add(client);
    if (this.client === client) this.client = undefined;
    client.end().catch(() => undefined);
    if (this.stopped) return;
    const ceiling = Math.min(LISTEN_BACKOFF_MAX_MS, LISTEN_BACKOFF_MIN_MS * 2 ** this.failures);
    const delayMs = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
    this.failures += 1;
    const code = (err as { code?: unknown } | undefined)?.code;
    this.logger.warn(
      { ...this.target, code: typeof code === 'string' ? code : undefined, retryInMs: delayMs },
      'datastore: change notifications lost; reconnecting',
    );
    this.timer = setTimeout(() => void this.connect(), delayMs);
    this.timer.unref();
  }
}

class PgChangeFeed implements ChangeFeed {
  private readonly listeners = new Set<() => void>();
  private notifications: ChangeNotifications | undefined;

  constructor(
    private readonly x: Executor,
    private readonly makeNotifications: (wake: () => void) => ChangeNotifications,
    private readonly logger: Logger,
    private readonly isClosed: () => boolean,
  ) {}

  async since(after: number, limit = 1000): Promise<Change[]> {
    return this.x.read<Change>(
      'read changes',
      'SELECT revision, resource, key FROM changes WHERE revision > $1 ORDER BY revision LIMIT $2',
      [after, limit],
    );
  }

  /**
   * The newest committed revision. Rows may all be pruned, and a rolled-back writer's drawn
   * revision is never committed, so neither the identity sequence nor MAX(revision) alone is the
   * head: prune() records the highest revision it dropped (PRUNED_ANCHOR), in its transaction.
   */
  async head(): Promise<number> {
    const rows = await this.x.read<{ head: number }>(
      'read change head',
      `SELECT GREATEST(COALESCE((SELECT MAX(revision) FROM changes), 0),
                       COALESCE((SELECT value::bigint FROM anchors WHERE name = $1), 0)) AS head`,
      [PRUNED_ANCHOR],
    );
    return rows[0]?.head ?? 0;
  }

  watch(listener: () => void): () => void {
    this.listeners.add(listener);
    if (!this.notifications && !this.isClosed()) {
      this.notifications = this.makeNotifications(() => this.wake());
      this.notifications.start();
    }
    return () => {
      this.listeners.delete(listener);
    };
  }

  async prune(beforeRevision: number): Promise<number> {
    return this.x.write('prune changes', { changes: false }, async (q) => {
      const { rows } = await q.query<{ n: number; top: number | null }>(
        `WITH gone AS (DELETE FROM changes WHERE revision < $1 RETURNING revision)
         SELECT COUNT(*) AS n, MAX(revision) AS top FROM gone`,
        [beforeRevision],
      );
      const top = rows[0]?.top ?? null;
      if (top !== null) {
        await q.query(
          `INSERT INTO anchors (name, value) VALUES ($1, $2)
           ON CONFLICT (name) DO UPDATE SET value = GREATEST(anchors.value::bigint, excluded.value::bigint)::text`,
          [PRUNED_ANCHOR, String(top)],
        );
      }
      return rows[0]?.n ?? 0;
    });
  }

  wake(): void {
    for (const listener of [...this.listeners]) {
      try {
        listener();
      } catch (err) {
        this.logger.error({ err }, 'datastore: change listener failed');
      }
    }
  }

  async close(): Promise<void> {
    this.listeners.clear();
    await this.notifications?.stop();
  }
}

class PostgresDatastore implements Datastore {
  readonly kind = 'postgresql' as const;
  readonly entries: EntryStore;
  readonly tasks: TaskStore;
  readonly revocations: RevocationStore;
  readonly issuances: IssuanceStore;
  readonly authorities: AuthorityStore;
  readonly anchors: AnchorStore;
  readonly nodes: NodeStore;
  readonly joinTokens: JoinTokenStore;
  readonly changes: PgChangeFeed;
  private readonly x: PoolExecutor;
  private closed = false;
  /** Tail of this process's transactions: they run one at a time (see transaction()). */
  private transactions: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly pool: pg.Pool,
    clientConfig: pg.ClientConfig,
    logger: Logger,
    target: { host: string; database: string },
  ) {
    this.x = new PoolExecutor(pool, () => this.closed, () => this.changes.wake());
    this.changes = new PgChangeFeed(
      this.x,
      (wake) => new ChangeNotifications(clientConfig, wake, logger, target),
      logger,
      () => this.closed,
    );
    ({
      entries: this.entries,
      tasks: this.tasks,
      revocations: this.revocations,
      issuances: this.issuances,
      authorities: this.authorities,
      anchors: this.anchors,
      nodes: this.nodes,
      joinTokens: this.joinTokens,
    } = new PgStores(this.x));
  }

  /**
   * Transactions of one process run one at a time, as with SQLite, so a read-modify-write inside
   * one never races another from the same server. Between servers, PostgreSQL's locks apply: the
   * change lock for change-writing transactions, row locks otherwise (READ COMMITTED).
   */
  transaction<T>(fn: (tx: Stores) => Promise<T>): Promise<T> {
    const run = this.transactions.then(() => this.runTransaction(fn));
    this.transactions = run.catch(() => undefined);
    return run;
  }

  private async runTransaction<T>(fn: (tx: Stores) => Promise<T>): Promise<T> {
    const client = await connect(this.pool, () => this.closed, 'transaction');
    const tx = new TransactionExecutor(client);
    let discard: Error | undefined;
    try {
      await client.query('BEGIN');
      const result = await fn(new PgStores(tx));
      await tx.finish();
      await client.query('COMMIT');
      if (tx.wroteChanges) this.changes.wake();
      return result;
    } catch (err) {
      tx.abandon();
      discard = await rollback(client, err);
      throw mapError(err, 'transaction');
    } finally {
      client.release(discard);
    }
  }

  async ping(): Promise<void> {
    await this.x.read('ping', 'SELECT 1');
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.changes.close();
    await this.pool.end();
  }
}

/** Refusals that retrying will not fix (credentials, a missing database, privileges) are configuration errors. */
const MISCONFIGURED: Readonly<Record<string, string>> = {
  '28P01': 'the server refused the credentials',
  '28000': 'the server refused the connection (pg_hba.conf)',
  '3D000': 'the database does not exist',
  '42501': 'the user may not create or change the tables (grant CREATE on the schema, or run the first start as the owner)',
};

function openError(err: unknown, target: { host: string; database: string }): unknown {
  const where = `PostgreSQL database ${target.database} on ${target.host}`;
  const state = sqlState(err);
  const problem = state === undefined ? undefined : MISCONFIGURED[state];
  if (problem !== undefined) return failedPrecondition(`datastore: cannot open ${where}: ${problem} (${state})`, err);
  return mapError(err, `open ${where}`);
}

/**
 * Opens a pool on `url` (postgresql://user:password@host:port/db, or postgresql:///db?host=/socket/dir)
 * and brings the schema to the current version. The URL is never logged, only host and database.
 */
export async function openPostgresDatastore(url: string, opts: PostgresDatastoreOptions = {}): Promise<Datastore> {
  const logger = opts.logger ?? silentLogger();
  const target = describePostgresUrl(url);
  const clientConfig: pg.ClientConfig = {
    connectionString: url,
    connectionTimeoutMillis: opts.connectTimeoutMs ?? 5_000,
    statement_timeout: opts.statementTimeoutMs ?? 30_000,
    idle_in_transaction_session_timeout: opts.idleInTransactionTimeoutMs ?? 60_000,
    application_name: 'agentid',
    types: typeParsers,
    keepAlive: true,
  };
  const pool = new pg.Pool({ ...clientConfig, max: opts.poolSize ?? 10, idleTimeoutMillis: 30_000 });
  const connectionLost = (err: Error) => {
    const code = (err as { code?: unknown }).code;
    logger.warn({ ...target, code: typeof code === 'string' ? code : undefined }, 'datastore: connection lost');
  };
  // Every pooled connection reports its loss on itself (without a listener that event would crash
  // the process); the pool drops it if idle, else the call using it fails with `unavailable`.
  pool.on('connect', (client) => client.on('error', connectionLost));
  // The pool repeats an idle connection's error on itself; already logged above.
  pool.on('error', () => undefined);
  try {
    const client = await pool.connect();
    try {
      const { from, to } = await applyPostgresMigrations(client, { logger });
      logger.debug({ ...target, from, to }, 'datastore: opened');
    } finally {
      client.release();
    }
  } catch (err) {
    await pool.end().catch(() => undefined);
    throw openError(err, target);
  }
  return new PostgresDatastore(pool, clientConfig, logger, target);
}
