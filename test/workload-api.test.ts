/**
 * The Workload API end to end: real server, real Unix sockets, real child processes (some as a
 * second Unix user), real openssl.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { workloadService } from '../src/common/proto.js';
import { WorkloadApiClient } from '../src/client/workload-client.js';
import { ensureTestUser, asUser, type TestUser } from '../src/attest/testing.js';
import { startTestServer, type TestServer } from './support/server.js';
import { followJsonLines } from './support/json-lines.js';

const FETCH_CLIENT = join(import.meta.dirname, 'support', 'fetch-client.ts');

function runFetch(socket: string, user?: TestUser): Promise<{ ids?: string[]; error?: string; chainPem?: string; bundlePem?: string }> {
  const argv = [process.execPath, '--import', 'tsx', FETCH_CLIENT, socket, 'once'];
  const { command, args } = user ? asUser(user, argv) : { command: argv[0]!, args: argv.slice(1) };
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: join(import.meta.dirname, '..') });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('exit', () => {
      try {
        resolve(JSON.parse(out.trim().split('\n').pop()!));
      } catch {
        reject(new Error(`fetch client printed no result: ${out} ${err}`));
      }
    });
  });
}

function watch(socket: string): { child: ChildProcess; lines: any[]; next: (pred: (l: any) => boolean, ms?: number) => Promise<any> } {
  const child = spawn(process.execPath, ['--import', 'tsx', FETCH_CLIENT, socket, 'watch'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const { lines, next } = followJsonLines(child);
  return { child, lines, next };
}

describe('Workload API', () => {
  let t: TestServer;
  let user: TestUser;
  const td = 'it.example';

  beforeAll(async () => {
    user = ensureTestUser('agentid-test-u1');
    t = await startTestServer({ trustDomain: td });
    await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/root-workload`, selectors: ['unix:uid:0'] } });
    await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/user-workload`, selectors: [`unix:uid:${user.uid}`], hint: 'user' } });
    await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/root-node`, selectors: ['unix:uid:0', `unix:path:${process.execPath}`] } });
  });
  afterAll(async () => t?.cleanup());

  it('gives a process exactly the identities whose selectors all match it', async () => {
    const res = await runFetch(t.config.workloadSocket);
    expect(res.ids).toEqual([`spiffe://${td}/root-workload`, `spiffe://${td}/root-node`]);
  });

  it('gives a second Unix user only its own identity', async () => {
    const res = await runFetch(t.config.workloadSocket, user);
    expect(res.ids).toEqual([`spiffe://${td}/user-workload`]);
  });

  it('delivers SVIDs that openssl verifies against the delivered bundle', async () => {
    const res = await runFetch(t.config.workloadSocket, user);
    const dir = t.dir;
    const certs = res.chainPem!.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n/g)!;
    writeFileSync(join(dir, 'leaf.pem'), certs[0]!);
    writeFileSync(join(dir, 'chain.pem'), certs.slice(1).join(''));
    writeFileSync(join(dir, 'bundle.pem'), res.bundlePem!);
    const r = spawnSync('openssl', ['verify', '-x509_strict', '-purpose', 'sslclient', '-CAfile', join(dir, 'bundle.pem'), '-untrusted', join(dir, 'chain.pem'), join(dir, 'leaf.pem')], { encoding: 'utf8' });
    expect(r.stdout + r.stderr).toContain('leaf.pem: OK');
  });

  it('refuses a call without the security header with INVALID_ARGUMENT', async () => {
    const Ctor = workloadService();
    const raw = new Ctor(`unix://${t.config.workloadSocket}`, grpc.credentials.createInsecure()) as any;
    const code = await new Promise<number>((resolve) => {
      const stream = raw.FetchX509SVID({});
      stream.on('data', () => resolve(-1));
      stream.on('error', (e: grpc.ServiceError) => resolve(e.code));
    });
    raw.close();
    expect(code).toBe(grpc.status.INVALID_ARGUMENT);
  });

  it('answers UNIMPLEMENTED for the WIT-SVID methods', async () => {
    const Ctor = workloadService();
    const raw = new Ctor(`unix://${t.config.workloadSocket}`, grpc.credentials.createInsecure()) as any;
    const md = new grpc.Metadata();
    md.set('workload.spiffe.io', 'true');
    const code = await new Promise<number>((resolve) => {
      const stream = raw.FetchWITSVID({}, md);
      stream.on('data', () => resolve(-1));
      stream.on('error', (e: grpc.ServiceError) => resolve(e.code));
    });
    raw.close();
    expect(code).toBe(grpc.status.UNIMPLEMENTED);
  });

  it('refuses a caller with no matching entry with PERMISSION_DENIED', async () => {
    const stranger = ensureTestUser('agentid-test-u2');
    const res = await runFetch(t.config.workloadSocket, stranger);
    expect(res.error).toBe('permission_denied');
  });

  it('issues and validates JWT-SVIDs, requiring an audience', async () => {
    const client = new WorkloadApiClient({ socketPath: t.config.workloadSocket });
    try {
      const svids = await client.fetchJwtSvids({ audience: ['https://api.example'] });
      expect(svids.map((s) => s.spiffeId)).toEqual([`spiffe://${td}/root-workload`, `spiffe://${td}/root-node`]);
      const one = await client.fetchJwtSvid({ audience: ['https://api.example'], spiffeId: `spiffe://${td}/root-node` });
      expect(one.spiffeId).toBe(`spiffe://${td}/root-node`);
      const validated = await client.validateJwtSvid(one.token, 'https://api.example');
      expect(validated.spiffeId).toBe(`spiffe://${td}/root-node`);
      expect(validated.claims.aud).toEqual(['https://api.example']);
      await expect(client.validateJwtSvid(one.token, 'https://other.example')).rejects.toMatchObject({ code: 'invalid_argument' });
      await expect(client.fetchJwtSvids({ audience: ['a'], spiffeId: `spiffe://${td}/user-workload` })).rejects.toMatchObject({ code: 'permission_denied' });
      // An audience that looks like a token is refused as a bad argument, before anything is minted.
      await expect(client.fetchJwtSvids({ audience: ['eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9'] })).rejects.toMatchObject({ code: 'invalid_argument' });
      await expect(client.fetchJwtSvids({ audience: Array.from({ length: 17 }, (_, i) => `aud-${i}`) })).rejects.toMatchObject({ code: 'invalid_argument' });
    } finally {
      client.close();
    }
  });

  it('answers repeated unary calls on one connection alike, and follows entry changes and the deny list on it', async () => {
    const client = new WorkloadApiClient({ socketPath: t.config.workloadSocket });
    const audience = ['https://repeat.example'];
    let added: { id: string } | undefined;
    try {
      const first = await client.fetchJwtSvids({ audience });
      const again = await client.fetchJwtSvids({ audience });
      expect(again.map((s) => s.token)).toEqual(first.map((s) => s.token)); // the cached JWT-SVIDs
      for (let i = 0; i < 2; i++) expect((await client.validateJwtSvid(first[0]!.token, audience[0]!)).spiffeId).toBe(first[0]!.spiffeId);

      const created: { id: string } = await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/added-later`, selectors: ['unix:uid:0'] } });
      added = created;
      const withNew = await client.fetchJwtSvids({ audience });
      expect(withNew.map((s) => s.spiffeId)).toContain(`spiffe://${td}/added-later`);
      const token = withNew.find((s) => s.spiffeId === `spiffe://${td}/added-later`)!.token;
      expect((await client.validateJwtSvid(token, audience[0]!)).spiffeId).toBe(`spiffe://${td}/added-later`);

      await t.admin.call('DeleteEntry', { id: created.id });
      added = undefined;
      expect((await client.fetchJwtSvids({ audience })).map((s) => s.spiffeId)).not.toContain(`spiffe://${td}/added-later`);
      // Its tokens are on the deny list now: the same question on the same connection gets another answer.
      await expect(client.validateJwtSvid(token, audience[0]!)).rejects.toMatchObject({ code: 'invalid_argument' });
    } finally {
      client.close();
      if (added) await t.admin.call('DeleteEntry', { id: added.id });
    }
  });

  it('pushes an entry deletion to an open stream within a second, and ends the stream when nothing is left', async () => {
    const extra = await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/short-lived`, selectors: ['unix:uid:0'] } });
    const w = watch(t.config.workloadSocket);
    try {
      await w.next((l) => l.ids?.includes(`spiffe://${td}/short-lived`));
      const started = Date.now();
      await t.admin.call('DeleteEntry', { id: extra.id });
      await w.next((l) => l.ids && !l.ids.includes(`spiffe://${td}/short-lived`), 1000);
      expect(Date.now() - started).toBeLessThan(1000);
    } finally {
      w.child.kill();
    }
  });

  it('moves an open stream to the new SPIFFE ID when an entry update renames it, and denies the old one', async () => {
    const renamed = await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/before-rename`, selectors: ['unix:uid:0'] } });
    const client = new WorkloadApiClient({ socketPath: t.config.workloadSocket });
    const w = watch(t.config.workloadSocket);
    try {
      await w.next((l) => l.ids?.includes(`spiffe://${td}/before-rename`));
      const old = await client.fetchJwtSvid({ audience: ['https://api.example'], spiffeId: `spiffe://${td}/before-rename` });
      await t.admin.call('UpdateEntry', { id: renamed.id, entry: { spiffe_id: `spiffe://${td}/after-rename`, selectors: ['unix:uid:0'] } });
      const moved = await w.next((l) => l.ids?.includes(`spiffe://${td}/after-rename`));
      expect(moved.ids).not.toContain(`spiffe://${td}/before-rename`);
      // No entry issues the old ID any more: what was already handed out for it is refused everywhere.
      const { revocations } = await t.admin.call('ListRevocations', {});
      expect(revocations.map((r: { spiffe_id: string }) => r.spiffe_id)).toContain(`spiffe://${td}/before-rename`);
      await expect(client.validateJwtSvid(old.token, 'https://api.example')).rejects.toMatchObject({ code: 'invalid_argument' });
    } finally {
      w.child.kill();
      client.close();
      await t.admin.call('DeleteEntry', { id: renamed.id });
    }
  });
});
