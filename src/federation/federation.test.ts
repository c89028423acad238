import { mkdtempSync, rmSync, statSync, writeFileSync, chmodSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { silentLogger } from '../common/logger.js';
import { Federation, FEDERATION_LIMITS, type FederationDeps, type FederationRelationship } from './federation.js';
import type { BundleFetcher } from './fetch.js';
import {
  bundleDoc,
  issueSvid,
  issueWebCert,
  jwtBundle,
  makeRoot,
  startEndpoint,
  startTlsCounter,
  until,
  type Endpoint,
  type Leaf,
  type Root,
} from './testing.js';

const EPOCH = Date.UTC(2026, 0, 1);
const TD = 'partner.example';
const OWN = 'example.org';
const ENDPOINT_ID = `spiffe://${TD}/bundle-endpoint`;

let dir: string;
let webRoot: Root;
let webLeaf: Leaf;
let caFile: string;
let rootA: Root;
let rootB: Root;
let rootC: Root;
const cleanups: (() => Promise<void> | void)[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'agentid-federation-'));
  webRoot = await makeRoot('web root');
  webLeaf = await issueWebCert(webRoot);
  caFile = join(dir, 'web-ca.pem');
  writeFileSync(caFile, webRoot.pem);
  [rootA, rootB, rootC] = await Promise.all([makeRoot('partner root A'), makeRoot('partner root B'), makeRoot('unrelated root C')]);
});

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

function rel(over: Partial<FederationRelationship> = {}): FederationRelationship {
  return {
    trustDomain: TD,
    bundleEndpointUrl: 'https://127.0.0.1:9/',
    profile: 'https_web',
    endpointSpiffeId: null,
    bootstrapBundleFile: null,
    caFile,
    ...over,
  };
}

function spiffeRel(url: string, bootstrapBundleFile: string | null, over: Partial<FederationRelationship> = {}) {
  return rel({ bundleEndpointUrl: url, profile: 'https_spiffe', endpointSpiffeId: ENDPOINT_ID, bootstrapBundleFile, caFile: null, ...over });
}

function federation(relationships: FederationRelationship[], extra: Partial<FederationDeps> = {}) {
  const clock = (extra.clock as ManualClock | undefined) ?? new ManualClock(EPOCH);
  const changes = { count: 0 };
  const fed = new Federation({
    relationships,
    ownTrustDomain: OWN,
    clock,
    logger: silentLogger(),
    onChange: () => changes.count++,
    ...extra,
  });
  cleanups.push(() => fed.stop());
  return { fed, clock, changes, status: () => fed.status()[0]! };
}

async function endpoint(leaf: Leaf, doc: string): Promise<Endpoint> {
  const ep = await startEndpoint(leaf, doc);
  cleanups.push(() => ep.close());
  return ep;
}

function file(name: string, content: string): string {
  const p = join(dir, name);
  writeFileSync(p, content, { mode: 0o600 });
  return p;
}

const derOf = (...roots: Root[]) => roots.map((r) => r.der);

/**
 * Moves the clock exactly to the next poll. Advancing further would also fire the 10 s timeout of
 * the fetch that poll starts, since the network answers in real time, not on the manual clock.
 */
async function toNextPoll(clock: ManualClock, fed: Federation): Promise<void> {
  await clock.advance(fed.status()[0]!.nextPollAt! - clock.now());
}

describe('Federation construction', () => {
  const refusals: [string, () => FederationRelationship[], RegExp][] = [
    ['own-trust-domain', () => [rel({ trustDomain: OWN })], /our own trust domain/],
    ['listed-twice', () => [rel(), rel()], /listed twice/],
    ['plain-http-url', () => [rel({ bundleEndpointUrl: 'http://127.0.0.1/' })], /must be an https URL/],
    ['credentials-in-url', () => [rel({ bundleEndpointUrl: 'https://u:p@127.0.0.1/' })], /must not carry credentials/],
    ['spiffe-without-endpoint-id', () => [spiffeRel('https://127.0.0.1/', null, { endpointSpiffeId: null })], /requires endpoint_spiffe_id/],
    ['endpoint-id-in-another-trust-domain', () => [spiffeRel('https://127.0.0.1/', null, { endpointSpiffeId: 'spiffe://other.example/be' })], /must be in trust domain partner.example/],
    ['web-with-endpoint-id', () => [rel({ endpointSpiffeId: ENDPOINT_ID })], /only applies to profile https_spiffe/],
    ['ca-file-without-certificates', () => [rel({ caFile: file('empty-ca.pem', 'nothing here\n') })], /no CERTIFICATE block/],
    ['bootstrap-file-missing', () => [rel({ bootstrapBundleFile: join(dir, 'does-not-exist.pem') })], /cannot be read/],
    ['bootstrap-file-without-keys', () => [rel({ bootstrapBundleFile: file('no-keys.json', '{"keys":[]}') })], /holds no keys/],
    ['uppercase-trust-domain', () => [rel({ trustDomain: 'Partner.example' })], /lowercase/],
  ];
  it.each(refusals)('refuses %s', (_name, rels, pattern) => {
    expect(() => federation(rels())).toThrow(pattern);
  });

  it('holds nothing for a trust domain it has no relationship with', () => {
    const { fed } = federation([rel()]);
    expect(fed.x509(TD)).toBeUndefined();
    expect(fed.x509('other.example')).toBeUndefined();
    expect(fed.jwt(TD)).toBeUndefined();
    expect(fed.version()).toBe(0);
  });
});

