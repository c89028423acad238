/**
 * Web console sign-in with a client X.509-SVID (the mTLS admin mapping, admin.tcp.spiffe_roles),
 * and a console served with configured certificate files instead of the server SVID. Real server,
 * real SVIDs fetched from its Workload API, real TLS.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import https from 'node:https';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { fetchCallerSvid } from '../src/cli/admin-client.js';
import type { X509Svid } from '../src/client/types.js';
import { toPem } from '../src/client/der.js';
import { readAuditEvents } from '../src/audit/index.js';
import { makeTempDir, startTestServer, type TestServer } from './support/server.js';

const TD = 'console-cert.example';
const ALICE = `spiffe://${TD}/ops/alice`; // admin through admin.tcp.spiffe_roles
const BOB = `spiffe://${TD}/ops/bob`; // a valid SVID without a role

interface Reply {
  status: number;
  body: string;
  cookie: string | undefined;
  peerCertificate: Buffer;
}

function get(url: string, opts: { svid?: X509Svid; cookie?: string } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = https.request(
      url,
      {
        rejectUnauthorized: false,
        // A fresh connection per request: each one presents (or not) its own client certificate.
        agent: false,
        headers: opts.cookie ? { Cookie: opts.cookie } : {},
        ...(opts.svid
          ? {
              cert: toPem(opts.svid.chainDer, 'CERTIFICATE'),
              key: createPrivateKey({ key: opts.svid.keyPkcs8Der.reveal(), format: 'der', type: 'pkcs8' }).export({ format: 'pem', type: 'pkcs8' }),
            }
          : {}),
      },
      (res) => {
        let body = '';
        const peerCertificate = (res.socket as TLSSocket).getPeerCertificate().raw;
        res.on('data', (d) => (body += d));
        res.on('end', () => {
          const setCookie = res.headers['set-cookie']?.[0];
          resolve({ status: res.statusCode!, body, cookie: setCookie?.split(';')[0], peerCertificate });
        });
      },
    );
    req.on('error', reject);
    req.end();
  });
}

describe('web console: client certificate sign-in, configured certificate files', () => {
  let t: TestServer;
  let dir: string;
  let alice: X509Svid;
  let bob: X509Svid;
  let aliceEntry: string;

  beforeAll(async () => {
    dir = makeTempDir('agentid-console-cert-');
    const made = spawnSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1', '-subj', '/CN=agentid console',
      '-addext', 'subjectAltName=IP:127.0.0.1', '-keyout', join(dir, 'console.key'), '-out', join(dir, 'console.pem'),
    ], { encoding: 'utf8' });
    expect(made.status, made.stderr).toBe(0);
    t = await startTestServer({
      dir,
      trustDomain: TD,
      yaml: [
        'admin:',
        '  tcp:',
        '    listen: "127.0.0.1:0"',
        '    spiffe_roles:',
        `      - spiffe_id: ${ALICE}`,
        '        role: admin',
        'console:',
        '  listen: "127.0.0.1:0"',
        `  cert_file: ${join(dir, 'console.pem')}`,
        `  key_file: ${join(dir, 'console.key')}`,
      ].join('\n'),
    });
    aliceEntry = (await t.admin.call('CreateEntry', { entry: { spiffe_id: ALICE, selectors: ['unix:uid:0'] } })).id;
    await t.admin.call('CreateEntry', { entry: { spiffe_id: BOB, selectors: ['unix:uid:0'] } });
    alice = (await fetchCallerSvid({ socketPath: t.config.workloadSocket, spiffeId: ALICE })).svid;
    bob = (await fetchCallerSvid({ socketPath: t.config.workloadSocket, spiffeId: BOB })).svid;
  });
  afterAll(async () => t?.cleanup());

  it('presents the configured certificate, not the server SVID', async () => {
    const reply = await get(`${t.server.consoleUrl}/`);
    expect(reply.status).toBe(200);
    expect(reply.peerCertificate.equals(Buffer.from(new X509Certificate(readFileSync(join(dir, 'console.pem'))).raw))).toBe(true);
  });

  it('signs in a client SVID that maps to a role, refuses one that does not, and ends the session when the SVID is revoked', async () => {
    const session = `${t.server.consoleUrl}/api/session`;
    expect((await get(session)).status).toBe(401);

    const refused = await get(session, { svid: bob });
    expect(refused.status).toBe(401);
    expect(refused.cookie).toBeUndefined();
    const denied = readAuditEvents(t.config.audit.file, { type: 'admin.denied' }) as unknown as { who: string; action: string; reason: string }[];
    expect(denied).toContainEqual(expect.objectContaining({ who: BOB, action: 'console.sign_in', reason: 'SPIFFE ID has no admin role' }));

    const ok = await get(session, { svid: alice });
    expect(ok.status).toBe(200);
    expect(JSON.parse(ok.body)).toMatchObject({ user: `${ALICE} (admin)`, role: 'admin' });
    expect(ok.cookie).toMatch(/^__Host-agentid-session=/);
    const signedIn = readAuditEvents(t.config.audit.file, { type: 'console.signed_in' }) as unknown as { by: string; method: string }[];
    expect(signedIn).toContainEqual(expect.objectContaining({ by: `${ALICE} (admin)`, method: 'certificate' }));

    // The cookie alone (no certificate on this connection) carries the session...
    expect((await get(`${t.server.consoleUrl}/api/overview`, { cookie: ok.cookie })).status).toBe(200);
    // ...until the SVID it was opened with stops verifying: deleting Alice's only entry revokes her ID.
    await t.admin.call('DeleteEntry', { id: aliceEntry });
    expect((await get(`${t.server.consoleUrl}/api/overview`, { cookie: ok.cookie })).status).toBe(401);
  });
});
