import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import * as grpc from '@grpc/grpc-js';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { AgentIdError } from '../common/errors.js';
import type { RawX509SvidResponse } from './decode.js';
import { BundleSource, JwtSource, X509Source } from './sources.js';
import { FakeWorkloadServer } from './test-support/fake-workload-server.js';
import { createTestPki, EPOCH, fakeJwt, type TestPki, type TestSvid } from './test-support/pki.js';
import { WorkloadApiClient } from './workload-client.js';

const ALICE = 'spiffe://example.org/agent/alice/task/t1';
const BOB = 'spiffe://example.org/agent/bob/task/t2';
const HOUR = 3_600_000;

let pki: TestPki;
let alice: TestSvid;
let bob: TestSvid;
let dir: string;
let server: FakeWorkloadServer;
let clock: ManualClock;
const cleanups: (() => Promise<void> | void)[] = [];

function svidMsg(s: TestSvid) {
  return { spiffe_id: s.spiffeId, x509_svid: Buffer.concat(s.chain), x509_svid_key: s.keyPkcs8, bundle: pki.root.der, hint: '' };
}

function x509Response(...svids: TestSvid[]): RawX509SvidResponse {
  return {
    svids: svids.map(svidMsg),
    crl: [pki.crl],
    // A federated entry named like the own trust domain must not displace the SVID's own bundle.
    federated_bundles: { 'spiffe://partner.example': pki.federatedRoot.der, 'spiffe://example.org': pki.federatedRoot.der },
  };
}

/** Advances the manual clock in backoff-sized steps, letting real I/O run, until `done()` holds. */
async function advanceUntil(done: () => boolean): Promise<void> {
  for (let i = 0; i < 400 && !done(); i++) {
    await clock.advance(30_000);
    await delay(10);
  }
  expect(done()).toBe(true);
}

function track<T extends { close(): unknown }>(thing: T): T {
  cleanups.push(async () => {
    await thing.close();
  });
  return thing;
}

