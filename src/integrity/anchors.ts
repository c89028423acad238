import { createHash, randomUUID } from 'node:crypto';
import { closeSync, constants, existsSync, fsyncSync, lstatSync, openSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { failedPrecondition, invalidArgument } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { auditLines, parseAuditLine } from '../audit/read.js';

/** What an operator may explicitly accept as lost or replaced (`agentid server --recover=...`). */
export const RECOVERABLE = ['database', 'ca', 'audit'] as const;
export type Component = (typeof RECOVERABLE)[number];

export function parseRecover(values: readonly string[]): Set<Component> {
  const out = new Set<Component>();
  for (const v of values.flatMap((x) => x.split(',')).map((x) => x.trim()).filter(Boolean)) {
    if (!(RECOVERABLE as readonly string[]).includes(v)) throw invalidArgument(`--recover "${v}": must be one of ${RECOVERABLE.join(', ')}`);
    out.add(v as Component);
  }
  return out;
}

/**
 * The anchors, as kept in the marker file and (the same fields) in the database. Each run
 * increments `generation`; the audit head is the trail's last record when the anchors were written.
 */
interface Anchors {
  version: 1;
  /** Random identity of this database, made when it was first anchored. */
  dbId: string;
  generation: number;
  /** SHA-256 (hex) of the DER of each root in the X.509 bundle. */
  caRoots: string[];
  auditSeq: number;
  auditHash: string;
}

export interface IntegrityPaths {
  dataDir: string;
  /**
   * The SQLite file; null when the datastore is not a local file (PostgreSQL, shared by several
   * servers): the database part is then not anchored, only the CA and the audit trail are.
   */
  dbFile: string | null;
  caDir: string;
  auditFile: string;
}

export interface Recovery {
  component: Component;
  reason: string;
}

export const MARKER_FILE = 'integrity.json';
const TABLE = 'integrity_anchor';

/**
 * Ties the database, the CA directory and the audit trail together so that losing, replacing or
 * rolling back one of them stops the server instead of starting it with a silently smaller state
 * (an empty deny list, a new root, a new audit chain). The same anchors live in two places:
 * `<data-dir>/integrity.json` and a one-row table in the database; and the audit trail records
 * the database identity in each `server.started`.
 *
 * - database: its identity must be the marker's, its generation the marker's (or one ahead: a crash
 *   between the two writes), never behind (a restored older copy);
 * - ca/: must exist when the marker does, and share at least one root with the marker's list
 *   (rotation adds a root before it retires the old one);
 * - audit: must exist when the marker does, and its chain must pass the anchored head (seq and
 *   hash of that record): an emptied, truncated or replaced trail does not;
 * - marker: missing while the database holds anchors is itself a finding.
 * Each finding stops the start with a message naming the missing or replaced part, unless the
 * operator passes --recover=<part>; the recovery is then recorded in the audit trail.
 *
 * Granularity: anchors are rewritten at start, periodically and at stop, so a database restored
 * from a copy taken after the last rewrite is not detected.
 */
export class IntegrityAnchors {
  private marker: Anchors | undefined;
  private readonly recoveries: Recovery[] = [];

  private constructor(
    private readonly paths: IntegrityPaths,
    private readonly recover: ReadonlySet<Component>,
    private readonly logger: Logger,
  ) {}

  /**
   * Before anything opens (and so creates) the database, the CA or the audit file: checks the
   * parts the marker says exist are still there.
   */
  static beforeOpen(paths: IntegrityPaths, recover: ReadonlySet<Component>, logger: Logger): IntegrityAnchors {
    const self = new IntegrityAnchors(paths, recover, logger);
    self.marker = readMarker(join(paths.dataDir, MARKER_FILE));
    if (paths.dbFile === null) logger.warn('integrity: the datastore is not a local file; only the CA and the audit trail are anchored');
    if (self.marker) {
      if (paths.dbFile !== null && !existsSync(paths.dbFile)) self.finding('database', `the database ${paths.dbFile} is missing`);
      if (!existsSync(paths.caDir)) self.finding('ca', `the CA directory ${paths.caDir} is missing`);
      if (!existsSync(paths.auditFile)) self.finding('audit', `the audit trail ${paths.auditFile} is missing`);
    }
    return self;
  }

  /** After the parts are open: compares them with the anchors. Returns what was recovered (to audit). */
  verify(state: { caRoots: readonly Buffer[]; auditHead: { seq: number; hash: string } }): Recovery[] {
    const inDb = readDbAnchors(this.paths.dbFile);
    const roots = state.caRoots.map(fingerprint);
    const marker = this.marker;
    if (!marker) {
      if (inDb) this.finding('database', `the integrity marker ${join(this.paths.dataDir, MARKER_FILE)} is missing while the database holds anchors (generation ${inDb.generation})`);
      else if (state.auditHead.seq > 0 || existsSync(join(this.paths.caDir))) {
        this.logger.warn({ dataDir: this.paths.dataDir }, 'integrity: anchoring an existing data directory for the first time');
      }
      return [...this.recoveries];
    }
    if (this.paths.dbFile === null) {
      // Nothing to compare: see IntegrityPaths.dbFile.
    } else if (!inDb) this.finding('database', `the database ${this.paths.dbFile} is not the anchored one (it has no anchors: new or replaced)`);
    else if (inDb.dbId !== marker.dbId) this.finding('database', `the database ${this.paths.dbFile} was replaced (identity ${inDb.dbId}, expected ${marker.dbId})`);
    else if (inDb.generation < marker.generation) this.finding('database', `the database ${this.paths.dbFile} was rolled back (generation ${inDb.generation}, expected ${marker.generation})`);
    else if (inDb.generation > marker.generation + 1) this.finding('database', `the integrity marker is older than the database (generation ${marker.generation}, database ${inDb.generation}): restored from a backup?`);

    if (!roots.some((r) => marker.caRoots.includes(r))) this.finding('ca', `the CA in ${this.paths.caDir} was replaced (none of its roots is an anchored one)`);

    const head = state.auditHead;
    if (head.seq < marker.auditSeq) {
      this.finding('audit', `the audit trail ${this.paths.auditFile} was truncated or replaced (it ends at record ${head.seq}, the anchor is record ${marker.auditSeq})`);
    } else if (marker.auditSeq > 0 && hashAt(this.paths.auditFile, marker.auditSeq, head) !== marker.auditHash) {
      this.finding('audit', `the audit trail ${this.paths.auditFile} was replaced (record ${marker.auditSeq} is not the anchored one)`);
    }
    return [...this.recoveries];
  }

  /** The database's identity (for the audit trail); after verify. */
  dbId(): string {
    return readDbAnchors(this.paths.dbFile)?.dbId ?? this.marker?.dbId ?? 'unanchored';
  }

  /**
   * Writes fresh anchors: database first, then the marker (a crash in between leaves the database one
   * generation ahead, which the next start accepts). Call with the audit trail flushed.
   */
  write(state: { caRoots: readonly Buffer[]; auditHead: { seq: number; hash: string } }): void {
    const inDb = readDbAnchors(this.paths.dbFile);
    const recoveredDb = this.recoveries.some((r) => r.component === 'database');
    const dbId = inDb && (!this.marker || inDb.dbId === this.marker.dbId || recoveredDb) ? inDb.dbId : recoveredDb || !this.marker ? randomUUID() : this.marker.dbId;
    const anchors: Anchors = {
      version: 1,
      dbId,
      generation: Math.max(inDb?.generation ?? 0, this.marker?.generation ?? 0) + 1,
      caRoots: state.caRoots.map(fingerprint),
      auditSeq: state.auditHead.seq,
      auditHash: state.auditHead.hash,
    };
    writeDbAnchors(this.paths.dbFile, anchors);
    writeFileAtomic(join(this.paths.dataDir, MARKER_FILE), `${JSON.stringify(anchors)}\n`);
    this.marker = anchors;
  }

  private finding(component: Component, problem: string): void {
    // One recovery per part: a missing database is also an unanchored one.
    if (this.recoveries.some((r) => r.component === component)) return;
    if (!this.recover.has(component)) {
      throw failedPrecondition(
        `integrity: ${problem}. agentid will not start with lost or replaced state; restore it, or accept the loss with --recover=${component} (recorded in the audit trail)`,
      );
    }
    this.logger.warn({ component, problem }, 'integrity: recovering by operator request');
    this.recoveries.push({ component, reason: problem });
  }
}

const fingerprint = (der: Buffer) => createHash('sha256').update(der).digest('hex');

function readMarker(file: string): Anchors | undefined {
  let text: string;
  try {
    if (lstatSync(file).isSymbolicLink()) throw failedPrecondition(`integrity: ${file} is a symbolic link`);
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  try {
    const value = JSON.parse(text) as Anchors;
    if (value.version !== 1 || typeof value.dbId !== 'string' || !Array.isArray(value.caRoots)) throw new Error('bad shape');
    return value;
  } catch {
    throw failedPrecondition(`integrity: ${file} is damaged (not the JSON agentid writes); restore it from a backup`);
  }
}

/** The database anchors, read over a connection of our own (the datastore stays as it is). */
function readDbAnchors(dbFile: string | null): Anchors | undefined {
  if (dbFile === null || !existsSync(dbFile)) return undefined;
  const db = new BetterSqlite3(dbFile, { fileMustExist: true });
  try {
    const row = db.prepare(`SELECT value FROM ${TABLE} WHERE id = 1`).get() as { value: string } | undefined;
    return row ? (JSON.parse(row.value) as Anchors) : undefined;
  } catch {
    return undefined; // no table: a database from before the migration, or not ours
  } finally {
    db.close();
  }
}

function writeDbAnchors(dbFile: string | null, anchors: Anchors): void {
  if (dbFile === null) return;
  const db = new BetterSqlite3(dbFile, { fileMustExist: true });
  try {
    db.pragma('busy_timeout = 5000');
    db.pragma('synchronous = FULL');
    db.prepare(`INSERT INTO ${TABLE} (id, value) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET value = excluded.value`).run(JSON.stringify(anchors));
  } finally {
    db.close();
  }
}

/** hash of record `seq` of the trail: the head itself when it is that record, else read from the file. */
function hashAt(file: string, seq: number, head: { seq: number; hash: string }): string | undefined {
  if (head.seq === seq) return head.hash;
  // Only a line that spells the field as the writer does is parsed and its hash recomputed: a
  // start after a crash read every record of a long trail that way (seconds before the socket
  // appeared). A line that writes the number otherwise (`5.0`, a space) is not the anchored one
  // as written, so the trail is reported as replaced: fail closed.
  const spelled = new RegExp(`"seq":${seq}(?![0-9.eE])`);
  for (const line of auditLines(file)) {
    if (!spelled.test(line.text)) continue;
    const parsed = parseAuditLine(line.text);
    if ('record' in parsed && parsed.record.seq === seq) return parsed.record.hash;
  }
  return undefined;
}

function writeFileAtomic(file: string, text: string): void {
  const tmp = join(dirname(file), `.${MARKER_FILE}.${process.pid}.tmp`);
  rmSync(tmp, { force: true });
  const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
  try {
    writeSync(fd, text);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
  const dirFd = openSync(dirname(file), constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    fsyncSync(dirFd);
  } finally {
    closeSync(dirFd);
  }
}
