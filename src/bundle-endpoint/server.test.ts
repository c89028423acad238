import { execFile } from 'node:child_process';
import { createPublicKey, verify as cryptoVerify, X509Certificate, type JsonWebKey } from 'node:crypto';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { join } from 'node:path';
import tls from 'node:tls';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { isAgentIdError } from '../common/errors.js';
import type { CertificateAuthority } from '../ca/authority.js';
import { openTestCa, openssl, tempDir, writeFiles } from '../ca/testing.js';
import type { ManualClock } from '../common/clock.js';
import { ServerSvidSource } from '../issuer/server-svid.js';
import { TrustState } from '../issuer/trust-state.js';
import { SpiffeId, TrustDomain } from '../spiffe/spiffe-id.js';
import { BundleSet, parseSpiffeBundle } from '../verify/bundle.js';
import { authorizeAny } from '../verify/authorize.js';
import { peerChainDer, serverTlsOptions } from '../verify/tls.js';
import { verifyX509Svid } from '../verify/x509.js';
import { parseIssuer, refreshHintSeconds } from './documents.js';
import { startBundleEndpoint, type BundleEndpoint, type BundleEndpointDeps } from './server.js';
import { WEB_CERT_CHECK_INTERVAL_MS } from './tls-material.js';

const TD = TrustDomain.parse('example.org');
const REFRESH_HINT_MS = 5 * 60_000;

interface Fetched {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  peerChain: Buffer[];
}

/** One HTTPS request on a fresh connection (no agent), so every call sees the current certificate. */
function request(url: string, opts: { method?: string; ca?: string; path?: string } = {}): Promise<Fetched> {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const req = https.request(
      {
        host: u.hostname,
        port: u.port,
        path: opts.path ?? '/',
        method: opts.method ?? 'GET',
        agent: false,
        ...(opts.ca ? { ca: opts.ca } : { rejectUnauthorized: false }),
      },
      (res) => {
        const chunks: Buffer[] = [];
        const peerChain = peerChainDer(res.socket as tls.TLSSocket);
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), peerChain }));
      },
    );
    req.on('error', reject);
    req.end();
  });
}

const getJson = async (url: string, path: string, ca?: string): Promise<Record<string, unknown>> => {
  const r = await request(url, { path, ...(ca ? { ca } : {}) });
  expect(r.status).toBe(200);
  expect(r.headers['content-type']).toBe('application/json');
  return JSON.parse(r.body.toString('utf8')) as Record<string, unknown>;
};

function capturingLogger(): { logger: BundleEndpointDeps['logger']; lines: string[] } {
  const lines: string[] = [];
  const logger = pino({ level: 'debug' }, { write: (line: string) => void lines.push(line) });
  return { logger, lines };
}

/** A self-signed P-256 server certificate for 127.0.0.1, as an https_web deployment would have from its CA. */
function makeWebCert(dir: string, name: string): { certFile: string; keyFile: string; pem: string } {
  const certFile = join(dir, `${name}.crt`);
  const keyFile = join(dir, `${name}.key`);
  const r = openssl([
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2',
    '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', keyFile, '-out', certFile,
  ]);
  expect(r.status, r.stderr).toBe(0);
  return { certFile, keyFile, pem: readFileSync(certFile, 'utf8') };
}

/** curl, asynchronously (the server under test shares this event loop). */
function curl(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile('curl', ['-sS', '--fail', ...args], { encoding: 'utf8', timeout: 10_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? Number((err as { code?: unknown }).code ?? 1) || 1 : 0, stdout, stderr }),
    );
  });
}

/**
 * Whether the server sent a TLS CertificateRequest, from openssl s_client's handshake trace.
 * Asynchronous: the server under test runs on this process's event loop.
 */
