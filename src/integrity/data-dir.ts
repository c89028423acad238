import { lstatSync, realpathSync } from 'node:fs';
import { isAbsolute, resolve, sep } from 'node:path';
import { failedPrecondition } from '../common/errors.js';

const STICKY = 0o1000;

/** "/a/b/c" -> ["/", "/a", "/a/b", "/a/b/c"] */
function prefixes(path: string): string[] {
  const out = ['/'];
  let current = '';
  for (const part of path.split(sep).filter(Boolean)) {
    current += `${sep}${part}`;
    out.push(current);
  }
  return out;
}

/**
 * Refuses a data directory that another user could redirect: every directory on the way to it
 * (as given, and through every symbolic link on the way, resolved once) must be owned by root or
 * by the server's uid and not writable by group or others, unless it is sticky (as /tmp is: others
 * may not rename or remove what they do not own). A symbolic link is followed only from such a
 * directory, so no other user can re-point it after this check. Missing directories are the
 * server's to create (mkdir with 0700) and are checked again once they exist.
 */
export function assertSafeDataDirPath(dataDir: string, serverUid: number | undefined = process.getuid?.()): void {
  if (serverUid === undefined) return; // not a Unix host
  const given = isAbsolute(dataDir) ? dataDir : resolve(dataDir);
  const checked = new Set<string>();
  const check = (dir: string) => {
    if (checked.has(dir)) return;
    checked.add(dir);
    let st;
    try {
      st = lstatSync(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw failedPrecondition(`data directory ${dataDir}: cannot inspect ${dir}`, err);
    }
    if (st.isSymbolicLink()) return; // its target is checked below, its parent already was
    if (!st.isDirectory()) throw failedPrecondition(`data directory ${dataDir}: ${dir} is not a directory`);
    if (st.uid !== 0 && st.uid !== serverUid) {
      throw failedPrecondition(`data directory ${dataDir}: ${dir} is owned by uid ${st.uid}, neither root nor the server's uid ${serverUid}; that user could redirect the data directory`);
    }
    if ((st.mode & 0o022) !== 0 && (st.mode & STICKY) === 0) {
      throw failedPrecondition(`data directory ${dataDir}: ${dir} is writable by group or others (mode 0${(st.mode & 0o777).toString(8)}) without the sticky bit; they could redirect the data directory`);
    }
  };
  for (const prefix of prefixes(given)) {
    check(prefix);
    let real: string;
    try {
      real = realpathSync(prefix);
    } catch {
      break; // the rest does not exist yet
    }
    // Through a link: the directories of its target, down from the root.
    if (real !== prefix) for (const p of prefixes(real)) check(p);
  }
}
