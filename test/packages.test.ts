/**
 * The library-only packages (packages/verify = @agentid/verify, packages/client = @agentid/client),
 * as a service would install them: `npm pack`, then `npm install` of the tarballs into a fresh
 * project (from the local npm cache where it can). No native module and no server dependency may
 * come along, importing them must touch no global, and they must work: the verifier checks a
 * real chain, the client fetches a real SVID from a running server.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO } from './support/cli.js';
import { makeTempDir, startTestServer, type TestServer } from './support/server.js';

const TD = 'packages.example';
let tmp: string;
let app: string;
let t: TestServer;

/** Every file name under dir, recursively. */
function walk(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    out.push(p);
    if (statSync(p).isDirectory()) out.push(...walk(p));
  }
  return out;
}

beforeAll(async () => {
  tmp = makeTempDir('agentid-packages-');
  // A clean environment: what the test runner sets for its own workers (NODE_OPTIONS, npm_*) must not reach npm.
  const env = { PATH: process.env.PATH, HOME: process.env.HOME, npm_config_update_notifier: 'false', npm_config_fund: 'false', npm_config_audit: 'false' };
  const npm = (args: string[], cwd: string) => promisify(execFile)('npm', args, { cwd, env, timeout: 240_000 });
  for (const pkg of ['verify', 'client']) await npm(['pack', '--pack-destination', tmp], join(REPO, 'packages', pkg));
  app = join(tmp, 'app');
  mkdirSync(app);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  await npm(['install', '--prefer-offline', join(tmp, 'agentid-verify-0.1.0.tgz'), join(tmp, 'agentid-client-0.1.0.tgz')], app);
  t = await startTestServer({ trustDomain: TD });
  await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${TD}/svc`, selectors: [`unix:uid:${process.getuid!()}`] } });
}, 600_000);

afterAll(async () => {
  await t?.cleanup();
  if (tmp) execFileSync('rm', ['-rf', tmp]);
});

describe('@agentid/verify and @agentid/client from npm pack', () => {
  it('pull no native module and no server dependency', () => {
    const modules = join(app, 'node_modules');
    const installed = readdirSync(modules).flatMap((n) => (n.startsWith('@') ? readdirSync(join(modules, n)).map((m) => `${n}/${m}`) : [n]));
    for (const server of ['better-sqlite3', 'koffi', 'pino', 'pino-pretty', 'commander', 'yaml', '@peculiar/x509', 'reflect-metadata', 'agentid']) {
      expect(installed, server).not.toContain(server);
    }
    const native = walk(modules).filter((p) => p.endsWith('.node') || p.endsWith('binding.gyp'));
    expect(native).toEqual([]);
    expect(installed).toEqual(expect.arrayContaining(['@agentid/verify', '@agentid/client', '@grpc/grpc-js']));
  });

  it('import without touching any global, verify a real chain and fetch a real SVID', async () => {
    const probe = `
      const before = new Set(Object.getOwnPropertyNames(globalThis));
      const reflectBefore = new Set(Reflect.ownKeys(Reflect));
      const verify = await import('@agentid/verify');
      const client = await import('@agentid/client');
      const added = Object.getOwnPropertyNames(globalThis).filter((k) => !before.has(k));
      const reflectAdded = Reflect.ownKeys(Reflect).filter((k) => !reflectBefore.has(k)).map(String);
      const c = new client.WorkloadApiClient({ socketPath: process.argv[1] });
      const ctx = await c.fetchX509Context();
      c.close();
      const svid = ctx.svids[0];
      const bundles = new verify.BundleSet([verify.X509Bundle.fromDer(process.argv[2], svid.bundleDer)]);
      const verified = verify.verifyX509Svid(svid.chainDer, bundles, { now: Date.now(), crls: new verify.RevocationChecker({ crls: ctx.crls }) });
      console.log(JSON.stringify({ added, reflectAdded, id: verified.spiffeId.toString() }));
    `;
    // Asynchronously: the server answering the probe runs in this process.
    const { stdout: out } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', probe, t.config.workloadSocket, TD], { cwd: app, env: { PATH: process.env.PATH }, timeout: 60_000 });
    expect(JSON.parse(out)).toEqual({ added: [], reflectAdded: [], id: `spiffe://${TD}/svc` });
  });

  it('ship type declarations', () => {
    for (const pkg of ['verify', 'client']) expect(existsSync(join(app, 'node_modules', '@agentid', pkg, 'dist', pkg, 'index.d.ts')), pkg).toBe(true);
  });
});
