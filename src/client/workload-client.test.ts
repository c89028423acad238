import { createPrivateKey, createPublicKey, sign, verify, X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { AgentIdError, isAgentIdError, type ErrorCode } from '../common/errors.js';
import { workloadService } from '../common/proto.js';
import { structToJson, type RawX509SvidResponse } from './decode.js';
import { FakeWorkloadServer, toStruct } from './test-support/fake-workload-server.js';
import { createTestPki, EPOCH, fakeJwt, type TestPki, type TestSvid } from './test-support/pki.js';
import type { X509Context } from './types.js';
import { WorkloadApiClient, WorkloadApiError } from './workload-client.js';

let pki: TestPki;
let alice: TestSvid;
let bob: TestSvid;
let dir: string;
let server: FakeWorkloadServer;
let client: WorkloadApiClient;

const ALICE = 'spiffe://example.org/agent/alice/task/t1';
const BOB = 'spiffe://example.org/agent/bob/task/t2';

function x509Response(): RawX509SvidResponse {
  return {
    svids: [
      { spiffe_id: ALICE, x509_svid: Buffer.concat(alice.chain), x509_svid_key: alice.keyPkcs8, bundle: pki.root.der, hint: 'primary' },
      { spiffe_id: BOB, x509_svid: Buffer.concat(bob.chain), x509_svid_key: bob.keyPkcs8, bundle: pki.root.der, hint: '' },
    ],
    crl: [pki.crl],
    federated_bundles: { 'spiffe://partner.example': pki.federatedRoot.der },
  };
}

async function rejection(p: Promise<unknown>): Promise<AgentIdError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof AgentIdError) return err;
    throw err;
  }
  throw new Error('expected a rejection');
}

