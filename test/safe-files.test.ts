/**
 * The data directory cannot be redirected by another local user: a parent they own, a parent they
 * may write (without the sticky bit), or a symbolic link in a directory they control stops the
 * server before it opens anything. (Key files and the ca/ directory: src/ca/authority.test.ts.)
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chmodSync, chownSync, existsSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ensureTestUser, type TestUser } from '../src/attest/testing.js';
import { createLogger } from '../src/common/logger.js';
import { systemClock } from '../src/common/system-clock.js';
import { loadConfig } from '../src/config/index.js';
import { startServer } from '../src/server.js';
import { makeTempDir } from './support/server.js';

describe('data directory ownership', () => {
  let root: string;
  let other: TestUser;

  beforeAll(() => {
    other = ensureTestUser('agentid-test-intruder');
    root = makeTempDir('agentid-safe-');
  });
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  async function startWith(dataDir: string) {
    const file = join(root, `cfg-${Math.random().toString(36).slice(2)}.yaml`);
    writeFileSync(file, ['trust_domain: safe.example', `data_dir: ${dataDir}`].join('\n'));
    const config = loadConfig({ file, env: {}, flags: {} });
    const server = await startServer(config, { clock: systemClock, logger: createLogger({ level: 'silent' }) });
    await server.stop();
  }

  it('refuses a data directory below a directory another user owns', async () => {
    const theirs = join(root, 'theirs');
    mkdirSync(theirs, { mode: 0o755 });
    chownSync(theirs, other.uid, other.gid);
    await expect(startWith(join(theirs, 'data'))).rejects.toThrow(new RegExp(`${theirs} is owned by uid ${other.uid}, neither root nor the server's uid`));
    expect(existsSync(join(theirs, 'data'))).toBe(false);
  });

  it('refuses a parent others may write, unless it is sticky', async () => {
    const open = join(root, 'open');
    mkdirSync(open);
    chmodSync(open, 0o777);
    await expect(startWith(join(open, 'data'))).rejects.toThrow(/open is writable by group or others \(mode 0777\) without the sticky bit/);
    chmodSync(open, 0o1777);
    await expect(startWith(join(open, 'data'))).resolves.toBeUndefined();
  });

  it('refuses a path through a symbolic link another user could re-point, follows one they cannot', async () => {
    const target = join(root, 'real');
    mkdirSync(target, { mode: 0o755 });
    const theirs = join(root, 'links-theirs');
    mkdirSync(theirs, { mode: 0o755 });
    symlinkSync(target, join(theirs, 'link'));
    chownSync(theirs, other.uid, other.gid);
    await expect(startWith(join(theirs, 'link', 'data'))).rejects.toThrow(/links-theirs is owned by uid/);

    const ours = join(root, 'links-ours');
    mkdirSync(ours, { mode: 0o755 });
    symlinkSync(target, join(ours, 'link'));
    await expect(startWith(join(ours, 'link', 'data'))).resolves.toBeUndefined();
    // A link to a directory another user controls is refused at its target.
    const theirTarget = join(root, 'their-target');
    mkdirSync(theirTarget, { mode: 0o755 });
    chownSync(theirTarget, other.uid, other.gid);
    symlinkSync(theirTarget, join(ours, 'bad-link'));
    await expect(startWith(join(ours, 'bad-link', 'data'))).rejects.toThrow(/their-target is owned by uid/);
  });
});
