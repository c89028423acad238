/**
 * The key-compromise drill with real processes: the CLI over the admin socket, a workload
 * following FetchX509SVID in a child process, the JWT API from a real client.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { WorkloadApiClient } from '../../src/client/workload-client.js';
import { startTestServer, type TestServer } from '../support/server.js';
import { runCli, REPO } from '../support/cli.js';
import { followJsonLines } from '../support/json-lines.js';

const TD = 'drill.example';
const WATCH = join(REPO, 'test', 'support', 'x509-watch.ts');

interface Authority { kind: string; id: string; slot: string; tainted: boolean; issuer_id: string }

describe('key compromise drill', () => {
  let t: TestServer;
  let watcher: ChildProcess;
  let stream: ReturnType<typeof followJsonLines>;
  let workload: WorkloadApiClient;

  type Result = { changes: string[]; authorities: Authority[] };
  /** The CLI as an operator runs it (a process each, so used for the drill's key steps). */
  const cli = async (...args: string[]): Promise<Result> => {
    const r = await runCli([...args, '--admin-socket', t.config.adminSocket, '--json']);
    if (r.code !== 0) throw new Error(`agentid ${args.join(' ')} exited ${r.code}: ${r.stderr}`);
    return JSON.parse(r.stdout);
  };
  /** The same admin calls the CLI makes, from this process (no process start per step). */
  const METHODS: Record<string, string> = { list: 'ListAuthorities', prepare: 'PrepareAuthority', activate: 'ActivateAuthority', taint: 'TaintAuthority', revoke: 'RevokeAuthority' };
  const api = (family: 'ca' | 'jwt-key', op: string, arg?: string): Promise<Result> => {
    const request = op === 'prepare' ? { kind: family === 'jwt-key' ? 'jwt' : arg === '--root' ? 'root' : 'x509' } : { family: family === 'ca' ? 'ca' : 'jwt', id: arg };
    return t.admin.call(METHODS[op]!, request);
  };
  const refusedBy = async (family: 'ca' | 'jwt-key', op: string, id: string) => {
    const err = await api(family, op, id).then(() => undefined, (e: Error) => e);
    expect(err, `${family} ${op} ${id} should be refused`).toBeInstanceOf(Error);
    return err!.message;
  };
  const one = (list: Authority[], pred: (a: Authority) => boolean) => {
    const found = list.filter(pred);
    expect(found).toHaveLength(1);
    return found[0]!;
  };

  beforeAll(async () => {
    // Long SVIDs: nothing in this test is re-minted by the half-life schedule, only by the drill.
    t = await startTestServer({ trustDomain: TD, yaml: 'svid:\n  x509_ttl: 1h\n  jwt_ttl: 1h' });
    for (const name of ['a', 'b', 'c']) {
      await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${TD}/drill/${name}`, selectors: ['unix:uid:0'] } });
    }
    watcher = spawn(process.execPath, ['--import', 'tsx', WATCH, t.config.workloadSocket], { cwd: REPO, stdio: ['ignore', 'pipe', 'inherit'] });
    stream = followJsonLines(watcher);
    await stream.next((l) => l.svids?.length === 3, 15_000);
    workload = new WorkloadApiClient({ socketPath: t.config.workloadSocket });
  });
  afterAll(async () => {
    watcher?.kill();
    workload?.close();
    await t?.cleanup();
  });

  it('signing CA: prepare, activate, taint re-mints every SVID on the open stream, revoke lists it on the root CRL', async () => {
    const before = (await api('ca', 'list')).authorities;
    const oldCa = one(before, (a) => a.kind === 'x509' && a.slot === 'active');
    const first = stream.lines.at(-1);
    expect(first.svids.every((s: any) => s.issuer === oldCa.id)).toBe(true);

    const prepared = one((await cli('ca', 'prepare')).authorities, (a) => a.kind === 'x509' && a.slot === 'prepared');
    // Refusals name the rule and change nothing.
    expect(await refusedBy('ca', 'taint', oldCa.id)).toMatch(/is active: prepare and activate a replacement first/);
    expect(await refusedBy('ca', 'revoke', oldCa.id)).toMatch(/is not tainted/);
    // From the CLI: exit 1 and the server's reason.
    const unknown = await runCli(['ca', 'taint', 'ffffffffffffffff', '--admin-socket', t.config.adminSocket]);
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toMatch(/no root or signing CA with ID ffffffffffffffff/);

    const activated = await api('ca', 'activate', prepared.id);
    expect(one(activated.authorities, (a) => a.id === oldCa.id).slot).toBe('retired');
    // Activation alone re-mints nothing: SVIDs move to the new CA at their own renewal...
    const beforeTaint = stream.lines.length;
    const tainted = await cli('ca', 'taint', oldCa.id);
    expect(tainted.changes).toEqual([`signing CA ${oldCa.id} tainted`]);
    // ...while a taint re-mints every SVID the old CA signed at once and pushes them.
    const reminted = await stream.next((l) => l.svids?.length === 3 && l.svids.every((s: any) => s.issuer === prepared.id), 5000);
    expect(stream.lines.indexOf(reminted)).toBeGreaterThanOrEqual(beforeTaint);
    const oldSerials = new Set(first.svids.map((s: any) => s.serial));
    expect(reminted.svids.some((s: any) => oldSerials.has(s.serial))).toBe(false);

    const revoked = await cli('ca', 'revoke', oldCa.id);
    expect(revoked.authorities.some((a) => a.id === oldCa.id)).toBe(false);
    // The root's CRL now lists the old signing CA, so full-chain CRL checks refuse anything it signed.
    const withCrl = await stream.next((l) => l.crls?.some((c: any) => c.issuer === first.svids[0].root && c.revoked.includes(first.svids[0].issuerSerial)));
    expect(withCrl.svids.every((s: any) => s.issuer === prepared.id)).toBe(true);
  });

  it('root CA: the new root is published before use, taint moves every SVID to it, revoke removes the old root from the bundle', async () => {
    const start = (await api('ca', 'list')).authorities;
    const oldRoot = one(start, (a) => a.kind === 'root' && a.slot === 'active');
    const newRoot = one((await api('ca', 'prepare', '--root')).authorities, (a) => a.kind === 'root' && a.slot === 'prepared');
    await stream.next((l) => l.roots?.length === 2 && l.roots.includes(newRoot.id));

    expect(await refusedBy('ca', 'taint', oldRoot.id)).toMatch(/is active/);
    const activated = await api('ca', 'activate', newRoot.id);
    const newCa = one(activated.authorities, (a) => a.kind === 'x509' && a.slot === 'active');
    expect(newCa.issuer_id).toBe(newRoot.id);

    await api('ca', 'taint', oldRoot.id);
    await stream.next((l) => l.svids?.length === 3 && l.svids.every((s: any) => s.issuer === newCa.id && s.root === newRoot.id));
    const revoked = await api('ca', 'revoke', oldRoot.id);
    // The old root and the signing CAs it issued are gone, from the state and from the bundle.
    expect(revoked.authorities.filter((a: Authority) => a.id === oldRoot.id || a.issuer_id === oldRoot.id)).toEqual([]);
    const after = await stream.next((l) => l.roots?.length === 1 && l.roots[0] === newRoot.id);
    expect(after.crls.every((c: any) => c.issuer !== oldRoot.id)).toBe(true);
    const bundle = await runCli(['bundle', 'show', '--data-dir', t.config.dataDir, '--trust-domain', TD]);
    expect(bundle.code).toBe(0);
    expect(bundle.stdout.match(/BEGIN CERTIFICATE/g)).toHaveLength(1);
  });

  it('JWT key: taint makes the next JWT-SVID use the new key, revoke removes the old key from the JWT bundle', async () => {
    const oldKey = one((await api('jwt-key', 'list')).authorities, (a) => a.kind === 'jwt' && a.slot === 'active');
    const kidOf = (token: string) => JSON.parse(Buffer.from(token.split('.')[0]!, 'base64url').toString()).kid as string;
    const svid1 = await workload.fetchJwtSvid({ audience: ['drill'] });
    expect(kidOf(svid1.token.reveal())).toBe(oldKey.id);

    const newKey = one((await api('jwt-key', 'prepare')).authorities, (a) => a.kind === 'jwt' && a.slot === 'prepared');
    expect(await refusedBy('jwt-key', 'taint', newKey.id)).toMatch(/only prepared/);
    expect(await refusedBy('ca', 'taint', oldKey.id)).toMatch(/it is a JWT key: use agentid jwt-key/);
    await api('jwt-key', 'activate', newKey.id);
    await api('jwt-key', 'taint', oldKey.id);
    const svid2 = await workload.fetchJwtSvid({ audience: ['drill'] });
    expect(kidOf(svid2.token.reveal())).toBe(newKey.id);

    // Validated (and its signature remembered) while its key is still in the bundle...
    await expect(workload.validateJwtSvid(svid1.token.reveal(), 'drill')).resolves.toBeDefined();
    const bundlesBefore = await workload.fetchJwtBundles();
    expect(bundlesBefore.get(`spiffe://${TD}`)!.keys.map((k) => k.kid)).toContain(oldKey.id);
    await cli('jwt-key', 'revoke', oldKey.id);
    const bundlesAfter = await workload.fetchJwtBundles();
    expect(bundlesAfter.get(`spiffe://${TD}`)!.keys.map((k) => k.kid)).toEqual([newKey.id]);
    // ...a token of the revoked key no longer validates.
    await expect(workload.validateJwtSvid(svid1.token.reveal(), 'drill')).rejects.toThrow();
  });

  it('every step is in the audit trail with the admin who did it', () => {
    const records = readFileSync(t.config.audit.file, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    const manual = records.filter((r) => r.type === 'ca.rotated' && r.actor);
    expect(new Set(manual.map((r) => r.phase))).toEqual(new Set(['prepared', 'active', 'tainted', 'revoked', 'removed']));
    expect(manual.every((r) => r.actor.uid === 0 && r.actor.role === 'admin')).toBe(true);
  });
});
