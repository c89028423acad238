import { randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { lstat, mkdir, open, rename, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { failedPrecondition, internal, isAgentIdError } from '../common/errors.js';
import { SigningKey } from './keys.js';
import { toPem } from '../common/der.js';

/*
 * Key material on disk: directories 0700, key files 0600, every write atomic (temp file in the
 * same directory, fsync, rename, fsync the directory) so a crash leaves the old or the new file,
 * never a torn one. Loading refuses files or directories that other users could read or change,
 * that another uid owns (its owner could change them at will), or that are symbolic links (a link
 * could point anywhere, and be re-pointed between a check and a use).
 */

const serverUid = (): number | undefined => process.getuid?.();

export const DIR_MODE = 0o700;
export const KEY_FILE_MODE = 0o600;
export const PUBLIC_FILE_MODE = 0o644;

const octal = (mode: number): string => `0${(mode & 0o777).toString(8).padStart(3, '0')}`;

/**
 * Creates `dir` (and parents) with mode 0700 if missing; refuses one that group or others can write.
 * `keys`: the directory holds private keys, so it must be exactly private (no access for group or others).
 */
export async function ensurePrivateDir(dir: string, keys = false): Promise<void> {
  await mkdir(dir, { recursive: true, mode: DIR_MODE });
  await checkDirSafe(dir, keys);
}

export async function checkDirSafe(dir: string, keys = false): Promise<void> {
  let st;
  try {
    st = await lstat(dir);
  } catch (err) {
    throw failedPrecondition(`directory ${dir} cannot be read`, err);
  }
  if (st.isSymbolicLink()) throw failedPrecondition(`${dir} is a symbolic link; it must be a directory`);
  if (!st.isDirectory()) throw failedPrecondition(`${dir} must be a directory`);
  const uid = serverUid();
  if (uid !== undefined && st.uid !== uid) {
    throw failedPrecondition(`directory ${dir} is owned by uid ${st.uid}, not by the server's uid ${uid} (chown it)`);
  }
  if (keys && (st.mode & 0o077) !== 0) {
    throw failedPrecondition(`key directory ${dir} is open to group or others (mode ${octal(st.mode)}); it must be 0700 (chmod 700 ${dir})`);
  }
  if ((st.mode & 0o022) !== 0) {
    throw failedPrecondition(
      `directory ${dir} is writable by group or others (mode ${octal(st.mode)}); it must not be (chmod 700 ${dir})`,
    );
  }
}

/** Reads a file that holds a private key after checking nobody but the owner can read or change it. */
export async function readPrivateFile(path: string): Promise<Buffer> {
  let handle;
  try {
    // O_NOFOLLOW: the checks below are on the file actually read, never on a link's target.
    handle = await open(path, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ELOOP') throw failedPrecondition(`key file ${path} is a symbolic link; it must be a regular file`, err);
    throw failedPrecondition(`key file ${path} cannot be read`, err);
  }
  try {
    const st = await handle.stat();
    if (!st.isFile()) throw failedPrecondition(`key file ${path} must be a regular file`);
    const uid = serverUid();
    if (uid !== undefined && st.uid !== uid) {
      throw failedPrecondition(`key file ${path} is owned by uid ${st.uid}, not by the server's uid ${uid} (chown it)`);
    }
    if ((st.mode & 0o077) !== 0) {
      throw failedPrecondition(
        `key file ${path} is readable or writable by group or others (mode ${octal(st.mode)}); it must be 0600 (chmod 600 ${path})`,
      );
    }
    return await handle.readFile();
  } catch (err) {
    if (isAgentIdError(err)) throw err;
    throw failedPrecondition(`key file ${path} cannot be read`, err);
  } finally {
    await handle.close();
  }
}

export async function readKeyFile(path: string, id: string): Promise<SigningKey> {
  const bytes = await readPrivateFile(path);
  try {
    return SigningKey.fromPrivateKeyBytes(bytes, id, `key file ${path}`);
  } finally {
    bytes.fill(0);
  }
}

/** Writes `data` to `path` atomically with exactly `mode`. */
export async function writeFileAtomic(path: string, data: Buffer | string, mode: number): Promise<void> {
  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.${randomBytes(6).toString('hex')}.tmp`);
  // O_EXCL: never write through a file (or symlink) someone else placed at the temp name.
  const handle = await open(tmp, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL, mode);
  let renamed = false;
  try {
    // The umask may have narrowed the mode; chmod makes it exact (and never wider than asked).
    await handle.chmod(mode);
    await handle.writeFile(data);
    await handle.sync();
    await handle.close();
    await rename(tmp, path);
    renamed = true;
    await fsyncDir(dir);
  } catch (err) {
    await handle.close().catch(() => undefined);
    if (!renamed) await unlink(tmp).catch(() => undefined);
    throw internal(`writing ${path} failed`, err);
  }
}

async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Writes the key as unencrypted PKCS#8 PEM, mode 0600. */
export async function writeKeyFile(path: string, key: SigningKey): Promise<void> {
  const pkcs8 = key.exportPkcs8().reveal();
  const pem = Buffer.from(toPem(pkcs8, 'PRIVATE KEY'), 'latin1');
  pkcs8.fill(0);
  try {
    await writeFileAtomic(path, pem, KEY_FILE_MODE);
  } finally {
    pem.fill(0);
  }
}

export async function removeIfExists(path: string): Promise<void> {
  await unlink(path).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw internal(`removing ${path} failed`, err);
  });
}
