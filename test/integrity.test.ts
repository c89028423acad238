/**
 * Fail-closed start-up with the real server process: a missing, replaced or rolled-back database,
 * ca/ directory or audit trail stops the start with a message naming it, unless --recover names
 * it (and the recovery is audited); a failed start-up step leaves nothing serving.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { copyFileSync, cpSync, existsSync, readFileSync, renameSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { createServer, connect, type Server } from 'node:net';
import { join } from 'node:path';
import { spawnCli } from './support/cli.js';
import { makeTempDir } from './support/server.js';
import { AdminClient } from '../src/cli/admin-client.js';
import { recordHash } from '../src/audit/canonical.js';

const td = 'integrity.example';

interface Run {
  code: number | null;
  output: string;
}

describe('fail-closed start-up (real server process)', { timeout: 180_000 }, () => {
  const dir = makeTempDir('agentid-integrity-');
  const dataDir = join(dir, 'data');
  const auditFile = join(dataDir, 'audit.log');
  const dbFile = join(dataDir, 'agentid.db');
  const configFile = join(dir, 'agentid.yaml');

  /** Starts the server; when it comes up, makes one admin call and stops it with SIGTERM. */
  async function run(extra: string[] = [], config = configFile): Promise<Run> {
    const child = spawnCli(['server', '--config', config, '--log-level', 'warn', ...extra]);
    let output = '';
    child.stdout!.on('data', (d) => (output += d));
    child.stderr!.on('data', (d) => (output += d));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const pidFile = join(dataDir, 'server.pid');
    const up = (async () => {
      for (;;) {
        if (existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() === String(child.pid)) return true;
        await new Promise((r) => setTimeout(r, 100));
      }
    })();
    const first = await Promise.race([up, exited.then(() => false)]);
    if (first === true) {
      const admin = new AdminClient(join(dataDir, 'admin.sock'));
      try {
        await admin.call('ListEntries', {});
      } finally {
        admin.close();
      }
      child.kill('SIGTERM');
    }
    return { code: await exited, output };
  }

  const auditTypes = () => readFileSync(auditFile, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l));

  beforeAll(async () => {
    writeFileSync(configFile, [`trust_domain: ${td}`, `data_dir: ${dataDir}`].join('\n'));
    const first = await run();
    expect(first.code, first.output).toBe(0);
    expect(existsSync(join(dataDir, 'integrity.json'))).toBe(true);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('refuses a deleted database, naming it, and starts with --recover=database, on the record', async () => {
    const backup = join(dir, 'db-backup');
    copyFileSync(dbFile, backup);
    rmSync(dbFile);
    const refused = await run();
    expect(refused.code).not.toBe(0);
    expect(refused.output).toMatch(/integrity: the database .*agentid\.db is missing.*--recover=database/);
    expect(existsSync(dbFile)).toBe(false); // nothing was created

    // A wrong value for the flag is refused as such.
    const wrong = await run(['--recover', 'everything']);
    expect(wrong.output).toMatch(/--recover "everything": must be one of database, ca, audit/);

    const recovered = await run(['--recover', 'database']);
    expect(recovered.code, recovered.output).toBe(0);
    const events = auditTypes();
    expect(events.filter((e) => e.type === 'integrity.recovered')).toEqual([expect.objectContaining({ component: 'database', reason: expect.stringMatching(/is missing/) })]);
    const started = events.filter((e) => e.type === 'server.started');
    expect(started.at(-1).db_id).not.toBe(started.at(-2).db_id);

    // The old database is now the replaced one: refused again by identity.
    copyFileSync(backup, dbFile);
    rmSync(`${dbFile}-wal`, { force: true });
    rmSync(`${dbFile}-shm`, { force: true });
    const replaced = await run();
    expect(replaced.output).toMatch(/the database .* was replaced \(identity/);
    expect((await run(['--recover', 'database'])).code).toBe(0);
  });

  it('refuses a database rolled back to an older copy', async () => {
    const older = join(dir, 'db-older');
    copyFileSync(dbFile, older);
    expect((await run()).code).toBe(0);
    copyFileSync(older, dbFile);
    const refused = await run();
    expect(refused.code).not.toBe(0);
    expect(refused.output).toMatch(/the database .* was rolled back \(generation \d+, expected \d+\)/);
    expect((await run(['--recover=database'])).code).toBe(0);
  });

  it('refuses a missing or replaced ca/ directory', async () => {
    const caDir = join(dataDir, 'ca');
    const saved = join(dir, 'ca-saved');
    renameSync(caDir, saved);
    const missing = await run();
    expect(missing.code).not.toBe(0);
    expect(missing.output).toMatch(/the CA directory .*ca is missing.*--recover=ca/);
    expect(existsSync(caDir)).toBe(false); // no new CA was made

    // Another agentid's CA in its place.
    const otherData = join(dir, 'other');
    const otherConfig = join(dir, 'other.yaml');
    writeFileSync(otherConfig, [`trust_domain: ${td}`, `data_dir: ${otherData}`].join('\n'));
    const other = spawnCli(['server', '--config', otherConfig, '--log-level', 'warn']);
    await new Promise<void>((resolve) => {
      const t = setInterval(() => {
        if (existsSync(join(otherData, 'server.pid'))) {
          clearInterval(t);
          resolve();
        }
      }, 100);
    });
    other.kill('SIGTERM');
    await new Promise((r) => other.once('exit', r));
    cpSync(join(otherData, 'ca'), caDir, { recursive: true });
    const replaced = await run();
    expect(replaced.output).toMatch(/the CA in .* was replaced/);

    rmSync(caDir, { recursive: true });
    renameSync(saved, caDir);
    expect((await run()).code).toBe(0);
  });

  it('refuses an emptied, tail-truncated or deleted audit trail', async () => {
    const saved = readFileSync(auditFile);
    const lines = saved.toString('utf8').split('\n').filter(Boolean);
    // Tail-truncated: a valid but shorter chain.
    writeFileSync(auditFile, `${lines.slice(0, -3).join('\n')}\n`);
    const truncated = await run();
    expect(truncated.code).not.toBe(0);
    expect(truncated.output).toMatch(/the audit trail .* was truncated or replaced \(it ends at record \d+, the anchor is record \d+\)/);
    truncateSync(auditFile, 0);
    expect((await run()).output).toMatch(/audit trail .* was truncated or replaced/);
    rmSync(auditFile);
    expect((await run()).output).toMatch(/the audit trail .*audit\.log is missing.*--recover=audit/);

    writeFileSync(auditFile, saved, { mode: 0o600 });
    const restored = await run();
    expect(restored.code, restored.output).toBe(0);
  });

  it('finds the anchored record inside a longer trail (a start after a crash), and refuses a trail whose record there differs', async () => {
    const saved = readFileSync(auditFile);
    const records = saved.toString('utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown> & { seq: number; prev: string; hash: string });
    const anchored = (JSON.parse(readFileSync(join(dataDir, 'integrity.json'), 'utf8')) as { auditSeq: number }).auditSeq;
    const at = records.findIndex((r) => r.seq === anchored);
    expect(at).toBeGreaterThanOrEqual(0);
    /** The records from index `from` on, each given `change` and chained again (valid hashes). */
    const rechained = (from: number, change: (r: Record<string, unknown>) => void) => {
      const out = records.map((r) => ({ ...r }));
      for (let i = from; i < out.length; i++) {
        const { hash: _old, ...rest } = out[i]!;
        if (i > 0) rest.prev = out[i - 1]!.hash;
        change(rest);
        out[i] = { ...rest, hash: recordHash(rest as typeof rest & { prev: string }) } as (typeof out)[number];
      }
      return out;
    };
    /** `list` and one more valid record after it: written after the anchor, as before a crash. */
    const appended = (list: typeof records) => {
      const last = list.at(-1)!;
      const next = { seq: last.seq + 1, time: new Date().toISOString(), type: 'server.started', prev: last.hash };
      return [...list, { ...next, hash: recordHash(next) }];
    };
    const write = (list: object[]) => writeFileSync(auditFile, list.map((r) => `${JSON.stringify(r)}\n`).join(''), { mode: 0o600 });

    // Longer, every hash valid, but the anchored record is another one (its time changed).
    write(appended(rechained(at, (r) => (r.time = new Date(0).toISOString()))));
    const replaced = await run();
    expect(replaced.code).not.toBe(0);
    expect(replaced.output).toMatch(new RegExp(`the audit trail .* was replaced \\(record ${anchored} is not the anchored one\\)`));

    // The real records and one written after the anchor: the anchored record is found, and it starts.
    write(appended(records));
    const longer = await run();
    expect(longer.code, longer.output).toBe(0);
  });

  it('refuses to start after files were deleted under a running server that was then killed', async () => {
    const child = spawnCli(['server', '--config', configFile, '--log-level', 'warn']);
    const pidFile = join(dataDir, 'server.pid');
    for (let i = 0; i < 600 && !(existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() === String(child.pid)); i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    const saved = readFileSync(auditFile);
    // Deleted while open: the server goes on writing to a file nobody will find again.
    rmSync(auditFile);
    const admin = new AdminClient(join(dataDir, 'admin.sock'));
    try {
      await admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/written-to-a-deleted-file`, selectors: ['unix:uid:4242'] } });
    } finally {
      admin.close();
    }
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    const refused = await run();
    expect(refused.code).not.toBe(0);
    expect(refused.output).toMatch(/the audit trail .*audit\.log is missing/);
    // The copy taken after this run was anchored reaches the anchor, so it is accepted (the lines
    // written to the deleted file after the anchor are lost: a limitation SECURITY.md names).
    writeFileSync(auditFile, saved, { mode: 0o600 });
    const restored = await run();
    expect(restored.code, restored.output).toBe(0);
  });

  it('closes everything and exits non-zero when a later start-up step fails (bundle endpoint port in use)', async () => {
    const blocker: Server = createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const port = (blocker.address() as { port: number }).port;
    const busyConfig = join(dir, 'busy.yaml');
    writeFileSync(busyConfig, [`trust_domain: ${td}`, `data_dir: ${dataDir}`, 'bundle_endpoint:', '  enabled: true', `  listen: 127.0.0.1:${port}`].join('\n'));
    try {
      const failed = await run([], busyConfig);
      expect(failed.code).not.toBe(0);
      expect(failed.output).toMatch(/EADDRINUSE|in use/);
    } finally {
      blocker.close();
    }
    // Nothing was left serving, nor a lock, and the audit trail was closed whole.
    expect(existsSync(join(dataDir, 'server.pid'))).toBe(false);
    const refused = await new Promise<string>((resolve) => {
      const c = connect(join(dataDir, 'workload.sock'));
      c.once('connect', () => {
        c.destroy();
        resolve('connected');
      });
      c.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
    });
    expect(['ECONNREFUSED', 'ENOENT']).toContain(refused);
    expect((await run()).code).toBe(0);
  });
});
