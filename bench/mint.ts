/*
 * Minting throughput on one core: X.509-SVIDs from the DER template, JWT-SVIDs, and, for
 * comparison, X.509-SVIDs built with @peculiar/x509's generator (the library path the template
 * replaces). Run alone: node --import tsx bench/mint.ts
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { silentLogger } from '../src/common/logger.js';
import { systemClock } from '../src/common/system-clock.js';
import { SpiffeId, TrustDomain } from '../src/spiffe/spiffe-id.js';
import { CertificateAuthority } from '../src/ca/authority.js';
import { generateLeafKeyPair, SigningKey } from '../src/ca/keys.js';
import { x509 } from '../src/ca/x509-lib.js';

export interface BenchResult {
  name: string;
  opsPerSec: number;
}

/** Runs `op` repeatedly for about `ms` (after a short warm-up) and returns operations per second. */
async function measure(op: () => unknown | Promise<unknown>, ms = 1500): Promise<number> {
  const warmUntil = performance.now() + 200;
  while (performance.now() < warmUntil) await op();
  let count = 0;
  const start = performance.now();
  let elapsed = 0;
  do {
    for (let i = 0; i < 50; i++) await op();
    count += 50;
    elapsed = performance.now() - start;
  } while (elapsed < ms);
  return Math.round(count / (elapsed / 1000));
}

function measureSync(op: () => unknown, ms = 1500): number {
  const warmUntil = performance.now() + 200;
  while (performance.now() < warmUntil) op();
  let count = 0;
  const start = performance.now();
  let elapsed = 0;
  do {
    for (let i = 0; i < 200; i++) op();
    count += 200;
    elapsed = performance.now() - start;
  } while (elapsed < ms);
  return Math.round(count / (elapsed / 1000));
}

export async function benchMint(): Promise<BenchResult[]> {
  const dataDir = mkdtempSync(join(tmpdir(), 'agentid-bench-'));
  try {
    const td = TrustDomain.parse('bench.example');
    const ca = await CertificateAuthority.open({ dataDir, trustDomain: td, clock: systemClock, logger: silentLogger() });
    const id = SpiffeId.parse('spiffe://bench.example/agent/bench/task/t-1');
    const results: BenchResult[] = [];

    results.push({
      name: 'x509-svid (DER template, P-256)',
      opsPerSec: measureSync(() => ca.mintX509Svid({ spiffeId: id, ttlMs: 3_600_000 })),
    });
    results.push({
      name: 'jwt-svid (ES256)',
      opsPerSec: measureSync(() => ca.mintJwtSvid({ spiffeId: id, audience: ['bench'], ttlMs: 300_000 })),
    });

    // The same leaf profile through @peculiar/x509, with the same fast key generation.
    const chain = ca.mintX509Svid({ spiffeId: id, ttlMs: 60_000 }).chainDer;
    const issuer = new x509.X509Certificate(chain[1]!);
    const caKey = SigningKey.generate('ec-p256', 'bench');
    const { key: signingKey, algorithm } = await caKey.webCryptoKey();
    const now = Date.now();
    results.push({
      name: 'x509-svid (@peculiar/x509 generator, P-256)',
      opsPerSec: await measure(async () => {
        const kp = generateLeafKeyPair('ec-p256');
        await x509.X509CertificateGenerator.create({
          serialNumber: '4a'.padEnd(32, '1'),
          subject: 'O=agentid',
          issuer: issuer.subjectName,
          notBefore: new Date(now - 10_000),
          notAfter: new Date(now + 3_600_000),
          publicKey: kp.spki,
          signingKey,
          signingAlgorithm: algorithm,
          extensions: [
            new x509.BasicConstraintsExtension(false, undefined, true),
            new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
            new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
            await x509.SubjectKeyIdentifierExtension.create(kp.spki),
            new x509.AuthorityKeyIdentifierExtension('00'.repeat(20)),
            new x509.SubjectAlternativeNameExtension([{ type: 'url', value: id.toString() }]),
          ],
        });
      }, 1000),
    });
    return results;
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  for (const r of await benchMint()) console.log(`${r.name.padEnd(48)} ${String(r.opsPerSec).padStart(8)} ops/s`);
}
