import { createPrivateKey, createPublicKey, verify, X509Certificate as NodeCert } from 'node:crypto';
import { chmodSync, chownSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { SpiffeId, TrustDomain } from '../spiffe/spiffe-id.js';
import type { CertificateAuthority } from './authority.js';
import { errorOf, openssl, opensslVerify, openTestCa, tempDir, toPem } from './testing.js';

const ID = SpiffeId.parse('spiffe://example.org/agent/a/task/1');
const H = 3_600_000;

/** Node-level chain check: leaf <- signing CA (<- upstream intermediate) <- one of the bundle's roots, at `now`. */
function chainVerifies(ca: CertificateAuthority, chain: Buffer[], now: number): boolean {
  const certs = chain.map((c) => new NodeCert(c));
  for (let i = 0; i + 1 < certs.length; i++) {
    if (!certs[i]!.checkIssued(certs[i + 1]!) || !certs[i]!.verify(certs[i + 1]!.publicKey)) return false;
  }
  const top = certs[certs.length - 1]!;
  const within = (c: NodeCert) => Date.parse(c.validFrom) <= now && now <= Date.parse(c.validTo);
  return certs.every(within) && ca.x509Bundle().some((r) => {
    const root = new NodeCert(r);
    return within(root) && top.checkIssued(root) && top.verify(root.publicKey);
  });
}

function verifyJwt(ca: CertificateAuthority, token: string): boolean {
  const [h, p, s] = token.split('.');
  const header = JSON.parse(Buffer.from(h!, 'base64url').toString());
  const jwk = ca.jwtKeys().find((k) => k.kid === header.kid);
  if (!jwk) return false;
  const key = createPublicKey({ key: { ...jwk }, format: 'jwk' });
  return verify('sha256', Buffer.from(`${h}.${p}`), { key, dsaEncoding: 'ieee-p1363' }, Buffer.from(s!, 'base64url'));
}

describe('CertificateAuthority: create and load', () => {
  const dir = tempDir();
  afterAll(() => dir.cleanup());

  it('creates root, signing CA and JWT key on first start, with private files', async () => {
    const { ca } = await openTestCa(dir.path);
    const caDir = join(dir.path, 'ca');
    expect(statSync(dir.path).mode & 0o777).toBe(0o700);
    expect(statSync(caDir).mode & 0o777).toBe(0o700);
    const files = readdirSync(caDir);
    expect(files.filter((f) => f.endsWith('.key'))).toHaveLength(3);
    for (const f of files.filter((f) => f.endsWith('.key') || f === 'state.json')) {
      expect(statSync(join(caDir, f)).mode & 0o777).toBe(0o600);
    }
    const root = new NodeCert(ca.x509Bundle()[0]!);
    expect(root.ca).toBe(true);
    expect(root.subject).toMatch(/O=agentid/);
    expect(root.subjectAltName).toBe('URI:spiffe://example.org');
    const rootText = openssl(['x509', '-noout', '-text'], toPem(root.raw)).stdout;
    expect(rootText).toMatch(/Basic Constraints: critical\s+CA:TRUE\n/);
    expect(rootText).toMatch(/Key Usage: critical\s+Certificate Sign, CRL Sign/);
    expect(rootText).toMatch(/Subject Key Identifier/);
    expect(rootText).not.toMatch(/Name Constraints/);
    const svid = ca.mintX509Svid({ spiffeId: ID, ttlMs: H });
    const signingText = openssl(['x509', '-noout', '-text'], toPem(svid.chainDer[1]!)).stdout;
    expect(signingText).toMatch(/CA:TRUE, pathlen:0/);
    expect(signingText).toMatch(/Authority Key Identifier/);
    expect(signingText).toMatch(/URI:spiffe:\/\/example.org\n/);
    // Defaults: root one year, signing CA 24 h.
    expect(Date.parse(root.validTo) - Date.parse(root.validFrom)).toBe(365 * 24 * H + 10_000);
    const signing = new NodeCert(svid.chainDer[1]!);
    expect(Date.parse(signing.validTo) - Date.parse(signing.validFrom)).toBe(24 * H + 10_000);
  });

  it('reuses the stored CA on restart', async () => {
    const first = (await openTestCa(dir.path)).ca;
    const second = (await openTestCa(dir.path)).ca;
    expect(second.x509Bundle()).toEqual(first.x509Bundle());
    expect(second.x509BundleVersion()).toBe(first.x509BundleVersion());
    expect(second.jwtKeys()).toEqual(first.jwtKeys());
    expect(second.describe()).toEqual(first.describe());
    const svid = second.mintX509Svid({ spiffeId: ID, ttlMs: H });
    expect(svid.issuerId).toBe(first.mintX509Svid({ spiffeId: ID, ttlMs: H }).issuerId);
  });

  it('mints SVIDs whose certificate and key are in memory of their own (a cached SVID keeps no shared Buffer-pool slab alive)', async () => {
    const { ca } = await openTestCa(dir.path);
    const ownMemory = (b: Buffer) => b.byteOffset === 0 && b.buffer.byteLength === b.length;
    for (let i = 0; i < 3; i++) {
      const svid = ca.mintX509Svid({ spiffeId: ID, ttlMs: H });
      expect(ownMemory(svid.certDer)).toBe(true);
      expect(svid.chainDer[0]).toBe(svid.certDer);
      expect(ownMemory(svid.privateKeyPkcs8.reveal())).toBe(true);
      expect(new NodeCert(svid.certDer).checkPrivateKey(createPrivateKey({ key: svid.privateKeyPkcs8.reveal(), format: 'der', type: 'pkcs8' }))).toBe(true);
    }
  });

  it('describe() names IDs and dates but holds no key material', async () => {
    const { ca } = await openTestCa(dir.path);
    const text = JSON.stringify(ca.describe());
    expect(text).not.toMatch(/BEGIN|PRIVATE/);
    const caDir = join(dir.path, 'ca');
    for (const f of readdirSync(caDir).filter((f) => f.endsWith('.key'))) {
      const body = readFileSync(join(caDir, f), 'latin1').split('\n')[1]!;
      expect(text).not.toContain(body.slice(10, 40));
    }
    expect(text).toContain('"slot":"active"');
  });
});

describe('CertificateAuthority: refuses unsafe or unloadable state', () => {
  const cases: [string, (caDir: string, dataDir: string) => void, RegExp][] = [
    ['a group-readable key file', (caDir) => chmodSync(join(caDir, readdirSync(caDir).find((f) => f.startsWith('signing-') && f.endsWith('.key'))!), 0o640), /mode 0640/],
    ['a world-writable data directory', (_caDir, dataDir) => chmodSync(dataDir, 0o777), /writable by group or others/],
    ['a group-writable CA directory', (caDir) => chmodSync(caDir, 0o770), /must be 0700/],
    ['a CA directory others can read (0755)', (caDir) => chmodSync(caDir, 0o755), /open to group or others \(mode 0755\); it must be 0700/],
    ['a key file owned by another uid', (caDir) => {
      const key = join(caDir, readdirSync(caDir).find((f) => f.startsWith('signing-') && f.endsWith('.key'))!);
      chownSync(key, 65534, 65534);
    }, /owned by uid 65534, not by the server's uid/],
    ['a key file replaced by a symbolic link', (caDir) => {
      const key = join(caDir, readdirSync(caDir).find((f) => f.startsWith('signing-') && f.endsWith('.key'))!);
      renameSync(key, `${key}.real`);
      symlinkSync(`${key}.real`, key);
    }, /is a symbolic link/],
    ['a missing state file next to CA files', (caDir) => rmSync(join(caDir, 'state.json')), /state .* is missing but/],
    ['a corrupt state file', (caDir) => writeFileSync(join(caDir, 'state.json'), '{"version":1,', { mode: 0o600 }), /not valid JSON/],
    ['a state file naming a file outside the directory', (caDir) => {
      const s = JSON.parse(readFileSync(join(caDir, 'state.json'), 'utf8'));
      s.jwt[0].id = '../../etc/x';
      writeFileSync(join(caDir, 'state.json'), JSON.stringify(s), { mode: 0o600 });
    }, /bad id/],
    ['a missing signing CA key', (caDir) => rmSync(join(caDir, readdirSync(caDir).find((f) => f.startsWith('signing-') && f.endsWith('.key'))!)), /cannot be read/],
    ['a signing certificate swapped for another', (caDir) => {
      const files = readdirSync(caDir);
      const root = files.find((f) => f.startsWith('root-') && f.endsWith('.pem'))!;
      const signing = files.find((f) => f.startsWith('signing-') && f.endsWith('.pem'))!;
      writeFileSync(join(caDir, signing), readFileSync(join(caDir, root)));
    }, /does not match the certificate/],
  ];

  it.each(cases)('refuses %s, and leaves the existing CA in place', async (_name, damage, message) => {
    const dir = tempDir();
    try {
      const { ca } = await openTestCa(dir.path);
      const bundle = ca.x509Bundle();
      const caDir = join(dir.path, 'ca');
      damage(caDir, dir.path);
      const before = readdirSync(caDir).sort();
      const err = await errorOf(openTestCa(dir.path));
      expect(err.code).toBe('failed_precondition');
      expect(err.message).toMatch(message);
      expect(readdirSync(caDir).sort()).toEqual(before);
      const rootFile = before.find((f) => f.startsWith('root-') && f.endsWith('.pem'));
      if (rootFile) expect(readFileSync(join(caDir, rootFile), 'latin1')).toBe(toPem(bundle[0]!));
    } finally {
      dir.cleanup();
    }
  });

  it('refuses a state of another trust domain', async () => {
    const dir = tempDir();
    try {
      await openTestCa(dir.path);
      const err = await errorOf(openTestCa(dir.path, { trustDomain: TrustDomain.parse('other.org') }));
      expect(err.code).toBe('failed_precondition');
      expect(err.message).toMatch(/belongs to trust domain example.org/);
    } finally {
      dir.cleanup();
    }
  });

  it.each([
    [{ caTtlMs: 0 }, /caTtlMs/],
    [{ jwtIssuer: 'not a url' }, /jwtIssuer/],
    [{ jwtIssuer: 'https://u:p@example.org' }, /jwtIssuer/],
    [{ keyType: 'rsa' as never }, /keyType/],
  ])('refuses options %j', async (opts, message) => {
    const dir = tempDir();
    try {
      const err = await errorOf(openTestCa(dir.path, opts));
      expect(err.code).toBe('invalid_argument');
      expect(err.message).toMatch(message);
    } finally {
      dir.cleanup();
    }
  });
});

describe('CertificateAuthority: rotation over time', () => {
  const dir = tempDir();
  afterAll(() => dir.cleanup());

  it('keeps every minted SVID verifiable against the current bundle until it expires', async () => {
    const clock = new ManualClock(Date.UTC(2026, 0, 1));
    const opts = { clock, rootTtlMs: 12 * H, caTtlMs: 2 * H, jwtKeyTtlMs: 2 * H, maxJwtTtlMs: 30 * 60_000 };
    let { ca } = await openTestCa(dir.path, opts);
    const live: { chain: Buffer[]; notAfter: number }[] = [];
    const tokens: { token: string; exp: number }[] = [];
    const rootsSeen = new Set<string>();
    const signingSeen = new Set<string>();
    let versions = new Set<number>([ca.x509BundleVersion()]);
    const end = clock.now() + 40 * H;
    let steps = 0;
    while (clock.now() < end) {
      const svid = ca.mintX509Svid({ spiffeId: ID, ttlMs: 20 * 60_000 });
      signingSeen.add(svid.issuerId);
      live.push({ chain: svid.chainDer, notAfter: svid.notAfter });
      const jwt = ca.mintJwtSvid({ spiffeId: ID, audience: ['x'], ttlMs: 2 * H });
      // Clamped to maxJwtTtlMs.
      expect(jwt.expiresAt - jwt.issuedAt).toBeLessThanOrEqual(30 * 60_000);
      tokens.push({ token: jwt.token.reveal(), exp: jwt.expiresAt });
      for (const r of ca.x509Bundle()) rootsSeen.add(r.toString('base64'));

      // Step to the next rotation point, or 10 minutes, whichever is sooner.
      const next = Math.min(ca.nextRotationAt(), clock.now() + 10 * 60_000);
      await clock.advance(Math.max(1000, next - clock.now()));
      await ca.rotate();
      versions.add(ca.x509BundleVersion());
      steps++;
      // Restart now and then: state on disk is complete.
      if (steps % 25 === 0) ({ ca } = await openTestCa(dir.path, opts));

      const now = clock.now();
      for (const l of live.filter((x) => x.notAfter > now)) expect(chainVerifies(ca, l.chain, now)).toBe(true);
      for (const t of tokens.filter((x) => x.exp > now)) expect(verifyJwt(ca, t.token)).toBe(true);
      expect(ca.describe()).toMatchObject({ signingCas: expect.any(Array) });
    }
    expect(rootsSeen.size).toBeGreaterThanOrEqual(3);
    expect(signingSeen.size).toBeGreaterThanOrEqual(15);
    expect(versions.size).toBeGreaterThanOrEqual(4);
    // Expired material is removed from disk as well as from the bundle.
    const caDir = join(dir.path, 'ca');
    const d = ca.describe() as { roots: unknown[]; signingCas: unknown[]; jwtKeys: unknown[] };
    expect(readdirSync(caDir).filter((f) => f.startsWith('signing-') && f.endsWith('.key'))).toHaveLength(d.signingCas.length);
    expect(d.signingCas.length).toBeLessThanOrEqual(3);
    expect(readdirSync(caDir).filter((f) => f.startsWith('root-') && f.endsWith('.key'))).toHaveLength(d.roots.length);
    expect(readdirSync(caDir).filter((f) => f.startsWith('jwt-'))).toHaveLength(d.jwtKeys.length);
    // A leaf minted at the end still passes openssl against the bundle.
    const svid = ca.mintX509Svid({ spiffeId: ID, ttlMs: H });
    const r = opensslVerify(dir.path, { roots: ca.x509Bundle(), intermediates: svid.chainDer.slice(1), leaf: svid.certDer, at: clock.now() });
    expect(r.stdout).toMatch(/: OK/);
  });

  it('serializes concurrent rotate() calls', async () => {
    const d = tempDir();
    try {
      const clock = new ManualClock(Date.UTC(2026, 0, 1));
      const { ca } = await openTestCa(d.path, { clock, caTtlMs: 2 * H });
      await clock.advance(H);
      const results = await Promise.all([ca.rotate(), ca.rotate(), ca.rotate()]);
      expect(results.filter((r) => r.changed)).toHaveLength(1);
      const signing = (ca.describe() as { signingCas: { slot: string }[] }).signingCas;
      expect(signing.map((s) => s.slot).sort()).toEqual(['active', 'prepared']);
    } finally {
      d.cleanup();
    }
  });
});

describe('CertificateAuthority: upstream CA', () => {
  const dir = tempDir();
  afterAll(() => dir.cleanup());
  const f = (name: string) => join(dir.path, name);
  const run = (args: string[]) => {
    const r = openssl(args);
    if (r.status !== 0) throw new Error(r.stderr);
  };
  // An organisation root (EC) and an intermediate under it (RSA), made with openssl.
  writeFileSync(
    f('int.ext'),
    'basicConstraints=critical,CA:TRUE,pathlen:1\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n',
  );
  writeFileSync(f('leafish.ext'), 'basicConstraints=critical,CA:FALSE\n');
  run(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', f('root.key'), '-out', f('root.pem'),
    '-subj', '/O=Org/CN=Org Root', '-days', '30', '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign', '-addext', 'subjectKeyIdentifier=hash']);
  run(['req', '-new', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('int.key'), '-out', f('int.csr'), '-subj', '/O=Org/CN=Org Issuing CA']);
  run(['x509', '-req', '-in', f('int.csr'), '-CA', f('root.pem'), '-CAkey', f('root.key'), '-days', '20', '-extfile', f('int.ext'), '-out', f('int.pem')]);
  run(['x509', '-req', '-in', f('int.csr'), '-CA', f('root.pem'), '-CAkey', f('root.key'), '-days', '20', '-extfile', f('leafish.ext'), '-out', f('notca.pem')]);
  for (const k of ['root.key', 'int.key']) chmodSync(f(k), 0o600);

  const realNow = () => new ManualClock(Math.floor(Date.now() / 1000) * 1000);

  it('issues under a self-signed upstream root; the bundle is that root', async () => {
    const clock = realNow();
    const { ca } = await openTestCa(join(dir.path, 'd1'), { clock, upstream: { certFile: f('root.pem'), keyFile: f('root.key') } });
    const rootDer = new NodeCert(readFileSync(f('root.pem'))).raw;
    expect(ca.x509Bundle()).toEqual([rootDer]);
    const svid = ca.mintX509Svid({ spiffeId: ID, ttlMs: H });
    expect(svid.chainDer).toHaveLength(2);
    const r = opensslVerify(dir.path, { roots: ca.x509Bundle(), intermediates: svid.chainDer.slice(1), leaf: svid.certDer, at: clock.now() });
    expect(r.stdout).toMatch(/: OK/);
    expect(JSON.stringify(ca.describe())).toContain('"mode":"upstream"');
  });

  it('issues under an RSA upstream intermediate; chains carry it, the bundle is the root', async () => {
    const clock = realNow();
    const { ca } = await openTestCa(join(dir.path, 'd2'), {
      clock,
      upstream: { certFile: f('int.pem'), keyFile: f('int.key'), bundleFile: f('root.pem') },
    });
    const svid = ca.mintX509Svid({ spiffeId: ID, ttlMs: H });
    expect(svid.chainDer).toHaveLength(3);
    expect(svid.chainDer[2]).toEqual(new NodeCert(readFileSync(f('int.pem'))).raw);
    const r = opensslVerify(dir.path, { roots: ca.x509Bundle(), intermediates: svid.chainDer.slice(1), leaf: svid.certDer, at: clock.now() });
    expect(r.stdout).toMatch(/: OK/);
    // The signing CA's AKI is the intermediate's own SKI.
    const signingText = openssl(['x509', '-noout', '-text'], toPem(svid.chainDer[1]!)).stdout;
    const intText = openssl(['x509', '-noout', '-text', '-in', f('int.pem')]).stdout;
    const intSki = /Subject Key Identifier:\s*\n\s*([0-9A-F:]+)/.exec(intText)![1]!;
    expect(signingText).toMatch(new RegExp(`Authority Key Identifier:\\s*\\n\\s*(keyid:)?${intSki}`));
    // Signing CA lifetime is capped by nothing here but its own TTL, and the CRL verifies too.
    const [crl] = ca.buildCrls([{ serial: svid.serial, issuerId: svid.issuerId, revokedAt: clock.now() }]);
    const revoked = opensslVerify(dir.path, { roots: ca.x509Bundle(), intermediates: svid.chainDer.slice(1), leaf: svid.certDer, at: clock.now(), crls: [crl!] });
    expect(revoked.stdout + revoked.stderr).toMatch(/certificate revoked/);
  });

  it.each([
    ['an intermediate without bundleFile', () => ({ certFile: f('int.pem'), keyFile: f('int.key') }), /bundleFile must name the trust anchors/],
    ['a key that does not match', () => ({ certFile: f('root.pem'), keyFile: f('int.key') }), /does not match/],
    ['a certificate that is not a CA', () => ({ certFile: f('notca.pem'), keyFile: f('int.key'), bundleFile: f('root.pem') }), /is not a CA/],
    ['a group-readable key', () => {
      writeFileSync(f('loose.key'), readFileSync(f('root.key')), { mode: 0o644 });
      chmodSync(f('loose.key'), 0o644);
      return { certFile: f('root.pem'), keyFile: f('loose.key') };
    }, /mode 0644/],
  ])('refuses %s', async (_name, upstream, message) => {
    const err = await errorOf(openTestCa(join(dir.path, 'bad'), { clock: realNow(), upstream: upstream() }));
    expect(err.code).toBe('failed_precondition');
    expect(err.message).toMatch(message);
  });

  it('does not silently switch a self-managed CA to an upstream one', async () => {
    const clock = realNow();
    await openTestCa(join(dir.path, 'd3'), { clock });
    const err = await errorOf(openTestCa(join(dir.path, 'd3'), { clock, upstream: { certFile: f('root.pem'), keyFile: f('root.key') } }));
    expect(err.code).toBe('failed_precondition');
    expect(err.message).toMatch(/does not replace a CA silently/);
  });
});
