/**
 * Two agentid servers, two trust domains, on loopback: bundle endpoints with the https_spiffe
 * profile, federation both ways, and a federation removed again.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { createServer } from 'node:net';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { WorkloadApiClient } from '../src/client/workload-client.js';
import { toPem } from '../src/client/der.js';
import { BundleSet, X509Bundle, verifyX509Svid } from '../src/verify/index.js';
import { makeTempDir, startTestServer, type TestServer } from './support/server.js';
import { waitFor } from './support/wait.js';

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

const endpointYaml = (port: number) => ['bundle_endpoint:', '  enabled: true', `  listen: "127.0.0.1:${port}"`, '  profile: https_spiffe', '  refresh_hint: 5s'].join('\n');
const federationYaml = (td: string, port: number, bootstrap: string) =>
  ['federation:', `  - trust_domain: ${td}`, `    bundle_endpoint_url: "https://127.0.0.1:${port}/"`, '    profile: https_spiffe',
    `    endpoint_spiffe_id: "spiffe://${td}/agentid/server"`, `    bootstrap_bundle_file: ${bootstrap}`].join('\n');

describe('federation between two agentid servers', () => {
  const servers: TestServer[] = [];
  afterAll(async () => {
    for (const s of servers) await s.cleanup();
  });

  it('lets each side verify the other\'s SVIDs after federating, and stops after the federation is removed', async () => {
    const [portA, portB] = [await freePort(), await freePort()];
    const dirA = makeTempDir('agentid-fed-a-');
    const dirB = makeTempDir('agentid-fed-b-');

    // First start: creates each CA; the bundle endpoints serve the SPIFFE bundle document.
    let a = await startTestServer({ dir: dirA, trustDomain: 'a.example', yaml: endpointYaml(portA) });
    let b = await startTestServer({ dir: dirB, trustDomain: 'b.example', yaml: endpointYaml(portB) });
    const res = await fetch(`https://127.0.0.1:${portA}/`).catch((e) => e);
    expect(res).toBeInstanceOf(Error); // not a web PKI certificate: plain fetch must refuse it
    writeFileSync(join(dirA, 'b-bootstrap.pem'), toPem(b.server.ca.x509Bundle(), 'CERTIFICATE'));
    writeFileSync(join(dirB, 'a-bootstrap.pem'), toPem(a.server.ca.x509Bundle(), 'CERTIFICATE'));
    await a.stop();
    await b.stop();

    a = await startTestServer({ dir: dirA, trustDomain: 'a.example', yaml: [endpointYaml(portA), federationYaml('b.example', portB, join(dirA, 'b-bootstrap.pem'))].join('\n') });
    b = await startTestServer({ dir: dirB, trustDomain: 'b.example', yaml: [endpointYaml(portB), federationYaml('a.example', portA, join(dirB, 'a-bootstrap.pem'))].join('\n') });
    servers.push(a, b);
    await a.admin.call('CreateEntry', { entry: { spiffe_id: 'spiffe://a.example/wa', selectors: ['unix:uid:0'], federates_with: ['b.example'] } });
    await b.admin.call('CreateEntry', { entry: { spiffe_id: 'spiffe://b.example/wb', selectors: ['unix:uid:0'], federates_with: ['a.example'] } });

    const clientA = new WorkloadApiClient({ socketPath: a.config.workloadSocket });
    const clientB = new WorkloadApiClient({ socketPath: b.config.workloadSocket });
    try {
      // A's workload receives B's bundle (X.509 from bootstrap, JWT keys once fetched from B's endpoint).
      const ctxA = await clientA.fetchX509Context();
      expect([...ctxA.federatedBundles.keys()]).toEqual(['spiffe://b.example']);
      expect(ctxA.federatedBundles.has('spiffe://a.example')).toBe(false);
      const jwtBundlesA = await waitFor(async () => {
        const bundles = await clientA.fetchJwtBundles();
        return bundles.has('spiffe://b.example') ? bundles : undefined;
      }, 10_000, 'B\'s JWT keys at A');
      expect(jwtBundlesA.get('spiffe://b.example')!.keys.length).toBeGreaterThan(0);

      // A verifies B's X.509-SVID with the bundles A's Workload API delivered.
      const svidB = (await clientB.fetchX509Context()).svids[0]!;
      const bundlesAtA = new BundleSet([
        X509Bundle.fromDer('a.example', ctxA.svids[0]!.bundleDer),
        ...[...ctxA.federatedBundles].map(([td, ders]) => X509Bundle.fromDer(td.replace('spiffe://', ''), ders)),
      ]);
      const verified = verifyX509Svid(svidB.chainDer, bundlesAtA, { now: Date.now() });
      expect(verified.spiffeId.toString()).toBe('spiffe://b.example/wb');
      // And B verifies A's.
      const ctxB = await clientB.fetchX509Context();
      const bundlesAtB = new BundleSet([
        X509Bundle.fromDer('b.example', ctxB.svids[0]!.bundleDer),
        ...[...ctxB.federatedBundles].map(([td, ders]) => X509Bundle.fromDer(td.replace('spiffe://', ''), ders)),
      ]);
      expect(verifyX509Svid(ctxA.svids[0]!.chainDer, bundlesAtB, { now: Date.now() }).spiffeId.toString()).toBe('spiffe://a.example/wa');

      // A's ValidateJWTSVID accepts B's JWT-SVID.
      const tokenB = await clientB.fetchJwtSvid({ audience: ['https://a.example/api'] });
      const validated = await clientA.validateJwtSvid(tokenB.token, 'https://a.example/api');
      expect(validated.spiffeId).toBe('spiffe://b.example/wb');


      // Remove the federation at A: B's bundle disappears from A's streams and B's tokens fail there.
      clientA.close();
      await a.stop();
      a = await startTestServer({ dir: dirA, trustDomain: 'a.example', yaml: endpointYaml(portA) });
      servers[0] = a;
      const clientA2 = new WorkloadApiClient({ socketPath: a.config.workloadSocket });
      try {
        const ctxA2 = await clientA2.fetchX509Context();
        expect(ctxA2.federatedBundles.size).toBe(0);
        const bundlesAfter = new BundleSet([X509Bundle.fromDer('a.example', ctxA2.svids[0]!.bundleDer)]);
        expect(() => verifyX509Svid(svidB.chainDer, bundlesAfter, { now: Date.now() })).toThrow(/bundle/i);
        await expect(clientA2.validateJwtSvid(tokenB.token, 'https://a.example/api')).rejects.toMatchObject({ code: 'invalid_argument' });
      } finally {
        clientA2.close();
      }
    } finally {
      clientA.close();
      clientB.close();
    }
  }, 60_000);
});
