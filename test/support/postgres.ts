import { execFile, execFileSync } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';

/*
 * A throwaway PostgreSQL cluster for tests: Debian's server binaries, `initdb` into a temporary
 * directory, a postmaster that listens on a Unix socket in that directory only (no TCP port, so
 * clusters of parallel test files never collide), stopped and deleted by stop(). Nothing here
 * assumes a database service is installed as a service or running.
 *
 * PostgreSQL refuses to run as root, and CI runs as root: the server then runs as an unprivileged
 * user (created on first use) that owns the temporary directory. Test code connects as the
 * cluster's superuser over the socket with trust authentication; root can reach the socket whatever
 * its directory's mode, a non-root developer is the cluster's owner.
 */

const run = promisify(execFile);

export const PG_TEST_USER = 'agentid-pg';
const SUPERUSER = 'postgres';

/** Directory of initdb/pg_ctl: the newest installed major version, or undefined when absent. */
export function postgresBinDir(): string | undefined {
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return undefined;
  const versions = readdirSync(root)
    .filter((v) => existsSync(join(root, v, 'bin', 'initdb')))
    .sort((a, b) => Number(b) - Number(a));
  return versions[0] === undefined ? undefined : join(root, versions[0], 'bin');
}

interface RunAs {
  uid: number;
  gid: number;
  /** Prefix that runs a command as the cluster owner ([] when we already are an ordinary user). */
  prefix: string[];
}

function ensureUser(): RunAs {
  const self = process.getuid?.() ?? 0;
  if (self !== 0) return { uid: self, gid: process.getgid?.() ?? self, prefix: [] };
  const lookup = (): { uid: number; gid: number } | undefined => {
    try {
      const uid = Number(execFileSync('id', ['-u', PG_TEST_USER], { stdio: ['ignore', 'pipe', 'ignore'] }).toString());
      const gid = Number(execFileSync('id', ['-g', PG_TEST_USER], { stdio: ['ignore', 'pipe', 'ignore'] }).toString());
      return { uid, gid };
    } catch {
      return undefined;
    }
  };
  let ids = lookup();
  if (!ids) {
    try {
      execFileSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', PG_TEST_USER], {
        stdio: ['ignore', 'ignore', 'pipe'],
      });
    } catch (err) {
      // Another test file may have created it at the same moment (useradd then fails on the lock
      // or on the existing name): what matters is that the user exists now.
      if (!lookup()) throw err;
    }
    ids = lookup();
    if (!ids) throw new Error(`test postgres: could not create user ${PG_TEST_USER}`);
  }
  return { ...ids, prefix: ['setpriv', `--reuid=${ids.uid}`, `--regid=${ids.gid}`, '--clear-groups', '--'] };
}

export interface PostgresCluster {
  /** Directory of the server's Unix socket. */
  readonly socketDir: string;
  /** Connection URL of a database on this cluster (Unix socket form). */
  url(database: string): string;
  /** Creates an empty database (with a linguistic, not binary, default collation) and returns its URL. */
  createDatabase(name: string): Promise<string>;
  /**
   * A fresh schema in `database` (created with createDatabase's collation on first use), as a URL
   * whose search_path is that schema: tables land there. Much faster than a database per test
   * (tens of milliseconds instead of most of a second); advisory locks and NOTIFY channels are
   * per database, so schemas of one database suit tests that run one after another.
   */
  createSchema(database: string, schema: string): Promise<string>;
  /** Runs one statement as the superuser against `database` (terminating backends, inspecting locks). */
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(database: string, sql: string, values?: unknown[]): Promise<R[]>;
  /** Fast shutdown (disconnects every client); the data stays for start(). */
  pause(): Promise<void>;
  /** Starts it again after pause(). */
  start(): Promise<void>;
  /** Stops the server and deletes its files. */
  stop(): Promise<void>;
}

