import { chmodSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { dirname, join } from 'node:path';
import { failedPrecondition } from '../common/errors.js';
import { assertSafeDataDirPath } from '../integrity/data-dir.js';

const LOCK_FILE = 'server.pid';
const SERVER_ID_FILE = 'server-id';

/**
 * The data directory is 0700, except that a Workload API socket inside it needs others to be able
 * to reach it: then it is 0711 (others may open a path they know, never list or read). Keys stay
 * 0600 inside the 0700 ca/ directory, the database and audit log are 0600.
 */
export function ensureDataDir(dir: string, workloadSocket: string): void {
  assertSafeDataDirPath(dir);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  assertSafeDataDirPath(dir);
  const st = statSync(dir);
  if (st.uid !== process.getuid!()) throw failedPrecondition(`data directory ${dir} is owned by uid ${st.uid}, not by the server's uid`);
  const mode = dirname(workloadSocket) === dir ? 0o711 : 0o700;
  if ((st.mode & 0o777) !== mode) chmodSync(dir, mode);
}

/** The pid of a live agentid server using this data directory, if any. */
export function runningServerPid(dataDir: string): number | undefined {
  try {
    const pid = Number(readFileSync(join(dataDir, LOCK_FILE), 'utf8').trim());
    if (!Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid) return undefined;
    process.kill(pid, 0);
    return pid;
  } catch {
    return undefined;
  }
}

/** Claims the data directory (offline CLI commands read it to leave CA rotation alone). */
export function writeLock(dataDir: string): { close(): void } {
  writeFileSync(join(dataDir, LOCK_FILE), `${process.pid}\n`, { mode: 0o600 });
  return { close: () => rmSync(join(dataDir, LOCK_FILE), { force: true }) };
}

/**
 * This server's stable name among the servers sharing a datastore: created once per data directory
 * (host name plus a random suffix, so two servers on one host differ), then kept.
 */
export function serverId(dataDir: string): string {
  const file = join(dataDir, SERVER_ID_FILE);
  try {
    const id = readFileSync(file, 'utf8').trim();
    if (/^[A-Za-z0-9._-]{1,128}$/.test(id)) return id;
    throw failedPrecondition(`${file} does not hold a valid server name`);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const host = hostname().replace(/[^A-Za-z0-9.-]/g, '-').slice(0, 60) || 'server';
  const id = `${host}-${randomBytes(3).toString('hex')}`;
  writeFileSync(file, `${id}\n`, { mode: 0o600, flag: 'wx' });
  return id;
}