describe('https_web', () => {
  it('fetches at start, refreshes at the refresh hint, and signals only content changes', async () => {
    const jwt = jwtBundle(TD, 'k1');
    const ep = await endpoint(webLeaf, bundleDoc(TD, [rootA], { sequence: 1, hint: 60, jwt }));
    const { fed, clock, changes, status } = federation([rel({ bundleEndpointUrl: ep.url })]);
    fed.start();
    await until(() => status().lastSuccess !== null, 'the first fetch');

    expect(fed.x509(TD)).toEqual(derOf(rootA));
    const jwks = JSON.parse(fed.jwt(TD)!.toString()) as { keys: Record<string, unknown>[] };
    expect(jwks.keys).toHaveLength(1);
    expect(jwks.keys[0]).toMatchObject({ kid: 'k1', kty: 'EC', crv: 'P-256' });
    expect(jwks.keys[0]).not.toHaveProperty('use');
    expect(status()).toMatchObject({ trustDomain: TD, lastSuccess: EPOCH, lastError: null, sequence: 1, nextPollAt: EPOCH + 60_000, source: 'endpoint' });
    expect(changes.count).toBe(1);
    const v1 = fed.version();

    ep.doc = bundleDoc(TD, [rootA, rootB], { sequence: 2, hint: 60, jwt });
    await clock.advance(59_000);
    await new Promise((r) => setTimeout(r, 50));
    expect(ep.requests).toBe(1);
    await clock.advance(1_000);
    await until(() => status().sequence === 2, 'the refresh at the hint');
    expect(fed.x509(TD)).toEqual(derOf(rootA, rootB));
    expect(changes.count).toBe(2);
    expect(fed.version()).toBeGreaterThan(v1);

    // The same keys again (reordered): no change signal.
    ep.doc = bundleDoc(TD, [rootB, rootA], { sequence: 2, hint: 60, jwt });
    await clock.advance(60_000);
    await until(() => ep.requests === 3 && status().nextPollAt === EPOCH + 180_000, 'the third fetch');
    expect(changes.count).toBe(2);
  });

  it('keeps the last good bundle while the endpoint fails, retries sooner than the hint, and recovers', async () => {
    const ep = await endpoint(webLeaf, bundleDoc(TD, [rootA], { sequence: 1, hint: 300 }));
    const { fed, clock, changes, status } = federation([rel({ bundleEndpointUrl: ep.url })]);
    fed.start();
    await until(() => status().lastSuccess !== null, 'the first fetch');

    ep.status = 503;
    await clock.advance(300_000);
    await until(() => status().lastError !== null, 'the failed refresh');
    expect(status().lastError).toMatch(/HTTP status 503/);
    expect(fed.x509(TD)).toEqual(derOf(rootA));
    const retryIn = status().nextPollAt! - clock.now();
    expect(retryIn).toBeGreaterThanOrEqual(FEDERATION_LIMITS.minRefreshMs);
    expect(retryIn).toBeLessThanOrEqual(FEDERATION_LIMITS.firstRetryMs);

    // A document that does not parse is a failure too, never an empty bundle.
    ep.status = 200;
    ep.doc = '{"keys": "nope"}';
    await toNextPoll(clock, fed);
    await until(() => ep.requests === 3 && /"keys" must be an array/.test(status().lastError ?? ''), 'the unparseable document');
    expect(status().nextPollAt! - clock.now()).toBeLessThanOrEqual(2 * FEDERATION_LIMITS.firstRetryMs);
    ep.doc = '{"keys": []}';
    await toNextPoll(clock, fed);
    await until(() => ep.requests === 4 && /holds no keys/.test(status().lastError ?? ''), 'the empty document', () => [status(), ep.requests, clock.now() - EPOCH]);
    expect(fed.x509(TD)).toEqual(derOf(rootA));

    ep.doc = bundleDoc(TD, [rootB], { sequence: 2, hint: 300 });
    expect(status().nextPollAt! - clock.now()).toBeLessThanOrEqual(4 * FEDERATION_LIMITS.firstRetryMs);
    await toNextPoll(clock, fed);
    await until(() => status().lastError === null, 'recovery');
    expect(fed.x509(TD)).toEqual(derOf(rootB));
    expect(changes.count).toBe(2);
    const recoveredAt = status().lastSuccess;

    await ep.close();
    await clock.advance(300_000);
    await until(() => status().lastError !== null, 'the refresh against a closed port');
    expect(status().lastError).toMatch(/ECONNREFUSED/);
    expect(fed.x509(TD)).toEqual(derOf(rootB));
    expect(status().lastSuccess).toBe(recoveredAt);
  });

  it('ignores a lower spiffe_sequence and accepts different content at an equal one', async () => {
    const ep = await endpoint(webLeaf, bundleDoc(TD, [rootA], { sequence: 5, hint: 60 }));
    const { fed, clock, changes, status } = federation([rel({ bundleEndpointUrl: ep.url })]);
    fed.start();
    await until(() => status().sequence === 5, 'the first fetch');

    ep.doc = bundleDoc(TD, [rootC], { sequence: 4, hint: 60 });
    await clock.advance(60_000);
    await until(() => status().lastError !== null, 'the stale document');
    expect(status().lastError).toMatch(/spiffe_sequence 4 is lower than the held 5/);
    expect(fed.x509(TD)).toEqual(derOf(rootA));
    expect(status().sequence).toBe(5);
    expect(changes.count).toBe(1);

    ep.doc = bundleDoc(TD, [rootB], { sequence: 5, hint: 60 });
    await toNextPoll(clock, fed);
    await until(() => status().lastError === null, 'the equal-sequence document', status);
    expect(fed.x509(TD)).toEqual(derOf(rootB));
    expect(changes.count).toBe(2);
  });

  it('refuses an endpoint whose certificate the configured ca_file does not vouch for', async () => {
    const ep = await endpoint(webLeaf, bundleDoc(TD, [rootA]));
    const otherCa = file('other-ca.pem', rootC.pem);
    const { fed, status } = federation([rel({ bundleEndpointUrl: ep.url, caFile: otherCa })]);
    fed.start();
    await until(() => status().lastError !== null, 'the refused handshake');
    expect(status().lastError).toMatch(/certificate/i);
    expect(ep.requests).toBe(0);
    expect(fed.x509(TD)).toBeUndefined();
  });

  it('caps the response size and times out a silent endpoint, on the injected clock', async () => {
    const big = JSON.stringify({ keys: [], padding: 'x'.repeat(FEDERATION_LIMITS.maxBytes) });
    const ep = await endpoint(webLeaf, big);
    const { fed, clock, status } = federation([rel({ bundleEndpointUrl: ep.url })]);
    fed.start();
    await until(() => status().lastError !== null, 'the oversized response');
    expect(status().lastError).toMatch(/exceeds the 1048576-byte limit/);

    ep.hang = true;
    await toNextPoll(clock, fed);
    await until(() => ep.requests === 2, 'the hanging request');
    await clock.advance(FEDERATION_LIMITS.timeoutMs);
    await until(() => /no complete response within 10000 ms/.test(status().lastError ?? ''), 'the timeout');
  });
});

