/*
 * Minting throughput on one core, in interleaved rounds: X.509-SVIDs from agentid's DER template,
 * JWT-SVIDs, and two baselines measured in the same rounds: the raw crypto limit (node:crypto
 * P-256 key generation plus one signature over a certificate-sized input) and @peculiar/x509's
 * certificate generator. Every minted SVID is parsed afterwards; every 8th is verified in full
 * (chain to the CA bundle, key matches certificate), so a fast wrong answer cannot score.
 */
import { createECDH, createPrivateKey, createPublicKey, generateKeyPairSync, sign, X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../src/common/logger.js';
import { systemClock } from '../src/common/system-clock.js';
import { SpiffeId, TrustDomain } from '../src/spiffe/spiffe-id.js';
import { CertificateAuthority, type MintedJwtSvid, type MintedX509Svid } from '../src/ca/authority.js';
import { generateLeafKeyPair, SigningKey } from '../src/ca/keys.js';
import { x509 } from '../src/ca/x509-lib.js';
import { BundleSet, JwtBundle, X509Bundle } from '../src/verify/bundle.js';
import { verifyJwtSvid } from '../src/verify/jwt.js';
import { verifyX509Svid } from '../src/verify/x509.js';

export interface MintSamples {
  /** ops/s per round */
  raw: number[];
  x509: number[];
  jwt: number[];
  peculiar: number[];
  /** SVIDs parsed / verified in full after the timed windows. */
  parsed: number;
  verified: number;
}

/** Runs `op` for about `ms` (after a short warm-up); returns operations per second. */
async function opsPerSecond(op: () => unknown, ms: number, batch: number): Promise<number> {
  const warmUntil = performance.now() + Math.min(100, ms / 4);
  while (performance.now() < warmUntil) await op();
  let count = 0;
  const start = performance.now();
  let elapsed = 0;
  do {
    for (let i = 0; i < batch; i++) await op();
    count += batch;
    elapsed = performance.now() - start;
  } while (elapsed < ms);
  return count / (elapsed / 1000);
}

const FULL_CHECK_EVERY = 8;

export async function benchMint(opts: { rounds: number; windowMs: number }): Promise<MintSamples> {
  const dataDir = mkdtempSync(join(tmpdir(), 'agentid-bench-mint-'));
  try {
    const td = TrustDomain.parse('bench.example');
    const ca = await CertificateAuthority.open({ dataDir, trustDomain: td, clock: systemClock, logger: silentLogger() });
    const id = SpiffeId.parse('spiffe://bench.example/agent/bench/task/t-1');
    const bundles = new BundleSet([X509Bundle.fromDer(td, ca.x509Bundle())]);
    const jwtBundle = JwtBundle.fromJwkSet(td, { keys: ca.jwtKeys() });

    // The raw limit signs an input the size of the certificate agentid mints.
    const certSized = Buffer.alloc(ca.mintX509Svid({ spiffeId: id, ttlMs: 60_000 }).certDer.length, 0x5a);
    const rawKey = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
    const ecdh = createECDH('prime256v1');

    // The same leaf profile through @peculiar/x509, with agentid's fast key generation.
    const chain = ca.mintX509Svid({ spiffeId: id, ttlMs: 60_000 }).chainDer;
    const issuer = new x509.X509Certificate(chain[1]!);
    const { key: signingKey, algorithm } = await SigningKey.generate('ec-p256', 'bench').webCryptoKey();
    const now = Date.now();
    const peculiar = async () => {
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
    };

    const out: MintSamples = { raw: [], x509: [], jwt: [], peculiar: [], parsed: 0, verified: 0 };
    const kinds = ['raw', 'x509', 'jwt', 'peculiar'] as const;
    for (let round = 0; round < opts.rounds; round++) {
      const minted: MintedX509Svid[] = [];
      const tokens: MintedJwtSvid[] = [];
      // Rotate the order so no kind always runs first (or last) in a round.
      for (let k = 0; k < kinds.length; k++) {
        const kind = kinds[(k + round) % kinds.length]!;
        if (kind === 'raw') {
          out.raw.push(await opsPerSecond(() => sign('sha256', certSized, rawKey) && ecdh.generateKeys(), opts.windowMs, 200));
        } else if (kind === 'x509') {
          out.x509.push(await opsPerSecond(() => minted.push(ca.mintX509Svid({ spiffeId: id, ttlMs: 3_600_000 })), opts.windowMs, 200));
        } else if (kind === 'jwt') {
          out.jwt.push(await opsPerSecond(() => tokens.push(ca.mintJwtSvid({ spiffeId: id, audience: ['bench'], ttlMs: 300_000 })), opts.windowMs, 200));
        } else {
          out.peculiar.push(await opsPerSecond(peculiar, opts.windowMs, 2));
        }
      }
      // Checked after the timed windows.
      const checkTime = Date.now();
      minted.forEach((m, i) => {
        const leaf = new X509Certificate(m.certDer);
        if (leaf.subjectAltName !== `URI:${m.spiffeId}`) throw new Error(`minted X.509-SVID has SAN ${leaf.subjectAltName}`);
        out.parsed++;
        if (i % FULL_CHECK_EVERY !== 0) return;
        verifyX509Svid(m.chainDer, bundles, { now: checkTime });
        const fromKey = createPublicKey(createPrivateKey({ key: m.privateKeyPkcs8.reveal(), format: 'der', type: 'pkcs8' })).export({ format: 'der', type: 'spki' });
        if (!fromKey.equals(leaf.publicKey.export({ format: 'der', type: 'spki' }))) throw new Error('minted X.509-SVID: key does not match certificate');
        out.verified++;
      });
      tokens.forEach((t, i) => {
        const payload = JSON.parse(Buffer.from(t.token.reveal().split('.')[1] ?? '', 'base64url').toString('utf8')) as { sub?: unknown };
        if (payload.sub !== t.spiffeId) throw new Error(`minted JWT-SVID has sub ${String(payload.sub)}`);
        out.parsed++;
        if (i % FULL_CHECK_EVERY !== 0) return;
        verifyJwtSvid(t.token.reveal(), jwtBundle, { audience: 'bench', now: checkTime });
        out.verified++;
      });
    }
    return out;
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
}