beforeAll(async () => {
  pki = await createTestPki();
  alice = await pki.issue(ALICE, { notAfter: EPOCH + 3_600_000 });
  bob = await pki.issue(BOB);
  dir = mkdtempSync(join(tmpdir(), 'agentid-wc-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

beforeEach(async () => {
  server = await FakeWorkloadServer.start(join(dir, `api-${Math.random().toString(36).slice(2)}.sock`));
  client = new WorkloadApiClient({ socketPath: `unix://${server.socketPath}` });
});
afterEach(() => {
  client.close();
  server.stop();
});

describe('fetchX509Context', () => {
  it('sends workload.spiffe.io: true and decodes chains, keys, bundles, hints, CRLs and federated bundles', async () => {
    server.set('FetchX509SVID', x509Response());
    const ctx = await client.fetchX509Context();

    expect(server.calls.map((c) => [c.method, c.header])).toEqual([['FetchX509SVID', ['true']]]);
    expect(ctx.svids.map((s) => [s.spiffeId, s.hint])).toEqual([[ALICE, 'primary'], [BOB, '']]);
    const [a] = ctx.svids;
    expect(a!.chainDer.map((d) => d.toString('hex'))).toEqual(alice.chain.map((d) => d.toString('hex')));
    expect(a!.bundleDer).toEqual([pki.root.der]);
    expect(a!.notAfter).toBe(EPOCH + 3_600_000);
    expect(a!.notAfter).toBe(Date.parse(new X509Certificate(alice.chain[0]!).validTo));
    // The decoded key really is the leaf's key: a signature by it verifies under the leaf.
    const key = createPrivateKey({ key: a!.keyPkcs8Der.reveal(), format: 'der', type: 'pkcs8' });
    const sig = sign('sha256', Buffer.from('proof'), key);
    expect(verify('sha256', Buffer.from('proof'), new X509Certificate(a!.chainDer[0]!).publicKey, sig)).toBe(true);
    expect(ctx.crls).toEqual([pki.crl]);
    expect([...ctx.federatedBundles]).toEqual([['spiffe://partner.example', [pki.federatedRoot.der]]]);
  });

  it('never prints the private key', async () => {
    server.set('FetchX509SVID', x509Response());
    const ctx = await client.fetchX509Context();
    const keyHex = alice.keyPkcs8.toString('hex');
    const keyB64 = alice.keyPkcs8.toString('base64');
    for (const text of [JSON.stringify(ctx.svids[0]), inspect(ctx, { depth: 10 }), `${ctx.svids[0]!.keyPkcs8Der}`]) {
      expect(text).not.toContain(keyHex.slice(0, 64));
      expect(text).not.toContain(keyB64.slice(0, 40));
    }
  });

  it('normalises a bare trust-domain key in federated_bundles to spiffe://', async () => {
    server.set('FetchX509SVID', { ...x509Response(), federated_bundles: { 'partner.example': pki.federatedRoot.der } });
    const ctx = await client.fetchX509Context();
    expect([...ctx.federatedBundles.keys()]).toEqual(['spiffe://partner.example']);
  });

  it('cancels the stream once it has the first message', async () => {
    server.set('FetchX509SVID', x509Response());
    await client.fetchX509Context();
    await server.waitForCancel('FetchX509SVID');
    expect(server.openStreams('FetchX509SVID')).toBe(0);
  });

  // Each fixture carries one defect; the whole message must be refused, naming the rule.
  const svidWith = (patch: Partial<NonNullable<RawX509SvidResponse['svids']>[number]>): (() => RawX509SvidResponse) => () => {
    const r = x509Response();
    r.svids![0] = { ...r.svids![0], ...patch };
    return r;
  };
  it.each<[string, () => RawX509SvidResponse | Promise<RawX509SvidResponse>, RegExp]>([
    ['no-svids', () => ({ svids: [] }), /svids: must hold at least one SVID/],
    ['spiffe-id-not-a-spiffe-id', svidWith({ spiffe_id: 'https://example.org/x' }), /svids\[0\]\.spiffe_id: .*scheme must be "spiffe:\/\/"/],
    ['spiffe-id-differs-from-uri-san', svidWith({ spiffe_id: BOB }), /exactly one URI SAN equal to spiffe:\/\/example.org\/agent\/bob/],
    ['empty-chain', svidWith({ x509_svid: Buffer.alloc(0) }), /svids\[0\]\.x509_svid: holds no certificates/],
    ['truncated-chain', () => svidWith({ x509_svid: Buffer.concat(alice.chain).subarray(0, 300) })(), /svids\[0\]\.x509_svid: element 0 is truncated/],
    ['chain-element-not-a-certificate', svidWith({ x509_svid: Buffer.from([0x30, 0x03, 0x02, 0x01, 0x01]) }), /x509_svid\[0\]: is not a valid DER certificate/],
    ['key-from-another-pair', async () => svidWith({ x509_svid_key: await pki.strayKeyPkcs8() })(), /x509_svid_key: does not match the leaf/],
    ['key-is-sec1-not-pkcs8', () => {
      const sec1 = createPrivateKey({ key: alice.keyPkcs8, format: 'der', type: 'pkcs8' }).export({ format: 'der', type: 'sec1' });
      return svidWith({ x509_svid_key: sec1 })();
    }, /x509_svid_key: is not an unencrypted PKCS#8 DER private key/],
    ['key-missing', svidWith({ x509_svid_key: Buffer.alloc(0) }), /x509_svid_key: is not an unencrypted PKCS#8/],
    ['bundle-empty', svidWith({ bundle: Buffer.alloc(0) }), /svids\[0\]\.bundle: holds no certificates/],
    ['crl-two-in-one-element', () => ({ ...x509Response(), crl: [Buffer.concat([pki.crl, pki.crl])] }), /crl\[0\]: must hold exactly one DER CRL/],
    ['federated-key-has-path', () => ({ ...x509Response(), federated_bundles: { 'spiffe://partner.example/x': pki.federatedRoot.der } }), /federated_bundles key: .*must not have a path/],
    ['federated-key-uppercase', () => ({ ...x509Response(), federated_bundles: { 'spiffe://Partner.example': pki.federatedRoot.der } }), /federated_bundles key: .*lowercase/],
    ['federated-same-td-twice', () => ({
      ...x509Response(),
      federated_bundles: { 'spiffe://partner.example': pki.federatedRoot.der, 'partner.example': pki.federatedRoot.der },
    }), /trust domain spiffe:\/\/partner.example appears twice/],
    ['federated-bundle-empty', () => ({ ...x509Response(), federated_bundles: { 'spiffe://partner.example': Buffer.alloc(0) } }), /federated_bundles\[spiffe:\/\/partner.example\]: holds no certificates/],
  ])('refuses a response with %s', async (_name, make, message) => {
    server.set('FetchX509SVID', await make());
    const err = await rejection(client.fetchX509Context());
    expect(err.code).toBe('internal');
    expect(err.message).toMatch(/^Workload API sent a malformed X509SVIDResponse: /);
    expect(err.message).toMatch(message);
    expect(err.message).not.toContain(alice.keyPkcs8.toString('base64').slice(0, 40));
    expect(err.message).not.toContain(alice.keyPkcs8.toString('hex').slice(0, 64));
  });

  it('refuses a leaf with two URI SANs', async () => {
    const two = await pki.issue(ALICE, { uris: [ALICE, BOB] });
    server.set('FetchX509SVID', { svids: [{ spiffe_id: ALICE, x509_svid: Buffer.concat(two.chain), x509_svid_key: two.keyPkcs8, bundle: pki.root.der }] });
    expect((await rejection(client.fetchX509Context())).message).toMatch(/exactly one URI SAN/);
  });

  it.each<[string, grpc.status, ErrorCode]>([
    ['PERMISSION_DENIED', grpc.status.PERMISSION_DENIED, 'permission_denied'],
    ['UNAVAILABLE', grpc.status.UNAVAILABLE, 'unavailable'],
    ['UNIMPLEMENTED', grpc.status.UNIMPLEMENTED, 'unimplemented'],
    ['INVALID_ARGUMENT', grpc.status.INVALID_ARGUMENT, 'invalid_argument'],
    ['INTERNAL', grpc.status.INTERNAL, 'internal'],
  ])('maps %s to code %s', async (_name, status, code) => {
    server.failures.FetchX509SVID = { code: status, details: 'no identity issued' };
    const err = await rejection(client.fetchX509Context());
    expect(err.code).toBe(code);
    expect(err).toBeInstanceOf(WorkloadApiError);
    expect((err as WorkloadApiError).grpcCode).toBe(status);
    expect(err.message).toBe(`Workload API FetchX509SVID: ${grpc.status[status]}: no identity issued`);
  });

  it('reports an endpoint with nothing listening as unavailable', async () => {
    const lonely = new WorkloadApiClient({ socketPath: join(dir, 'nobody-home.sock') });
    try {
      expect((await rejection(lonely.fetchX509Context())).code).toBe('unavailable');
    } finally {
      lonely.close();
    }
  });

  it('rejects with an AbortError when the signal aborts before the first message', async () => {
    const controller = new AbortController();
    const pending = client.fetchX509Context({ signal: controller.signal });
    await server.waitForCalls('FetchX509SVID', 1);
    controller.abort();
    await expect(pending).rejects.toMatchObject({ name: 'AbortError' });
    await server.waitForCancel('FetchX509SVID');
  });

  it('refuses calls after close() with failed_precondition', async () => {
    client.close();
    expect((await rejection(client.fetchX509Context())).code).toBe('failed_precondition');
    expect((await rejection(client.fetchJwtSvid({ audience: ['a'] }))).code).toBe('failed_precondition');
  });
});

describe('the security header', () => {
  it('is sent on every method', async () => {
    server.set('FetchX509SVID', x509Response());
    server.set('FetchX509Bundles', { bundles: { 'spiffe://example.org': pki.root.der } });
    server.set('FetchJWTBundles', { bundles: { 'spiffe://example.org': Buffer.from('{"keys":[]}') } });
    server.jwtSvid = () => ({ svids: [{ spiffe_id: ALICE, svid: fakeJwt({ sub: ALICE, aud: 'x', exp: 2e9 }) }] });
    server.validate = () => ({ spiffe_id: ALICE, claims: toStruct({}) });
    await client.fetchX509Context();
    await client.fetchX509Bundles();
    await client.fetchJwtBundles();
    await client.fetchJwtSvid({ audience: ['x'] });
    await client.validateJwtSvid('a.b.c', 'x');
    expect(server.calls.map((c) => [c.method, c.header])).toEqual([
      ['FetchX509SVID', ['true']],
      ['FetchX509Bundles', ['true']],
      ['FetchJWTBundles', ['true']],
      ['FetchJWTSVID', ['true']],
      ['ValidateJWTSVID', ['true']],
    ]);
  });

  it('is what the server checks: a bare grpc-js client without it gets INVALID_ARGUMENT', async () => {
    const Ctor = workloadService();
    const bare = new Ctor(`unix://${server.socketPath}`, grpc.credentials.createInsecure()) as unknown as {
      FetchJWTSVID(req: object, cb: (err: grpc.ServiceError | null) => void): void;
      close(): void;
    };
    const err = await new Promise<grpc.ServiceError | null>((resolve) => bare.FetchJWTSVID({ audience: ['x'] }, resolve));
    bare.close();
    expect(err?.code).toBe(grpc.status.INVALID_ARGUMENT);
  });
});

describe('bundles', () => {
  it('fetchX509Bundles decodes every trust domain and the CRLs', async () => {
    server.set('FetchX509Bundles', {
      bundles: { 'spiffe://example.org': Buffer.concat([pki.root.der, pki.intermediate.der]), 'spiffe://partner.example': pki.federatedRoot.der },
      crl: [pki.crl],
    });
    const b = await client.fetchX509Bundles();
    expect([...b.bundles]).toEqual([
      ['spiffe://example.org', [pki.root.der, pki.intermediate.der]],
      ['spiffe://partner.example', [pki.federatedRoot.der]],
    ]);
    expect(b.crls).toEqual([pki.crl]);
  });

  it('fetchX509Bundles refuses an empty bundle map', async () => {
    server.set('FetchX509Bundles', { bundles: {} });
    expect((await rejection(client.fetchX509Bundles())).message).toMatch(/must hold at least the own trust domain/);
  });

  const jwks = { keys: [{ kty: 'EC', kid: 'k1', crv: 'P-256', x: 'AA', y: 'BB' }] };
  it('fetchJwtBundles decodes JWK sets', async () => {
    server.set('FetchJWTBundles', { bundles: { 'spiffe://example.org': Buffer.from(JSON.stringify(jwks)) } });
    const b = await client.fetchJwtBundles();
    expect([...b]).toEqual([['spiffe://example.org', jwks]]);
  });

  it.each([
    ['not-json', 'not json', /bundles\[spiffe:\/\/example.org\]: is not JSON/],
    ['no-keys-array', '{"keys":{}}', /is not a JWK Set/],
    ['json-null', 'null', /is not a JWK Set/],
    ['jwk-without-kid', JSON.stringify({ keys: [{ kty: 'EC', crv: 'P-256', x: 'AA', y: 'BB' }] }), /keys\[0\]: has no "kid"/],
    ['jwk-without-kty', JSON.stringify({ keys: [{ kid: 'k1' }] }), /keys\[0\]: has no "kty"/],
    ['jwk-not-an-object', JSON.stringify({ keys: ['k1'] }), /keys\[0\]: is not an object/],
  ])('fetchJwtBundles refuses a set with %s', async (_name, body, message) => {
    server.set('FetchJWTBundles', { bundles: { 'spiffe://example.org': Buffer.from(body) } });
    const err = await rejection(client.fetchJwtBundles());
    expect(err.code).toBe('internal');
    expect(err.message).toMatch(message);
  });
});

describe('JWT-SVIDs', () => {
  it('sends every audience and the requested ID, and decodes exp and aud', async () => {
    const token = fakeJwt({ sub: ALICE, aud: ['svc-a', 'svc-b'], exp: 1_900_000_000, iat: 1_899_999_000 });
    server.jwtSvid = () => ({ svids: [{ spiffe_id: ALICE, svid: token, hint: 'h' }] });
    const svid = await client.fetchJwtSvid({ audience: ['svc-a', 'svc-b'], spiffeId: ALICE });
    expect(server.calls[0]!.request).toEqual({ audience: ['svc-a', 'svc-b'], spiffe_id: ALICE });
    expect(svid.spiffeId).toBe(ALICE);
    expect(svid.token.reveal()).toBe(token);
    expect(svid.hint).toBe('h');
    expect(svid.expiresAt).toBe(1_900_000_000_000);
    expect(svid.audience).toEqual(['svc-a', 'svc-b']);
    expect(JSON.stringify(svid)).not.toContain(token);
  });

  it('fetchJwtSvids returns every SVID in order; fetchJwtSvid the first', async () => {
    server.jwtSvid = () => ({
      svids: [
        { spiffe_id: ALICE, svid: fakeJwt({ sub: ALICE, aud: 'x', exp: 2e9 }) },
        { spiffe_id: BOB, svid: fakeJwt({ sub: BOB, aud: 'x', exp: 2e9 }) },
      ],
    });
    expect((await client.fetchJwtSvids({ audience: ['x'] })).map((s) => s.spiffeId)).toEqual([ALICE, BOB]);
    expect((await client.fetchJwtSvid({ audience: ['x'] })).spiffeId).toBe(ALICE);
  });

  it.each<[string, Parameters<WorkloadApiClient['fetchJwtSvid']>[0], RegExp]>([
    ['no-audience', { audience: [] }, /audience must hold at least one value/],
    ['empty-audience-value', { audience: ['a', ''] }, /audience values must be non-empty strings/],
    ['bad-spiffe-id', { audience: ['a'], spiffeId: 'spiffe://Example.org/x' }, /lowercase/],
  ])('refuses a request with %s before calling the server', async (_name, params, message) => {
    const err = await rejection(client.fetchJwtSvid(params));
    expect(err.code).toBe('invalid_argument');
    expect(err.message).toMatch(message);
    expect(server.calls).toHaveLength(0);
  });

  const secretToken = fakeJwt({ sub: BOB, aud: 'x', exp: 2e9, secret: 'do-not-leak' });
  it.each([
    ['sub-differs-from-spiffe-id', { spiffe_id: ALICE, svid: secretToken }, /sub claim must equal/],
    ['not-three-parts', { spiffe_id: ALICE, svid: 'abc.def' }, /is not a JWS compact serialization/],
    ['payload-not-json', { spiffe_id: ALICE, svid: 'a.bm90IGpzb24.c' }, /payload is not base64url JSON/],
    ['exp-missing', { spiffe_id: ALICE, svid: fakeJwt({ sub: ALICE, aud: 'x' }) }, /exp claim must be a number/],
    ['aud-missing', { spiffe_id: ALICE, svid: fakeJwt({ sub: ALICE, exp: 2e9 }) }, /aud claim must be/],
  ])('refuses a JWT-SVID with %s, without echoing the token', async (_name, svid, message) => {
    server.jwtSvid = () => ({ svids: [svid] });
    const err = await rejection(client.fetchJwtSvid({ audience: ['x'] }));
    expect(err.code).toBe('internal');
    expect(err.message).toMatch(message);
    expect(err.message).not.toContain(svid.svid);
  });

  it('refuses an SVID for another identity than the one asked for', async () => {
    server.jwtSvid = () => ({ svids: [{ spiffe_id: BOB, svid: fakeJwt({ sub: BOB, aud: 'x', exp: 2e9 }) }] });
    expect((await rejection(client.fetchJwtSvid({ audience: ['x'], spiffeId: ALICE }))).message).toMatch(/another identity/);
  });

  it('maps PERMISSION_DENIED on FetchJWTSVID to permission_denied', async () => {
    server.failures.FetchJWTSVID = { code: grpc.status.PERMISSION_DENIED, details: 'no identity issued' };
    expect((await rejection(client.fetchJwtSvid({ audience: ['x'] }))).code).toBe('permission_denied');
  });

  it('validateJwtSvid sends one audience and converts the claims Struct to JSON', async () => {
    server.validate = () => ({
      spiffe_id: ALICE,
      claims: toStruct({ sub: ALICE, aud: ['x'], exp: 1_900_000_000, nested: { ok: true, none: null } }),
    });
    const out = await client.validateJwtSvid('h.p.s', 'x');
    expect(server.calls[0]!.request).toEqual({ audience: 'x', svid: 'h.p.s' });
    expect(out).toEqual({ spiffeId: ALICE, claims: { sub: ALICE, aud: ['x'], exp: 1_900_000_000, nested: { ok: true, none: null } } });
  });

  it('validateJwtSvid maps a refused token (INVALID_ARGUMENT) to invalid_argument', async () => {
    server.failures.ValidateJWTSVID = { code: grpc.status.INVALID_ARGUMENT, details: 'token has expired' };
    const err = await rejection(client.validateJwtSvid('h.p.s', 'x'));
    expect(isAgentIdError(err, 'invalid_argument')).toBe(true);
  });
});

describe('watchX509Context', () => {
  it('delivers every update, keeps the stream through a bad message, and cancels on abort', async () => {
    server.set('FetchX509SVID', x509Response());
    const updates: X509Context[] = [];
    const errors: AgentIdError[] = [];
    const controller = new AbortController();
    let seen = 0;
    let wake: () => void = () => {};
    const next = () => new Promise<void>((r) => (wake = r));
    const watching = client.watchX509Context(
      (ctx) => {
        updates.push(ctx);
        seen++;
        wake();
      },
      (err) => {
        errors.push(err);
        seen++;
        wake();
      },
      controller.signal,
    );
    let step = next();
    while (seen < 1) await step;

    step = next();
    server.set('FetchX509SVID', { svids: [] });
    while (seen < 2) await step;
    expect(errors.map((e) => e.code)).toEqual(['internal']);

    step = next();
    server.set('FetchX509SVID', { ...x509Response(), svids: x509Response().svids!.slice(1) });
    while (seen < 3) await step;
    expect(updates.map((u) => u.svids.map((s) => s.spiffeId))).toEqual([[ALICE, BOB], [BOB]]);

    controller.abort();
    await expect(watching).resolves.toBeUndefined();
    await server.waitForCancel('FetchX509SVID');
  });

  it('rejects when the server ends the stream with a status', async () => {
    server.set('FetchX509SVID', x509Response());
    let first: () => void = () => {};
    const got = new Promise<void>((r) => (first = r));
    const watching = client.watchX509Context(() => first(), () => {});
    await got;
    server.endStreams('FetchX509SVID', { code: grpc.status.PERMISSION_DENIED, details: 'no identity issued' });
    expect((await rejection(watching)).code).toBe('permission_denied');
  });
});

describe('structToJson', () => {
  it('reads both the camelCase form protobufjs produces and the snake_case form of the .proto', () => {
    const camel = { fields: { n: { numberValue: 1, kind: 'numberValue' }, l: { listValue: { values: [{ stringValue: 's' }] } } } };
    const snake = { fields: { n: { number_value: 1 }, l: { list_value: { values: [{ string_value: 's' }] } } } };
    expect(structToJson(camel)).toEqual({ n: 1, l: ['s'] });
    expect(structToJson(snake)).toEqual({ n: 1, l: ['s'] });
    expect(structToJson(null)).toEqual({});
  });
});
