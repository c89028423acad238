import { chmodSync, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { isAgentIdError } from '../common/errors.js';
import { ensurePrivateDir, readKeyFile, writeFileAtomic, writeKeyFile } from './key-files.js';
import { SigningKey } from './keys.js';
import { errorOf, tempDir } from './testing.js';

describe('key files', () => {
  const dir = tempDir();
  afterAll(() => dir.cleanup());

  it('writes keys as 0600 PKCS#8 PEM atomically and reads them back', async () => {
    const key = SigningKey.generate('ec-p256', 'k1');
    const path = join(dir.path, 'k1.key');
    await writeKeyFile(path, key);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const loaded = await readKeyFile(path, 'k1');
    expect(loaded.publicKeySpki.equals(key.publicKeySpki)).toBe(true);
    expect(readdirSync(dir.path).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });

  it('replaces an existing file whole, with the requested mode', async () => {
    const path = join(dir.path, 'state.json');
    writeFileSync(path, 'old', { mode: 0o644 });
    await writeFileAtomic(path, 'new contents', 0o600);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(readdirSync(dir.path).filter((f) => f.includes('state.json'))).toEqual(['state.json']);
  });

  it.each([0o640, 0o604, 0o660, 0o620, 0o602, 0o644])('refuses a key file with mode %o', async (mode) => {
    const path = join(dir.path, `m${mode.toString(8)}.key`);
    await writeKeyFile(path, SigningKey.generate('ec-p256', 'x'));
    chmodSync(path, mode);
    const err = await errorOf(readKeyFile(path, 'x'));
    expect(isAgentIdError(err, 'failed_precondition')).toBe(true);
    expect(err.message).toContain(`mode 0${mode.toString(8)}`);
    expect(err.message).toContain('chmod 600');
  });

  it('refuses a key path that is not a regular file', async () => {
    const path = join(dir.path, 'a-directory.key');
    mkdirSync(path, { mode: 0o700 });
    expect((await errorOf(readKeyFile(path, 'x'))).message).toMatch(/regular file/);
  });

  it('creates private directories 0700', async () => {
    const path = join(dir.path, 'new', 'nested');
    await ensurePrivateDir(path);
    expect(statSync(path).mode & 0o777).toBe(0o700);
  });

  it.each([0o777, 0o770, 0o702, 0o720])('refuses a data directory with mode %o', async (mode) => {
    const path = join(dir.path, `d${mode.toString(8)}`);
    mkdirSync(path);
    chmodSync(path, mode);
    const err = await errorOf(ensurePrivateDir(path));
    expect(err.code).toBe('failed_precondition');
    expect(err.message).toMatch(/writable by group or others/);
  });

  it('accepts a directory others can read but not write (0755)', async () => {
    const path = join(dir.path, 'd755');
    mkdirSync(path);
    chmodSync(path, 0o755);
    await expect(ensurePrivateDir(path)).resolves.toBeUndefined();
  });
});