beforeAll(async () => {
  pki = await createTestPki();
  alice = await pki.issue(ALICE, { notAfter: EPOCH + HOUR });
  bob = await pki.issue(BOB, { notAfter: EPOCH + 2 * HOUR });
  dir = mkdtempSync(join(tmpdir(), 'agentid-src-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

beforeEach(async () => {
  clock = new ManualClock(EPOCH);
  server = await FakeWorkloadServer.start(join(dir, `api-${Math.random().toString(36).slice(2)}.sock`));
});
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
  server.stop();
});

describe('X509Source', () => {
  it('create() waits for the first update, then serves svids[0], bundles and CRLs', async () => {
    let resolved = false;
    const creating = X509Source.create({ socketPath: server.socketPath, clock }).then((s) => {
      resolved = true;
      return track(s);
    });
    await server.waitForCalls('FetchX509SVID', 1);
    await delay(50);
    expect(resolved).toBe(false);

    server.set('FetchX509SVID', x509Response(alice, bob));
    const source = await creating;
    expect(source.getX509Svid().spiffeId).toBe(ALICE);
    expect(source.getX509Context().svids).toHaveLength(2);
    expect([...source.getBundles()].sort()).toEqual([
      ['spiffe://example.org', [pki.root.der]],
      ['spiffe://partner.example', [pki.federatedRoot.der]],
    ]);
    expect(source.getBundleForTrustDomain('example.org')).toEqual([pki.root.der]);
    expect(source.getBundleForTrustDomain('spiffe://nowhere.example')).toBeUndefined();
    expect(source.getCrls()).toEqual([pki.crl]);
  });

  it('uses the picker to choose the SVID', async () => {
    server.set('FetchX509SVID', x509Response(alice, bob));
    const source = track(
      await X509Source.create({ socketPath: server.socketPath, clock, picker: (svids) => svids.find((s) => s.spiffeId === BOB) }),
    );
    expect(source.getX509Svid().spiffeId).toBe(BOB);
  });

  it('emits update for every stream message and serves the newest state', async () => {
    server.set('FetchX509SVID', x509Response(alice));
    const source = track(await X509Source.create({ socketPath: server.socketPath, clock }));
    const next = once(source, 'update');
    server.set('FetchX509SVID', x509Response(bob));
    const [ctx] = await next;
    expect(ctx.svids.map((s: { spiffeId: string }) => s.spiffeId)).toEqual([BOB]);
    expect(source.getX509Svid().spiffeId).toBe(BOB);
  });

  it('reconnects by itself after the server goes away and picks up the new state', async () => {
    server.set('FetchX509SVID', x509Response(alice));
    const source = track(await X509Source.create({ socketPath: server.socketPath, clock }));
    const errors: AgentIdError[] = [];
    source.on('watchError', (e) => errors.push(e));
    const updates: string[] = [];
    source.on('update', (ctx) => updates.push(ctx.svids[0]!.spiffeId));

    server.stop();
    while (errors.length === 0) await once(source, 'watchError');
    expect(errors[0]!.code).toBe('unavailable');
    // The old state stays served while the agent is away.
    expect(source.getX509Svid().spiffeId).toBe(ALICE);

    server.set('FetchX509SVID', x509Response(bob));
    await server.restart();
    await advanceUntil(() => updates.length > 0);
    expect(updates).toEqual([BOB]);
    expect(source.getX509Svid().spiffeId).toBe(BOB);
    expect(server.openStreams('FetchX509SVID')).toBe(1);
  });

  it('retries PERMISSION_DENIED with backoff on the clock until an identity is issued', async () => {
    server.failures.FetchX509SVID = { code: grpc.status.PERMISSION_DENIED, details: 'no identity issued' };
    server.set('FetchX509SVID', x509Response(alice));
    let source: X509Source | undefined;
    const creating = X509Source.create({ socketPath: server.socketPath, clock, random: () => 0 }).then((s) => (source = track(s)));

    await server.waitForCalls('FetchX509SVID', 1);
    while (clock.pendingSleeps() === 0) await delay(5);
    // Nothing happens until the backoff (125 ms with random 0) has passed on the injected clock.
    await delay(50);
    expect(server.calls).toHaveLength(1);
    await clock.advance(124);
    await delay(20);
    expect(server.calls).toHaveLength(1);
    await clock.advance(1);
    await server.waitForCalls('FetchX509SVID', 2);

    delete server.failures.FetchX509SVID;
    await advanceUntil(() => source !== undefined);
    await creating;
    expect(source!.getX509Svid().spiffeId).toBe(ALICE);
  });

  it.each([
    ['INVALID_ARGUMENT', 'invalid_argument', grpc.status.INVALID_ARGUMENT],
    ['UNIMPLEMENTED', 'unimplemented', grpc.status.UNIMPLEMENTED],
  ])('does not retry %s: create() rejects with %s after one call', async (_name, code, status) => {
    server.failures.FetchX509SVID = { code: status, details: 'nope' };
    const client = new WorkloadApiClient({ socketPath: server.socketPath });
    cleanups.push(() => client.close());
    await expect(X509Source.create({ client, clock })).rejects.toMatchObject({ code });
    await delay(50);
    expect(server.calls).toHaveLength(1);
    expect(clock.pendingSleeps()).toBe(0);
    // A borrowed client stays open for its owner.
    expect(client.isClosed).toBe(false);
  });

  it('emits stopped and keeps its last state when a running stream fails for good', async () => {
    server.set('FetchX509SVID', x509Response(alice));
    const source = track(await X509Source.create({ socketPath: server.socketPath, clock }));
    const stopped = once(source, 'stopped');
    server.endStreams('FetchX509SVID', { code: grpc.status.INVALID_ARGUMENT, details: 'bad request' });
    const [err] = await stopped;
    expect(err.code).toBe('invalid_argument');
    expect(source.stopError).toBe(err);
    expect(source.getX509Svid().spiffeId).toBe(ALICE);
  });

  it('close() cancels the stream on the server and refuses later reads', async () => {
    server.set('FetchX509SVID', x509Response(alice));
    const source = await X509Source.create({ socketPath: server.socketPath, clock });
    expect(server.openStreams('FetchX509SVID')).toBe(1);
    await source.close();
    await server.waitForCancel('FetchX509SVID');
    expect(server.openStreams('FetchX509SVID')).toBe(0);
    expect(() => source.getX509Svid()).toThrow(expect.objectContaining({ code: 'failed_precondition' }));
    await source.close();
  });

  it('refuses to hand out an expired SVID when no update has come', async () => {
    server.set('FetchX509SVID', x509Response(alice));
    const source = track(await X509Source.create({ socketPath: server.socketPath, clock }));
    clock.set(EPOCH + HOUR - 1);
    expect(source.getX509Svid().spiffeId).toBe(ALICE);
    clock.set(EPOCH + HOUR);
    expect(() => source.getX509Svid()).toThrow(expect.objectContaining({ code: 'unavailable', message: expect.stringMatching(/expired at/) }));
  });

  it('create() gives up with an AbortError when its signal aborts, and closes what it opened', async () => {
    const controller = new AbortController();
    const creating = X509Source.create({ socketPath: join(dir, 'nobody-home.sock'), clock, signal: controller.signal });
    while (clock.pendingSleeps() === 0) await delay(5);
    controller.abort();
    await expect(creating).rejects.toMatchObject({ name: 'AbortError' });
    expect(clock.pendingSleeps()).toBe(0);
  });
});

describe('BundleSource', () => {
  const jwks = (kid: string) => Buffer.from(JSON.stringify({ keys: [{ kty: 'EC', kid, crv: 'P-256', x: 'AA', y: 'BB' }] }));

  it('waits for both streams, then follows each', async () => {
    server.set('FetchX509Bundles', { bundles: { 'spiffe://example.org': pki.root.der }, crl: [pki.crl] });
    let resolved = false;
    const creating = BundleSource.create({ socketPath: server.socketPath, clock }).then((s) => {
      resolved = true;
      return track(s);
    });
    await server.waitForCalls('FetchJWTBundles', 1);
    await delay(50);
    expect(resolved).toBe(false);
    server.set('FetchJWTBundles', { bundles: { 'spiffe://example.org': jwks('k1') } });
    const source = await creating;

    expect(source.getX509BundleForTrustDomain('example.org')).toEqual([pki.root.der]);
    expect(source.getCrls()).toEqual([pki.crl]);
    expect(source.getJwtBundleForTrustDomain('spiffe://example.org')?.keys.map((k) => k.kid)).toEqual(['k1']);

    const next = once(source, 'update');
    server.set('FetchJWTBundles', { bundles: { 'spiffe://example.org': jwks('k2'), 'spiffe://partner.example': jwks('p1') } });
    const [update] = await next;
    expect(update.kind).toBe('jwt');
    expect([...source.getJwtBundles().keys()]).toEqual(['spiffe://example.org', 'spiffe://partner.example']);
    expect(source.getJwtBundleForTrustDomain('example.org')?.keys[0]?.kid).toBe('k2');
  });

  it('follows only the streams asked for', async () => {
    server.set('FetchX509Bundles', { bundles: { 'spiffe://example.org': pki.root.der } });
    const source = track(await BundleSource.create({ socketPath: server.socketPath, clock, jwt: false }));
    expect(source.getX509Bundles().size).toBe(1);
    expect(() => source.getJwtBundles()).toThrow(/not following JWT bundles/);
    expect(server.calls.map((c) => c.method)).toEqual(['FetchX509Bundles']);
  });

  it('close() cancels both streams', async () => {
    server.set('FetchX509Bundles', { bundles: { 'spiffe://example.org': pki.root.der } });
    server.set('FetchJWTBundles', { bundles: { 'spiffe://example.org': jwks('k1') } });
    const source = await BundleSource.create({ socketPath: server.socketPath, clock });
    await source.close();
    await server.waitForCancel('FetchX509Bundles');
    await server.waitForCancel('FetchJWTBundles');
  });
});

describe('JwtSource', () => {
  const LIFETIME_S = 600;
  let issued = 0;
  beforeEach(() => {
    issued = 0;
    server.jwtSvid = (req) => {
      issued++;
      const exp = Math.floor(clock.now() / 1000) + LIFETIME_S;
      return { svids: [{ spiffe_id: ALICE, svid: fakeJwt({ sub: ALICE, aud: req.audience, exp, n: issued }) }] };
    };
  });
  const serial = (token: { reveal(): string }) =>
    (JSON.parse(Buffer.from(token.reveal().split('.')[1]!, 'base64url').toString()) as { n: number }).n;

  it('caches a token until half its lifetime has passed, whatever the audience order', async () => {
    const source = track(await JwtSource.create({ socketPath: server.socketPath, clock }));
    const first = await source.fetchJwtSvid({ audience: ['b', 'a'] });
    expect(serial(first.token)).toBe(1);
    await clock.advance((LIFETIME_S / 2) * 1000 - 1);
    expect(serial((await source.fetchJwtSvid({ audience: ['a', 'b'] })).token)).toBe(1);
    expect(issued).toBe(1);
    await clock.advance(1);
    expect(serial((await source.fetchJwtSvid({ audience: ['a', 'b'] })).token)).toBe(2);
    // A different audience set or identity is a different token.
    await source.fetchJwtSvid({ audience: ['a'] });
    await source.fetchJwtSvid({ audience: ['a'], spiffeId: ALICE });
    expect(issued).toBe(4);
  });

  it('shares one call among concurrent requests', async () => {
    const source = track(await JwtSource.create({ socketPath: server.socketPath, clock }));
    const all = await Promise.all([1, 2, 3].map(() => source.fetchJwtSvid({ audience: ['a'] })));
    expect(all.map((s) => serial(s.token))).toEqual([1, 1, 1]);
    expect(issued).toBe(1);
  });

  it('serves the cached token while the agent is unavailable, but drops it on permission_denied', async () => {
    const source = track(await JwtSource.create({ socketPath: server.socketPath, clock }));
    await source.fetchJwtSvid({ audience: ['a'] });
    await clock.advance((LIFETIME_S / 2) * 1000);

    server.failures.FetchJWTSVID = { code: grpc.status.UNAVAILABLE, details: 'workload attestation failed' };
    expect(serial((await source.fetchJwtSvid({ audience: ['a'] })).token)).toBe(1);

    server.failures.FetchJWTSVID = { code: grpc.status.PERMISSION_DENIED, details: 'no identity issued' };
    await expect(source.fetchJwtSvid({ audience: ['a'] })).rejects.toMatchObject({ code: 'permission_denied' });
    // Revoked means revoked: not even an unavailable agent brings the old token back.
    server.failures.FetchJWTSVID = { code: grpc.status.UNAVAILABLE, details: 'down' };
    await expect(source.fetchJwtSvid({ audience: ['a'] })).rejects.toMatchObject({ code: 'unavailable' });
  });

  it('does not serve an expired token even when the agent is unavailable', async () => {
    const source = track(await JwtSource.create({ socketPath: server.socketPath, clock }));
    await source.fetchJwtSvid({ audience: ['a'] });
    await clock.advance(LIFETIME_S * 1000);
    server.failures.FetchJWTSVID = { code: grpc.status.UNAVAILABLE, details: 'down' };
    await expect(source.fetchJwtSvid({ audience: ['a'] })).rejects.toMatchObject({ code: 'unavailable' });
  });

  it('refuses use after close()', async () => {
    const source = await JwtSource.create({ socketPath: server.socketPath, clock });
    await source.close();
    await expect(source.fetchJwtSvid({ audience: ['a'] })).rejects.toMatchObject({ code: 'failed_precondition' });
  });
});