/** Initializes and starts a cluster. Fails clearly when the packages are missing. */
export async function startPostgresCluster(): Promise<PostgresCluster> {
  const bin = postgresBinDir();
  if (!bin) throw new Error('test postgres: /usr/lib/postgresql/*/bin/initdb not found; apt-get install postgresql');
  const owner = ensureUser();
  const root = mkdtempSync(join(tmpdir(), 'agentid-pg-'));
  if (owner.prefix.length > 0) chownSync(root, owner.uid, owner.gid);
  const data = join(root, 'data');
  const logFile = join(root, 'server.log');
  const command = (cmd: string, args: string[]): [string, string[]] => {
    const full = [...owner.prefix, join(bin, cmd), ...args];
    return [full[0]!, full.slice(1)];
  };
  const env = { ...process.env, LC_ALL: 'C.UTF-8', PGTZ: 'UTC' };
  const asOwner = (cmd: string, args: string[]) => run(...command(cmd, args), { cwd: root, env });

  const serverOptions = [
    "-c listen_addresses=''",
    `-c unix_socket_directories=${root}`,
    // Test data is thrown away: skip the flushes that make a crash-safe server slow.
    '-c fsync=off',
    '-c synchronous_commit=off',
    '-c full_page_writes=off',
    '-c shared_buffers=16MB',
    '-c max_connections=60',
  ].join(' ');
  const pgCtl = (...args: string[]) => asOwner('pg_ctl', ['-D', data, ...args]);
  const serverLog = () => {
    try {
      return readFileSync(logFile, 'utf8').split('\n').slice(-20).join('\n');
    } catch {
      return '';
    }
  };

  let running = false;
  const start = async () => {
    try {
      await pgCtl('-l', logFile, '-o', serverOptions, '-w', '-t', '60', 'start');
    } catch (err) {
      throw new Error(`test postgres: server did not start:\n${serverLog()}`, { cause: err });
    }
    running = true;
  };
  const pause = async () => {
    if (!running) return;
    await pgCtl('-m', 'fast', '-w', 'stop');
    running = false;
  };
  // A worker that exits without stop() (a crashed test run) must not leave a server behind.
  const onExit = () => {
    if (!running) return;
    try {
      execFileSync(...command('pg_ctl', ['-D', data, '-m', 'immediate', 'stop']), { cwd: root, env, stdio: 'ignore' });
    } catch {
      // best effort at exit
    }
    rmSync(root, { recursive: true, force: true });
  };
  process.once('exit', onExit);

  try {
    await asOwner('initdb', ['-D', data, '-U', SUPERUSER, '--auth=trust', '--encoding=UTF8', '--locale=C.UTF-8', '--no-sync']);
    await start();
  } catch (err) {
    process.removeListener('exit', onExit);
    rmSync(root, { recursive: true, force: true });
    throw err;
  }

  /** Databases made by createSchema, so each is created once however many schemas are asked for at once. */
  const databases = new Map<string, Promise<string>>();
  const url = (database: string) =>
    `postgresql:///${encodeURIComponent(database)}?host=${encodeURIComponent(root)}&user=${SUPERUSER}`;
  const query = async <R extends pg.QueryResultRow>(database: string, sql: string, values?: unknown[]) => {
    const client = new pg.Client({ connectionString: url(database) });
    await client.connect();
    try {
      return (await client.query<R>(sql, values)).rows;
    } finally {
      await client.end();
    }
  };
  const createDatabase = async (name: string) => {
    if (!/^[a-z_][a-z0-9_]*$/.test(name)) throw new Error(`test postgres: database name ${name} is not a plain identifier`);
    // ICU's en-US collation sorts 'B' after 'a' and ignores '_': any ORDER BY that forgets
    // COLLATE "C" gives a different order than SQLite and memory, and the conformance suite sees it.
    await query('postgres', `CREATE DATABASE ${name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'`);
    return url(name);
  };

  return {
    socketDir: root,
    url,
    createDatabase,
    async createSchema(database, schema) {
      if (!/^[a-z_][a-z0-9_]*$/.test(schema)) throw new Error(`test postgres: schema name ${schema} is not a plain identifier`);
      if (!databases.has(database)) databases.set(database, createDatabase(database));
      await databases.get(database);
      await query(database, `CREATE SCHEMA ${schema}`);
      return `${url(database)}&options=${encodeURIComponent(`-c search_path=${schema}`)}`;
    },
    query,
    pause,
    start,
    async stop() {
      try {
        await pause();
      } finally {
        process.removeListener('exit', onExit);
        rmSync(root, { recursive: true, force: true });
      }
    },
  };
}
