/**
 * Two agentid servers on one PostgreSQL database, each with its own data directory, sockets, CA
 * and audit trail: what one server is told, every server enforces. Server A runs as a child
 * process (so it can be SIGKILLed); server B runs in the test process. The cluster is the tests'
 * own (test/support/postgres.ts).
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WorkloadApiClient } from '../src/client/workload-client.js';
import { toPem } from '../src/client/der.js';
import { AdminClient } from '../src/cli/admin-client.js';
import { REPO, spawnCli } from './support/cli.js';
import { followJsonLines } from './support/json-lines.js';
import { startPostgresCluster, type PostgresCluster } from './support/postgres.js';
import { makeTempDir, startTestServer, type TestServer } from './support/server.js';

const TD = 'multi.example';
const FETCH_CLIENT = join(REPO, 'test', 'support', 'fetch-client.ts');

describe('two servers on one PostgreSQL', () => {
  let cluster: PostgresCluster;
  let url: string;
  let root: string;
  let b: TestServer;
  let a: ChildProcess | undefined;
  let aAdmin: AdminClient | undefined;
  const children: ChildProcess[] = [];
  const aDir = () => join(root, 'a');
  const aSocket = () => join(aDir(), 'workload.sock');

  async function startA(): Promise<void> {
    const config = join(root, 'a.yaml');
    writeFileSync(config, [`trust_domain: ${TD}`, `data_dir: ${aDir()}`, 'datastore:', `  url: "${url}"`, 'log:', '  level: warn', ''].join('\n'));
    const child = spawnCli(['server', '--config', config]);
    a = child;
    let stderr = '';
    child.stderr?.on('data', (d) => (stderr += d));
    for (let i = 0; i < 600 && !existsSync(join(aDir(), 'server.pid')); i++) {
      if (child.exitCode !== null) throw new Error(`server A exited: ${stderr}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    aAdmin?.close();
    aAdmin = new AdminClient(join(aDir(), 'admin.sock'));
  }

  async function x509(socket: string) {
    const client = new WorkloadApiClient({ socketPath: socket });
    try {
      return await client.fetchX509Context();
    } finally {
      client.close();
    }
  }

  async function ids(socket: string): Promise<string[]> {
    try {
      return (await x509(socket)).svids.map((s) => s.spiffeId);
    } catch {
      return [];
    }
  }

  beforeAll(async () => {
    cluster = await startPostgresCluster();
    url = await cluster.createDatabase('agentid');
    root = makeTempDir('agentid-multi-');
    await startA();
    b = await startTestServer({ trustDomain: TD, yaml: `datastore:\n  url: "${url}"\n` });
  });
  afterAll(async () => {
    for (const c of children) c.kill('SIGKILL');
    aAdmin?.close();
    a?.kill('SIGTERM');
    await b?.cleanup();
    await cluster?.stop();
  });

  it('an entry created through A is served by B', async () => {
    await aAdmin!.call('CreateEntry', { entry: { spiffe_id: `spiffe://${TD}/shared`, selectors: ['unix:uid:0'] } });
    await expect.poll(() => ids(b.config.workloadSocket), { timeout: 5000 }).toEqual([`spiffe://${TD}/shared`]);
    expect(await ids(aSocket())).toEqual([`spiffe://${TD}/shared`]);
  });

  it('an SVID minted by either server verifies with the bundle the other serves (openssl)', async () => {
    // Each server publishes its root; the other picks it up through the change feed.
    await expect.poll(async () => (await x509(b.config.workloadSocket)).svids[0]!.bundleDer.length, { timeout: 5000 }).toBeGreaterThanOrEqual(2);
    const fromA = await x509(aSocket());
    const fromB = await x509(b.config.workloadSocket);
    const check = (svid: typeof fromA.svids[number], bundleDer: Buffer[], name: string) => {
      const leaf = join(root, `${name}-leaf.pem`);
      const chain = join(root, `${name}-chain.pem`);
      const bundle = join(root, `${name}-bundle.pem`);
      writeFileSync(leaf, toPem([svid.chainDer[0]!], 'CERTIFICATE'));
      writeFileSync(chain, toPem(svid.chainDer.slice(1), 'CERTIFICATE'));
      writeFileSync(bundle, toPem(bundleDer, 'CERTIFICATE'));
      const out = spawnSync('openssl', ['verify', '-CAfile', bundle, '-untrusted', chain, leaf], { encoding: 'utf8' });
      return out.stdout + out.stderr;
    };
    // The two roots differ: each server has its own CA.
    expect(fromA.svids[0]!.chainDer.at(-1)!.equals(fromB.svids[0]!.chainDer.at(-1)!)).toBe(false);
    expect(check(fromA.svids[0]!, fromB.svids[0]!.bundleDer, 'a-by-b')).toMatch(/: OK/);
    expect(check(fromB.svids[0]!, fromA.svids[0]!.bundleDer, 'b-by-a')).toMatch(/: OK/);
  });

  it('a task revoked through B ends its stream on A within a second', async () => {
    const watcher = spawn(process.execPath, ['--import', 'tsx', FETCH_CLIENT, aSocket(), 'watch'], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(watcher);
    const stream = followJsonLines(watcher);
    await aAdmin!.call('StartTask', { agent: 'coder', id: 'multi-1', pid: watcher.pid });
    const taskId = `spiffe://${TD}/agent/coder/task/multi-1`;
    const bound = await stream.next((l) => l.ids?.[0] === taskId, 20_000);
    const started = Date.now();
    await b.admin.call('RevokeTask', { agent: 'coder', id: 'multi-1', reason: 'compromised' });
    // A task process gets nothing once its task is revoked: its stream on A ends.
    await stream.next((l) => stream.lines.indexOf(l) > stream.lines.indexOf(bound) && (l.error !== undefined || !l.ids?.includes(taskId)), 5000);
    expect(Date.now() - started).toBeLessThan(1000);
  });

  it('B keeps serving while A is killed; A rejoins on restart', async () => {
    a!.kill('SIGKILL');
    await new Promise((r) => a!.once('exit', r));
    expect(await ids(b.config.workloadSocket)).toEqual([`spiffe://${TD}/shared`]);
    await b.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${TD}/while-a-was-down`, selectors: ['unix:uid:0'] } });
    await startA();
    await expect.poll(() => ids(aSocket()), { timeout: 5000 }).toEqual([`spiffe://${TD}/shared`, `spiffe://${TD}/while-a-was-down`]);
  });
});