describe('refresh interval', () => {
  const cases: [string, number | undefined, number][] = [
    ['no-hint-means-five-minutes', undefined, 300_000],
    ['hint-below-floor-is-raised', 1, FEDERATION_LIMITS.minRefreshMs],
    ['hint-above-ceiling-is-lowered', 86_400, FEDERATION_LIMITS.maxRefreshMs],
    ['hint-within-bounds-is-kept', 90, 90_000],
  ];
  it.each(cases)('%s', async (_name, hint, expected) => {
    const doc = bundleDoc(TD, [rootA], hint === undefined ? {} : { hint });
    const fetch: BundleFetcher = async () => Buffer.from(doc);
    const { fed, status } = federation([rel()], { fetch });
    fed.start();
    await until(() => status().lastSuccess !== null, 'the first fetch');
    expect(status().nextPollAt).toBe(EPOCH + expected);
  });

  it('backs off exponentially on consecutive failures, never beyond the refresh hint', async () => {
    let fail = false;
    const fetch: BundleFetcher = async () => {
      if (fail) throw new Error('endpoint down');
      return Buffer.from(bundleDoc(TD, [rootA], { hint: 100 }));
    };
    const { fed, clock, status } = federation([rel()], { fetch });
    fed.start();
    await until(() => status().lastSuccess !== null, 'the first fetch');
    fail = true;
    const first = FEDERATION_LIMITS.firstRetryMs;
    const ceilings = [first, 2 * first, 4 * first, 8 * first, 16 * first, 32 * first].map((c) => Math.min(c, 100_000));
    for (const ceiling of ceilings) {
      const before = status().nextPollAt!;
      await toNextPoll(clock, fed);
      await until(() => status().nextPollAt !== before && status().nextPollAt !== null, 'the retry');
      const delay = status().nextPollAt! - clock.now();
      expect(delay).toBeLessThanOrEqual(ceiling);
      expect(delay).toBeGreaterThanOrEqual(ceiling / 2);
    }
    expect(status().lastError).toBe('endpoint down');
    expect(fed.x509(TD)).toEqual(derOf(rootA));
  });
});

