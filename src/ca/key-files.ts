import { randomBytes } from 'node:crypto';
import { constants as fsConstants } from 'node:fs';
import { mkdir, open, readFile, rename, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { failedPrecondition, internal } from '../common/errors.js';
import { SigningKey } from './keys.js';
import { toPem } from '../common/der.js';

/*
 * Key material on disk: directories 0700, key files 0600, every write atomic (temp file in the
 * same directory, fsync, rename, fsync the directory) so a crash leaves the old or the new file,
 * never a torn one. Loading refuses files or directories that other users could read or change.
 */

export const DIR_MODE = 0o700;
export const KEY_FILE_MODE = 0o600;
export const PUBLIC_FILE_MODE = 0o644;

const octal = (mode: number): string => `0${(mode & 0o777).toString(8).padStart(3, '0')}`;

/** Creates `dir` (and parents) with mode 0700 if missing; refuses one that group or others can write. */
export async function ensurePrivateDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: DIR_MODE });
  await checkDirSafe(dir);
}

export async function checkDirSafe(dir: string): Promise<void> {
  let st;
  try {
    st = await stat(dir);
  } catch (err) {
    throw failedPrecondition(`directory ${dir} cannot be read`, err);
  }
  if (!st.isDirectory()) throw failedPrecondition(`${dir} must be a directory`);
  if ((st.mode & 0o022) !== 0) {
    throw failedPrecondition(
      `directory ${dir} is writable by group or others (mode ${octal(st.mode)}); it must not be (chmod 700 ${dir})`,
    );
  }
}

/** Reads a file that holds a private key after checking nobody but the owner can read or change it. */
export async function readPrivateFile(path: string): Promise<Buffer> {
  let st;
  try {
    st = await stat(path);
  } catch (err) {
    throw failedPrecondition(`key file ${path} cannot be read`, err);
  }
  if (!st.isFile()) throw failedPrecondition(`key file ${path} must be a regular file`);
  if ((st.mode & 0o077) !== 0) {
    throw failedPrecondition(
      `key file ${path} is readable or writable by group or others (mode ${octal(st.mode)}); it must be 0600 (chmod 600 ${path})`,
    );
  }
  try {
    return await readFile(path);
  } catch (err) {
    throw failedPrecondition(`key file ${path} cannot be read`, err);
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