async function serverRequestsClientCert(port: number): Promise<boolean> {
  const stdout = await new Promise<string>((resolve, reject) => {
    const child = execFile('openssl', ['s_client', '-connect', `127.0.0.1:${port}`, '-msg'], { encoding: 'latin1', timeout: 10_000 }, (err, out) =>
      // s_client exits non-zero when the server aborts the handshake for want of a client certificate.
      err && !out ? reject(err) : resolve(out),
    );
    child.stdin?.end();
  });
  expect(stdout).toMatch(/Handshake.*ServerHello/);
  return /Handshake.*CertificateRequest/.test(stdout);
}

describe('bundle endpoint', () => {
  let dir: { path: string; cleanup: () => void };
  let ca: CertificateAuthority;
  let clock: ManualClock;
  let sequence = 1;
  let crls: Buffer[];
  let revokedSerial: string;
  let extraRoots: Buffer[] = [];
  let trust: BundleEndpointDeps['trust'];

  beforeAll(async () => {
    dir = tempDir();
    ({ ca, clock } = await openTestCa(join(dir.path, 'data')));
    const revoked = ca.mintX509Svid({ spiffeId: SpiffeId.parse('spiffe://example.org/agent/a/task/t1'), ttlMs: 60_000 });
    revokedSerial = revoked.serial;
    crls = ca.buildCrls([{ serial: revoked.serial, issuerId: revoked.issuerId, revokedAt: clock.now() }]);
    trust = {
      x509Authorities: () => [...ca.x509Bundle(), ...extraRoots],
      jwtKeys: () => ca.jwtKeys(),
      sequence: () => sequence,
      crls: () => crls,
    };
  });
  afterAll(() => dir.cleanup());

  const baseDeps = (over: Partial<BundleEndpointDeps>): BundleEndpointDeps => ({
    trustDomain: TD,
    listen: { host: '127.0.0.1', port: 0 },
    profile: 'https_web',
    certFile: null,
    keyFile: null,
    serverSvid: null,
    trust,
    refreshHintMs: REFRESH_HINT_MS,
    jwtIssuer: ca.jwtIssuer,
    logger: capturingLogger().logger,
    clock,
    ...over,
  });

  describe('https_web profile', () => {
    let endpoint: BundleEndpoint;
    let web: { certFile: string; keyFile: string; pem: string };
    let log: ReturnType<typeof capturingLogger>;

    beforeAll(async () => {
      web = makeWebCert(dir.path, 'web');
      log = capturingLogger();
      endpoint = await startBundleEndpoint(baseDeps({ certFile: web.certFile, keyFile: web.keyFile, logger: log.logger }));
    });
    afterAll(() => endpoint.close());

    it('serves the SPIFFE bundle document: the CA roots as x509-svid keys, the JWT keys as jwt-svid keys', async () => {
      for (const path of ['/', '/bundle', '/bundle?since=3']) {
        const r = await request(endpoint.url, { path, ca: web.pem });
        expect(r.status).toBe(200);
        expect(r.headers['content-type']).toBe('application/json');
        expect(r.headers['cache-control']).toBe(`max-age=${REFRESH_HINT_MS / 1000}`);
        const doc = JSON.parse(r.body.toString('utf8')) as { keys: Record<string, unknown>[]; spiffe_sequence: unknown; spiffe_refresh_hint: unknown };
        expect(doc.spiffe_sequence).toBe(sequence);
        expect(doc.spiffe_refresh_hint).toBe(300);
        for (const k of doc.keys) expect(k).not.toHaveProperty('d');
        const parsed = parseSpiffeBundle(TD, r.body);
        expect(parsed.x509.authoritiesDer).toEqual(ca.x509Bundle());
        const want = ca.jwtKeys();
        expect([...parsed.jwt.authorities.keys()]).toEqual(want.map((k) => k.kid));
        for (const k of want) {
          expect(parsed.jwt.findKey(k.kid)!.key.equals(createPublicKey({ key: { kty: k.kty, crv: k.crv, x: k.x, y: k.y }, format: 'jwk' }))).toBe(true);
        }
      }
    });

    it('reports the current sequence and content, also when only the content changed', async () => {
      const before = parseSpiffeBundle(TD, (await request(endpoint.url, { path: '/bundle', ca: web.pem })).body);
      sequence += 5;
      const after = parseSpiffeBundle(TD, (await request(endpoint.url, { path: '/bundle', ca: web.pem })).body);
      expect(after.sequence).toBe(before.sequence! + 5);

      const other = await openTestCa(join(dir.path, 'other-ca'), { trustDomain: TrustDomain.parse('example.org') });
      extraRoots = other.ca.x509Bundle();
      try {
        const grown = parseSpiffeBundle(TD, (await request(endpoint.url, { path: '/bundle', ca: web.pem })).body);
        expect(grown.x509.authoritiesDer).toEqual([...ca.x509Bundle(), ...extraRoots]);
      } finally {
        extraRoots = [];
      }
    });

    it('works with curl --cacert', async () => {
      const caFile = writeFiles(dir.path, { 'curl-ca.pem': web.pem })['curl-ca.pem']!;
      const ok = await curl(['--cacert', caFile, `${endpoint.url}/bundle`]);
      expect(ok.code, ok.stderr).toBe(0);
      expect(parseSpiffeBundle(TD, ok.stdout).x509.authoritiesDer).toEqual(ca.x509Bundle());
      // The control: curl refuses the server without the right anchor, so the check above means something.
      const other = makeWebCert(dir.path, 'not-the-server');
      const refused = await curl(['--cacert', other.certFile, `${endpoint.url}/bundle`]);
      expect(refused.code).not.toBe(0);
    });

    it('serves each CRL as DER and all of them as a JSON list', async () => {
      expect(crls.length).toBeGreaterThan(0);
      const list = (await getJson(endpoint.url, '/crls', web.pem)) as { crls: string[] };
      expect(list.crls.map((b) => Buffer.from(b, 'base64'))).toEqual(crls);

      const r = await request(endpoint.url, { path: '/crl/0.crl', ca: web.pem });
      expect(r.status).toBe(200);
      expect(r.headers['content-type']).toBe('application/pkix-crl');
      expect(r.headers['cache-control']).toBe('no-cache');
      expect(r.body.equals(crls[0]!)).toBe(true);
      const crlFile = writeFiles(dir.path, { 'served.crl': r.body })['served.crl']!;
      const text = openssl(['crl', '-inform', 'DER', '-in', crlFile, '-noout', '-text']);
      expect(text.status, text.stderr).toBe(0);
      expect(text.stdout.replace(/[^0-9A-F]/gi, '').toLowerCase()).toContain(revokedSerial.replace(/^0+/, '').toLowerCase());
    });

    it('serves OIDC discovery whose keys verify a JWT-SVID the CA minted', async () => {
      const config = await getJson(endpoint.url, '/.well-known/openid-configuration', web.pem);
      expect(config).toEqual({
        issuer: ca.jwtIssuer,
        jwks_uri: `${ca.jwtIssuer}/keys`,
        response_types_supported: ['id_token'],
        subject_types_supported: ['public'],
        id_token_signing_alg_values_supported: ['ES256'],
      });
      const jwks = (await getJson(endpoint.url, '/keys', web.pem)) as { keys: JsonWebKey[] };
      expect(jwks.keys.length).toBe(ca.jwtKeys().length);
      for (const k of jwks.keys) {
        expect(k).toMatchObject({ kty: 'EC', crv: 'P-256', use: 'sig', alg: 'ES256' });
        expect(k).not.toHaveProperty('d');
      }

      const minted = ca.mintJwtSvid({ spiffeId: SpiffeId.parse('spiffe://example.org/agent/a'), audience: ['https://api'], ttlMs: 60_000 });
      const [h, p, s] = minted.token.reveal().split('.') as [string, string, string];
      const header = JSON.parse(Buffer.from(h, 'base64url').toString()) as { kid: string; alg: string };
      const jwk = jwks.keys.find((k) => k.kid === header.kid);
      expect(jwk, 'the signing key is published').toBeDefined();
      const key = createPublicKey({ key: jwk!, format: 'jwk' });
      const check = (payload: string) => cryptoVerify('sha256', Buffer.from(`${h}.${payload}`), { key, dsaEncoding: 'ieee-p1363' }, Buffer.from(s, 'base64url'));
      expect(check(p)).toBe(true);
      const forged = Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(p, 'base64url').toString()), sub: 'spiffe://example.org/admin' })).toString('base64url');
      expect(check(forged)).toBe(false);
    });

    it.each([
      ['unknown path', 'GET', '/nope', 404],
      ['trailing slash', 'GET', '/bundle/', 404],
      ['directory of the well-known tree', 'GET', '/.well-known/', 404],
      ['dot segment', 'GET', '/./bundle', 404],
      ['CRL index past the end', 'GET', '/crl/7.crl', 404],
      ['CRL index with a leading zero', 'GET', '/crl/00.crl', 404],
      ['CRL index that is not a number', 'GET', '/crl/x.crl', 404],
      ['POST to the bundle', 'POST', '/bundle', 405],
      ['PUT to the keys', 'PUT', '/keys', 405],
      ['DELETE a CRL', 'DELETE', '/crl/0.crl', 405],
      ['OPTIONS on discovery', 'OPTIONS', '/.well-known/openid-configuration', 405],
      ['POST to an unknown path', 'POST', '/upload', 404],
    ])('%s: %s %s -> %i', async (_name, method, path, status) => {
      const r = await request(endpoint.url, { method, path, ca: web.pem });
      expect(r.status).toBe(status);
      expect(r.body.length).toBeLessThan(64);
      expect(r.headers['cache-control']).toBe('no-store');
      if (status === 405) expect(r.headers.allow).toBe('GET, HEAD');
    });

    it('answers HEAD with the GET headers and no body', async () => {
      const get = await request(endpoint.url, { path: '/bundle', ca: web.pem });
      const head = await request(endpoint.url, { method: 'HEAD', path: '/bundle', ca: web.pem });
      expect(head.status).toBe(200);
      expect(head.body.length).toBe(0);
      expect(head.headers['content-length']).toBe(String(get.body.length));
    });

    it('does not request a client certificate', async () => {
      expect(await serverRequestsClientCert(endpoint.port)).toBe(false);
    });

    it('picks up renewed certificate files and keeps the old one when the new pair is broken', async () => {
      const served = async () => new X509Certificate((await request(endpoint.url, { path: '/bundle' })).peerChain[0]!);
      const original = new X509Certificate(web.pem);
      expect((await served()).fingerprint256).toBe(original.fingerprint256);

      // Renewal as ACME clients do it: new files renamed into place.
      const renewed = makeWebCert(dir.path, 'renewed');
      renameSync(renewed.keyFile, web.keyFile);
      renameSync(renewed.certFile, web.certFile);
      expect((await served()).fingerprint256, 'no stat before the check interval passed').toBe(original.fingerprint256);
      await clock.advance(WEB_CERT_CHECK_INTERVAL_MS);
      expect((await served()).fingerprint256).toBe(new X509Certificate(renewed.pem).fingerprint256);

      // A key that does not belong to the certificate: logged, and the renewed pair stays in service.
      const stray = makeWebCert(dir.path, 'stray');
      const strayKey = readFileSync(stray.keyFile, 'utf8');
      writeFileSync(web.keyFile, strayKey);
      await clock.advance(WEB_CERT_CHECK_INTERVAL_MS);
      expect((await served()).fingerprint256).toBe(new X509Certificate(renewed.pem).fingerprint256);
      const warnings = log.lines.filter((l) => l.includes('do not load'));
      expect(warnings).toHaveLength(1);
      await clock.advance(WEB_CERT_CHECK_INTERVAL_MS);
      await served();
      expect(log.lines.filter((l) => l.includes('do not load')), 'one warning per broken pair, not per check').toHaveLength(1);
      expect(log.lines.join('\n')).not.toContain('PRIVATE KEY');
      expect(log.lines.join('\n')).not.toContain(strayKey.split('\n')[1]!);
    });
  });

  describe('https_spiffe profile', () => {
    let endpoint: BundleEndpoint;
    let svid: ServerSvidSource;

    beforeAll(async () => {
      const trustState = new TrustState({ ca, issuances: { listRevokedUnexpired: async () => [], latestNotAfter: async () => undefined }, clock });
      svid = new ServerSvidSource({
        spiffeId: SpiffeId.parse('spiffe://example.org/agentid/server'),
        ttlMs: 15 * 60_000,
        minter: ca,
        trust: trustState,
        clock,
      });
      endpoint = await startBundleEndpoint(baseDeps({ profile: 'https_spiffe', serverSvid: svid }));
    });
    afterAll(() => endpoint.close());

    it('presents the server SVID, which verifies against the bundle it serves', async () => {
      const r = await request(endpoint.url, { path: '/bundle' });
      expect(r.status).toBe(200);
      const bundle = parseSpiffeBundle(TD, r.body);
      const verified = verifyX509Svid(r.peerChain, new BundleSet([bundle.x509]), { now: clock.now() });
      expect(verified.spiffeId.toString()).toBe('spiffe://example.org/agentid/server');
      expect(r.peerChain[0]!.equals(svid.getX509Svid().chainDer[0]!)).toBe(true);
    });

    it('builds no new TLS context when only trust material changed (a revocation\'s CRLs)', async () => {
      const reveal = vi.spyOn(svid.getX509Svid().keyPkcs8Der, 'reveal');
      try {
        svid.trustChanged();
        expect(reveal).not.toHaveBeenCalled();
        expect((await request(endpoint.url, { path: '/bundle' })).peerChain[0]!.equals(svid.getX509Svid().chainDer[0]!)).toBe(true);
      } finally {
        reveal.mockRestore();
      }
    });

    it('serves the renewed SVID after an update', async () => {
      const before = (await request(endpoint.url, { path: '/bundle' })).peerChain[0]!;
      svid.renew(true);
      const after = (await request(endpoint.url, { path: '/bundle' })).peerChain[0]!;
      expect(after.equals(before)).toBe(false);
      expect(after.equals(svid.getX509Svid().chainDer[0]!)).toBe(true);
    });

    it('does not request a client certificate, unlike an mTLS server on the same SVID (control)', async () => {
      expect(await serverRequestsClientCert(endpoint.port)).toBe(false);

      const mtls = serverTlsOptions({ source: svid, authorize: authorizeAny() });
      const control = mtls.attach(https.createServer(mtls.options, (_req, res) => res.end()));
      await new Promise<void>((resolve) => control.listen(0, '127.0.0.1', resolve));
      try {
        const port = (control.address() as { port: number }).port;
        expect(await serverRequestsClientCert(port)).toBe(true);
      } finally {
        mtls.close();
        control.closeAllConnections();
        await new Promise<void>((resolve) => control.close(() => resolve()));
      }
    });
  });

  describe('configuration', () => {
    it.each([
      ['https_web without files', { profile: 'https_web' as const }, 'invalid_argument', /cert_file and key_file/],
      ['https_spiffe without an SVID source', { profile: 'https_spiffe' as const }, 'invalid_argument', /server SVID/],
      ['http issuer', { certFile: 'x', keyFile: 'y', jwtIssuer: 'http://agentid.example' }, 'invalid_argument', /https URL/],
      ['zero refresh hint', { certFile: 'x', keyFile: 'y', refreshHintMs: 0 }, 'invalid_argument', /refresh hint/],
      ['missing certificate file', { certFile: '/nonexistent/web.crt', keyFile: '/nonexistent/web.key' }, 'failed_precondition', /web\.crt/],
    ])('refuses %s', async (_name, over, code, message) => {
      const err = await startBundleEndpoint(baseDeps(over)).catch((e: unknown) => e);
      expect(isAgentIdError(err, code as 'invalid_argument')).toBe(true);
      expect((err as Error).message).toMatch(message);
    });

    it('refuses a key that does not belong to the certificate, without echoing the key', async () => {
      const a = makeWebCert(dir.path, 'mismatch-a');
      const b = makeWebCert(dir.path, 'mismatch-b');
      const err = (await startBundleEndpoint(baseDeps({ certFile: a.certFile, keyFile: b.keyFile })).catch((e: unknown) => e)) as Error;
      expect(isAgentIdError(err, 'failed_precondition')).toBe(true);
      expect(err.message).not.toContain(readFileSync(b.keyFile, 'utf8').split('\n')[1]!);
    });

    it('refuses a port that is taken', async () => {
      const web = makeWebCert(dir.path, 'taken');
      const first = await startBundleEndpoint(baseDeps({ certFile: web.certFile, keyFile: web.keyFile }));
      try {
        const err = await startBundleEndpoint(baseDeps({ certFile: web.certFile, keyFile: web.keyFile, listen: { host: '127.0.0.1', port: first.port } })).catch((e: unknown) => e);
        expect(isAgentIdError(err, 'failed_precondition')).toBe(true);
      } finally {
        await first.close();
      }
    });

    it('serves discovery under the issuer path when the issuer has one', async () => {
      const web = makeWebCert(dir.path, 'tenant');
      const endpoint = await startBundleEndpoint(baseDeps({ certFile: web.certFile, keyFile: web.keyFile, jwtIssuer: 'https://agentid.example/tenant-a/' }));
      try {
        const config = await getJson(endpoint.url, '/tenant-a/.well-known/openid-configuration');
        expect(config.issuer).toBe('https://agentid.example/tenant-a/');
        expect(config.jwks_uri).toBe('https://agentid.example/tenant-a/keys');
        expect((await getJson(endpoint.url, '/tenant-a/keys')).keys).toHaveLength(ca.jwtKeys().length);
        expect((await request(endpoint.url, { path: '/.well-known/openid-configuration' })).status).toBe(404);
      } finally {
        await endpoint.close();
      }
    });

    it('stops accepting connections on close', async () => {
      const web = makeWebCert(dir.path, 'closing');
      const endpoint = await startBundleEndpoint(baseDeps({ certFile: web.certFile, keyFile: web.keyFile }));
      await endpoint.close();
      await expect(request(endpoint.url, { path: '/bundle' })).rejects.toThrow(/ECONNREFUSED/);
    });
  });

  it.each([
    ['https://agentid.example', { issuer: 'https://agentid.example', base: 'https://agentid.example', pathPrefix: '' }],
    ['https://agentid.example/', { issuer: 'https://agentid.example/', base: 'https://agentid.example', pathPrefix: '' }],
    ['https://h.example:8443/t/a', { issuer: 'https://h.example:8443/t/a', base: 'https://h.example:8443/t/a', pathPrefix: '/t/a' }],
  ])('parseIssuer(%s)', (input, want) => {
    expect(parseIssuer(input)).toEqual(want);
  });

  it.each([
    ['not-a-url', /not a URL/],
    ['http://agentid.example', /https URL/],
    ['https://agentid.example/?tenant=a', /query or fragment/],
    ['https://agentid.example/#x', /query or fragment/],
    ['https://user:pw@agentid.example', /userinfo/],
  ])('parseIssuer refuses %s', (input, message) => {
    expect(() => parseIssuer(input)).toThrow(message);
  });

  it.each([
    [300_000, 300],
    [1_500, 2],
    [200, 1],
  ])('refresh hint %i ms is %i s', (ms, s) => {
    expect(refreshHintSeconds(ms)).toBe(s);
  });
});