describe('https_spiffe', () => {
  const refusals: [string, () => Promise<Leaf>, RegExp][] = [
    ['wrong-endpoint-spiffe-id', () => issueSvid(rootA, `spiffe://${TD}/not-the-endpoint`), /presented spiffe:\/\/partner.example\/not-the-endpoint/],
    ['svid-from-unheld-root', () => issueSvid(rootC, ENDPOINT_ID), /X\.509-SVID/],
    ['svid-of-another-trust-domain', () => issueSvid(rootA, 'spiffe://other.example/bundle-endpoint'), /trust domain/],
    ['web-certificate-without-spiffe-id', () => issueWebCert(rootA), /X\.509-SVID/],
  ];
  it.each(refusals)('refuses %s before sending a single request byte', async (_name, makeLeaf, pattern) => {
    const server = await startTlsCounter(await makeLeaf());
    cleanups.push(() => server.close());
    const bootstrap = file('bootstrap-a.pem', rootA.pem);
    const { fed, status } = federation([spiffeRel(server.url, bootstrap)]);
    expect(status().source).toBe('bootstrap');
    fed.start();
    await until(() => status().lastError !== null, 'the refusal');
    expect(status().lastError).toMatch(pattern);
    await new Promise((r) => setTimeout(r, 50));
    expect(server.bytes).toBe(0);
    expect(fed.x509(TD)).toEqual(derOf(rootA));
    expect(status().source).toBe('bootstrap');
  });

  it('control: the same server receives the request once the endpoint SVID is right', async () => {
    const server = await startTlsCounter(await issueSvid(rootA, ENDPOINT_ID));
    cleanups.push(() => server.close());
    const { fed } = federation([spiffeRel(server.url, file('bootstrap-a.pem', rootA.pem))]);
    fed.start();
    await until(() => server.bytes > 0, 'the request bytes');
  });

  it('cannot authenticate an endpoint without a held bundle', async () => {
    const server = await startTlsCounter(await issueSvid(rootA, ENDPOINT_ID));
    cleanups.push(() => server.close());
    const { fed, status } = federation([spiffeRel(server.url, null)]);
    fed.start();
    await until(() => status().lastError !== null, 'the refusal');
    expect(status().lastError).toMatch(/no X\.509 bundle is held for partner\.example/);
    expect(server.bytes).toBe(0);
  });

  it('follows a root rotation: each new document comes from an endpoint that chains to the held bundle', async () => {
    const jwt = jwtBundle(TD, 'k-bootstrap');
    const bootstrap = file('bootstrap-a.json', bundleDoc(TD, [rootA], { sequence: 1, jwt }));
    const ep = await endpoint(await issueSvid(rootA, ENDPOINT_ID), bundleDoc(TD, [rootA, rootB], { sequence: 2, hint: 60 }));
    const { fed, clock, changes, status } = federation([spiffeRel(ep.url, bootstrap)]);
    expect(fed.x509(TD)).toEqual(derOf(rootA));
    expect(JSON.parse(fed.jwt(TD)!.toString()).keys[0].kid).toBe('k-bootstrap');
    expect(status()).toMatchObject({ source: 'bootstrap', sequence: 1, lastSuccess: null });

    fed.start();
    await until(() => status().sequence === 2, 'the document that adds root B');
    expect(fed.x509(TD)).toEqual(derOf(rootA, rootB));

    // The endpoint now presents an SVID from B and drops A: trusted, because B is held.
    ep.setCertificate(await issueSvid(rootB, ENDPOINT_ID));
    ep.doc = bundleDoc(TD, [rootB], { sequence: 3, hint: 60 });
    await clock.advance(60_000);
    await until(() => status().sequence === 3, 'the document that drops root A');
    expect(fed.x509(TD)).toEqual(derOf(rootB));
    expect(changes.count).toBe(2);

    // An endpoint that chains only to a root we never learned cannot hand us its bundle.
    ep.setCertificate(await issueSvid(rootC, ENDPOINT_ID));
    ep.doc = bundleDoc(TD, [rootC], { sequence: 4, hint: 60 });
    const served = ep.requests;
    await clock.advance(60_000);
    await until(() => status().lastError !== null, 'the refused endpoint');
    expect(ep.requests).toBe(served);
    expect(fed.x509(TD)).toEqual(derOf(rootB));
    expect(status().sequence).toBe(3);
  });
});

