import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ManualClock } from '../common/clock.js';
import { isAgentIdError } from '../common/errors.js';
import { SpiffeId } from '../spiffe/spiffe-id.js';
import type { CertificateAuthority } from './authority.js';
import { normalizeSerial } from './crl.js';
import * as der from './der.js';
import { openssl, opensslVerify, openTestCa, tempDir, toPem, writeFiles } from './testing.js';
import { x509 } from './x509-lib.js';

const ID = SpiffeId.parse('spiffe://example.org/agent/a/task/1');

describe('CRLs', () => {
  const dir = tempDir();
  let ca: CertificateAuthority;
  let clock: ManualClock;
  beforeAll(async () => {
    ({ ca, clock } = await openTestCa(dir.path));
  });
  afterAll(() => dir.cleanup());

  it('openssl verifies the CRL signature and rejects a revoked leaf while accepting others', () => {
    const revoked = ca.mintX509Svid({ spiffeId: ID, ttlMs: 3_600_000 });
    const good = ca.mintX509Svid({ spiffeId: ID, ttlMs: 3_600_000 });
    const [crl, ...more] = ca.buildCrls([{ serial: revoked.serial, issuerId: revoked.issuerId, revokedAt: clock.now() }]);
    // The rest is the root's CRL of signing CAs.
    expect(more).toHaveLength(1);
    const f = writeFiles(dir.path, {
      'chain.pem': [...ca.x509Bundle(), revoked.chainDer[1]!].map((c) => toPem(c)).join(''),
      'crl.der': crl!,
    });
    const check = openssl(['crl', '-inform', 'DER', '-in', f['crl.der']!, '-CAfile', f['chain.pem']!, '-noout']);
    expect(check.stderr).toMatch(/verify OK/);
    const base = { roots: ca.x509Bundle(), intermediates: [revoked.chainDer[1]!], at: clock.now(), crls: [crl!] };
    const bad = opensslVerify(dir.path, { ...base, leaf: revoked.certDer });
    expect(bad.stdout + bad.stderr).toMatch(/certificate revoked/);
    const ok = opensslVerify(dir.path, { ...base, leaf: good.certDer });
    expect(ok.stdout).toMatch(/: OK/);
  });

  it('with the root-signed CRL, OpenSSL full-chain checking (-crl_check_all, as nginx ssl_crl does) accepts a good leaf and refuses a revoked one', async () => {
    const revoked = ca.mintX509Svid({ spiffeId: ID, ttlMs: 3_600_000 });
    const good = ca.mintX509Svid({ spiffeId: ID, ttlMs: 3_600_000 });
    const crls = ca.buildCrls([{ serial: revoked.serial, issuerId: revoked.issuerId, revokedAt: clock.now() }]);
    const root = new x509.X509Certificate(ca.x509Bundle()[0]!);
    const signingCa = new x509.X509Certificate(good.chainDer[1]!);
    const parsed = crls.map((c) => new x509.X509Crl(c));
    expect(parsed.map((c) => c.issuer)).toEqual([signingCa.subject, root.subject]);
    expect(await parsed[1]!.verify({ publicKey: root })).toBe(true);
    // Nothing but leaves is revoked, so the root's list of signing CAs is empty.
    expect(parsed[1]!.entries).toHaveLength(0);

    const f = writeFiles(dir.path, {
      'all-roots.pem': ca.x509Bundle().map((c) => toPem(c)).join(''),
      'all-inter.pem': toPem(good.chainDer[1]!),
      'all-crls.pem': crls.map((c) => toPem(c, 'X509 CRL')).join(''),
      'only-signing-crl.pem': toPem(crls[0]!, 'X509 CRL'),
      'good.pem': toPem(good.certDer),
      'revoked.pem': toPem(revoked.certDer),
    });
    const verifyAll = (leaf: string, crlFile: string) =>
      openssl(['verify', '-x509_strict', '-attime', String(Math.floor(clock.now() / 1000)), '-CAfile', f['all-roots.pem']!,
        '-untrusted', f['all-inter.pem']!, '-crl_check_all', '-CRLfile', f[crlFile]!, f[leaf]!]);
    expect(verifyAll('good.pem', 'all-crls.pem').stdout).toMatch(/: OK/);
    const bad = verifyAll('revoked.pem', 'all-crls.pem');
    expect(bad.stdout + bad.stderr).toMatch(/certificate revoked/);
    // What nginx users met before: the signing CA's CRL alone does not satisfy a full-chain check.
    const partial = verifyAll('good.pem', 'only-signing-crl.pem');
    expect(partial.status).not.toBe(0);
    expect(partial.stdout + partial.stderr).toMatch(/unable to get certificate CRL/);
  });

  it('parses with @peculiar/x509 as a v2 CRL with AKI, CRL number and the given dates', async () => {
    const svid = ca.mintX509Svid({ spiffeId: ID, ttlMs: 3_600_000 });
    const revokedAt = clock.now() - 5000;
    const [crlDer] = ca.buildCrls([
      { serial: svid.serial.toUpperCase(), issuerId: svid.issuerId, revokedAt },
      { serial: svid.serial, issuerId: svid.issuerId, revokedAt: revokedAt + 1000 },
      { serial: 'abcdef', issuerId: 'some-other-ca', revokedAt },
    ]);
    const crl = new x509.X509Crl(crlDer!);
    const signingCa = new x509.X509Certificate(svid.chainDer[1]!);
    expect(await crl.verify({ publicKey: signingCa })).toBe(true);
    expect(crl.issuer).toBe(signingCa.subject);
    // Duplicates collapse to one entry (earliest date); other issuers' serials are left out.
    expect(crl.entries.map((e) => [e.serialNumber, e.revocationDate.getTime()])).toEqual([[svid.serial, Math.floor(revokedAt / 1000) * 1000]]);
    expect(crl.getExtension(x509.AuthorityKeyIdentifierExtension)!.keyId).toBe(
      signingCa.getExtension(x509.SubjectKeyIdentifierExtension)!.keyId,
    );
    expect(crl.getExtension('2.5.29.20')).not.toBeNull();
    expect(crl.thisUpdate.getTime()).toBeLessThanOrEqual(clock.now());
    expect(crl.nextUpdate!.getTime()).toBe(Math.floor((clock.now() + 24 * 3_600_000) / 1000) * 1000);
  });

  it('omits revokedCertificates when nothing is revoked (RFC 5280 §5.1.2.6)', () => {
    const [crlDer] = ca.buildCrls([]);
    const tbs = der.children(crlDer!, der.readTlv(crlDer!))[0]!;
    // version, signature, issuer, thisUpdate, nextUpdate, [0] extensions
    expect(der.children(crlDer!, tbs).map((t) => t.tag)).toEqual([0x02, 0x30, 0x30, 0x17, 0x17, 0xa0]);
    expect(new x509.X509Crl(crlDer!).entries).toHaveLength(0);
  });

  it('CRL numbers only grow, even within one millisecond', () => {
    const numbers = [0, 1, 2].map(() => {
      const text = openssl(['crl', '-inform', 'DER', '-noout', '-crlnumber'], ca.buildCrls([])[0]!).stdout;
      return BigInt(`0x${/crlNumber=(?:0x)?([0-9A-Fa-f]+)/.exec(text)![1]}`);
    });
    expect(numbers[1]! > numbers[0]!).toBe(true);
    expect(numbers[2]! > numbers[1]!).toBe(true);
  });

  it.each([
    ['00ff', 'ff'],
    ['0x0A', '0a'],
    ['0', '00'],
    ['ABC', '0abc'],
  ])('normalizes serial %s to %s', (input, out) => {
    expect(normalizeSerial(input)).toBe(out);
  });

  it.each(['', 'xyz', 'a'.repeat(41)])('refuses serial %j', (serial) => {
    let err: unknown;
    try {
      ca.buildCrls([{ serial, issuerId: 'another-ca', revokedAt: 0 }]);
    } catch (e) {
      err = e;
    }
    expect(isAgentIdError(err, 'invalid_argument')).toBe(true);
  });
});