describe('state file', () => {
  it('keeps the last good bundle across a restart, written 0600; a removed relationship holds nothing', async () => {
    const stateFile = join(dir, 'federation-state.json');
    const ep = await endpoint(webLeaf, bundleDoc(TD, [rootA, rootB], { sequence: 7, hint: 120, jwt: jwtBundle(TD, 'k7') }));
    const bootstrap = file('bootstrap-c.pem', rootC.pem);
    const first = federation([rel({ bundleEndpointUrl: ep.url, bootstrapBundleFile: bootstrap })], { stateFile });
    expect(first.fed.x509(TD)).toEqual(derOf(rootC));
    first.fed.start();
    await until(() => first.status().sequence === 7, 'the first fetch');
    await first.fed.stop();
    expect(statSync(stateFile).mode & 0o777).toBe(0o600);
    expect(readFileSync(stateFile, 'utf8')).not.toMatch(/PRIVATE/);
    await ep.close();

    // The stored bundle wins over the bootstrap file: it is what the endpoint last said.
    const second = federation([rel({ bundleEndpointUrl: ep.url, bootstrapBundleFile: bootstrap })], { stateFile });
    expect(second.fed.x509(TD)).toEqual(derOf(rootA, rootB));
    expect(JSON.parse(second.fed.jwt(TD)!.toString()).keys[0].kid).toBe('k7');
    expect(second.status()).toMatchObject({ source: 'state', sequence: 7 });
    second.fed.start();
    await until(() => second.status().lastError !== null, 'the failed fetch after restart');
    expect(second.fed.x509(TD)).toEqual(derOf(rootA, rootB));
    // The stored hint still paces retries.
    expect(second.status().nextPollAt! - second.clock.now()).toBeLessThanOrEqual(30_000);
    await second.fed.stop();

    const without = federation([rel({ trustDomain: 'other.example' })], { stateFile });
    expect(without.fed.x509(TD)).toBeUndefined();
    expect(without.fed.jwt(TD)).toBeUndefined();
    expect(without.fed.x509('other.example')).toBeUndefined();
    expect(without.fed.status().map((s) => s.trustDomain)).toEqual(['other.example']);
  });

  const ignored: [string, (path: string) => void][] = [
    ['writable-by-others', (p) => chmodSync(p, 0o666)],
    ['not-json', (p) => writeFileSync(p, 'garbage', { mode: 0o600 })],
    ['certificate-not-der', (p) => writeFileSync(p, JSON.stringify({ version: 1, bundles: { [TD]: { x509: ['AAAA'], jwt: null } } }), { mode: 0o600 })],
  ];
  it.each(ignored)('ignores a state file that is %s and falls back to the bootstrap bundle', async (name, spoil) => {
    const stateFile = join(dir, `state-${name}.json`);
    const fetch: BundleFetcher = async () => Buffer.from(bundleDoc(TD, [rootA], { sequence: 1 }));
    const a = federation([rel()], { stateFile, fetch });
    a.fed.start();
    await until(() => a.status().sequence === 1, 'the fetch');
    await a.fed.stop();
    spoil(stateFile);
    const bootstrap = file(`bootstrap-${name}.pem`, rootB.pem);
    const b = federation([rel({ bootstrapBundleFile: bootstrap })], { stateFile });
    expect(b.fed.x509(TD)).toEqual(derOf(rootB));
    expect(b.status().source).toBe('bootstrap');
  });
});
