import { createHash, createPrivateKey, createPublicKey, X509Certificate as NodeCert } from 'node:crypto';
import { AsnConvert } from '@peculiar/asn1-schema';
import { Certificate } from '@peculiar/asn1-x509';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { isAgentIdError } from '../common/errors.js';
import { SpiffeId, TrustDomain } from '../spiffe/spiffe-id.js';
import type { CertificateAuthority, MintedX509Svid } from './authority.js';
import * as der from './der.js';
import { EPOCH, openssl, opensslVerify, openTestCa, tempDir, toPem, writeFiles } from './testing.js';
import { x509 } from './x509-lib.js';
import { OID } from './x509-template.js';

const ID = SpiffeId.parse('spiffe://example.org/agent/planner/task/t-1');

/** Every rule of the leaf profile, checked on the parsed certificate. */
function checkLeafProfile(svid: MintedX509Svid, ca: { certDer: Buffer; notAfter: number }, dnsNames: string[] = []) {
  const leaf = new x509.X509Certificate(svid.certDer);
  const caCert = new x509.X509Certificate(ca.certDer);
  expect(leaf.extensions.map((e) => [e.type, e.critical])).toEqual([
    [OID.basicConstraints, true],
    [OID.keyUsage, true],
    [OID.extKeyUsage, false],
    [OID.subjectKeyIdentifier, false],
    [OID.authorityKeyIdentifier, false],
    [OID.subjectAltName, false],
  ]);
  expect(leaf.getExtension(x509.BasicConstraintsExtension)!.ca).toBe(false);
  expect(leaf.getExtension(x509.KeyUsagesExtension)!.usages).toBe(x509.KeyUsageFlags.digitalSignature);
  expect(leaf.getExtension(x509.ExtendedKeyUsageExtension)!.usages).toEqual([OID.serverAuth, OID.clientAuth]);
  const san = leaf.getExtension(x509.SubjectAlternativeNameExtension)!.names.toJSON();
  expect(san).toEqual([{ type: 'url', value: svid.spiffeId }, ...dnsNames.map((d) => ({ type: 'dns', value: d }))]);
  const leafSpki = Buffer.from(leaf.publicKey.rawData);
  const keyBits = der.contentOf(leafSpki, der.children(leafSpki, der.readTlv(leafSpki))[1]!).subarray(1);
  expect(leaf.getExtension(x509.SubjectKeyIdentifierExtension)!.keyId).toBe(createHash('sha1').update(keyBits).digest('hex'));
  expect(leaf.getExtension(x509.AuthorityKeyIdentifierExtension)!.keyId).toBe(
    caCert.getExtension(x509.SubjectKeyIdentifierExtension)!.keyId,
  );
  expect(leaf.subject).toBe('O=agentid');
  expect(leaf.issuer).toBe(caCert.subject);
  // The key handed out is the key in the certificate.
  const priv = createPrivateKey({ key: svid.privateKeyPkcs8.reveal(), format: 'der', type: 'pkcs8' });
  expect(createPublicKey(priv).export({ format: 'der', type: 'spki' }).equals(leafSpki)).toBe(true);
  // Serial: positive, at least 64 bits, reported in the form a parser reads back.
  expect(leaf.serialNumber).toBe(svid.serial);
  expect(parseInt(svid.serial.slice(0, 2), 16)).toBeLessThan(0x80);
  expect(svid.serial.length * 4).toBeGreaterThanOrEqual(64);
  // Validity: whole seconds, inside the CA.
  expect(leaf.notBefore.getTime()).toBe(svid.notBefore);
  expect(leaf.notAfter.getTime()).toBe(svid.notAfter);
  expect(svid.notAfter).toBeLessThanOrEqual(ca.notAfter);
  // Signature verifies with Node's verifier, and Node agrees the CA issued it.
  const node = new NodeCert(svid.certDer);
  const nodeCa = new NodeCert(ca.certDer);
  expect(node.verify(nodeCa.publicKey)).toBe(true);
  expect(node.checkIssued(nodeCa)).toBe(true);
  // Byte-level round trip: a strict ASN.1 schema parse re-serializes to exactly our bytes.
  const parsed = AsnConvert.parse(svid.certDer, Certificate);
  expect(Buffer.from(AsnConvert.serialize(parsed)).equals(svid.certDer)).toBe(true);
  const tbs = der.bytesOf(svid.certDer, der.children(svid.certDer, der.readTlv(svid.certDer))[0]!);
  expect(Buffer.from(AsnConvert.serialize(parsed.tbsCertificate)).equals(tbs)).toBe(true);
}

describe('X.509-SVID template (P-256)', () => {
  const dir = tempDir();
  let ca: CertificateAuthority;
  let clock: ManualClock;
  let signing: { certDer: Buffer; notAfter: number };

  beforeAll(async () => {
    ({ ca, clock } = await openTestCa(dir.path));
    const first = ca.mintX509Svid({ spiffeId: ID, ttlMs: 3_600_000 });
    signing = { certDer: first.chainDer[1]!, notAfter: Date.parse(new NodeCert(first.chainDer[1]!).validTo) };
  });
  afterAll(() => dir.cleanup());

  it('mints leaves that follow the profile exactly, with unique serials', () => {
    const serials = new Set<string>();
    for (let i = 0; i < 300; i++) {
      const svid = ca.mintX509Svid({ spiffeId: ID, ttlMs: 3_600_000 });
      if (i < 40) checkLeafProfile(svid, signing);
      serials.add(svid.serial);
      expect(svid.chainDer).toHaveLength(2);
      expect(svid.chainDer[0]!.equals(svid.certDer)).toBe(true);
    }
    expect(serials.size).toBe(300);
  });

  it('passes openssl verify -x509_strict, and openssl shows the extensions', () => {
    const svid = ca.mintX509Svid({ spiffeId: ID, ttlMs: 3_600_000, dnsNames: ['planner.example.org'] });
    checkLeafProfile(svid, signing, ['planner.example.org']);
    const r = opensslVerify(dir.path, { roots: ca.x509Bundle(), intermediates: [svid.chainDer[1]!], leaf: svid.certDer, at: clock.now() });
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/: OK/);
    const text = openssl(['x509', '-noout', '-text'], toPem(svid.certDer)).stdout;
    expect(text).toMatch(/Basic Constraints: critical\s+CA:FALSE/);
    expect(text).toMatch(/Key Usage: critical\s+Digital Signature\n/);
    expect(text).toMatch(/Extended Key Usage:\s*\n\s+TLS Web Server Authentication, TLS Web Client Authentication/);
    expect(text).toMatch(/URI:spiffe:\/\/example.org\/agent\/planner\/task\/t-1, DNS:planner.example.org/);
    expect(text).toMatch(/Subject Key Identifier/);
    expect(text).toMatch(/Authority Key Identifier/);
  });

  it('openssl rejects the leaf before notBefore and after notAfter', () => {
    const svid = ca.mintX509Svid({ spiffeId: ID, ttlMs: 600_000 });
    const inputs = { roots: ca.x509Bundle(), intermediates: [svid.chainDer[1]!], leaf: svid.certDer };
    expect(opensslVerify(dir.path, { ...inputs, at: svid.notAfter + 1000 }).stdout).not.toMatch(/: OK/);
    expect(opensslVerify(dir.path, { ...inputs, at: svid.notBefore - 1000 }).stdout).not.toMatch(/: OK/);
  });

  it('caps notAfter at the signing CA notAfter', () => {
    const svid = ca.mintX509Svid({ spiffeId: ID, ttlMs: 10 * 24 * 3_600_000 });
    expect(svid.notAfter).toBe(signing.notAfter);
  });

  it.each([
    ['a foreign trust domain', { spiffeId: SpiffeId.parse('spiffe://other.org/a') }, /not in trust domain/],
    ['the trust domain ID itself', { spiffeId: SpiffeId.parse('spiffe://example.org') }, /trust domain ID itself/],
    ['a TTL under a second', { ttlMs: 999 }, /at least one second/],
    ['an uppercase DNS name', { dnsNames: ['Host.example.org'] }, /DNS name/],
    ['a DNS name with a space', { dnsNames: ['a b'] }, /DNS name/],
    ['an empty DNS name', { dnsNames: [''] }, /DNS name/],
  ])('refuses %s', (_name, patch, message) => {
    let err: unknown;
    try {
      ca.mintX509Svid({ spiffeId: ID, ttlMs: 60_000, ...patch });
    } catch (e) {
      err = e;
    }
    expect(isAgentIdError(err, 'invalid_argument')).toBe(true);
    expect((err as Error).message).toMatch(message);
  });
});

describe('X.509-SVID template (P-384 CA and leaves)', () => {
  const dir = tempDir();
  afterAll(() => dir.cleanup());

  it('mints verifiable leaves with ecdsa-with-SHA384', async () => {
    const { ca, clock } = await openTestCa(dir.path, { keyType: 'ec-p384', svidKeyType: 'ec-p384' });
    const svid = ca.mintX509Svid({ spiffeId: ID, ttlMs: 3_600_000 });
    checkLeafProfile(svid, { certDer: svid.chainDer[1]!, notAfter: Date.parse(new NodeCert(svid.chainDer[1]!).validTo) });
    expect(new x509.X509Certificate(svid.certDer).signatureAlgorithm).toMatchObject({ name: 'ECDSA', hash: { name: 'SHA-384' } });
    const r = opensslVerify(dir.path, { roots: ca.x509Bundle(), intermediates: [svid.chainDer[1]!], leaf: svid.certDer, at: clock.now() });
    expect(r.stdout).toMatch(/: OK/);
  });
});

describe('X.509-SVID dates across the UTCTime / GeneralizedTime boundary', () => {
  const dir = tempDir();
  afterAll(() => dir.cleanup());

  it('a leaf from 2049 into 2050 encodes, parses and verifies', async () => {
    const clock = new ManualClock(Date.UTC(2049, 11, 31, 23, 30, 0));
    const { ca } = await openTestCa(dir.path, { clock, trustDomain: TrustDomain.parse('example.org') });
    const svid = ca.mintX509Svid({ spiffeId: ID, ttlMs: 3_600_000 });
    expect(new Date(svid.notBefore).getUTCFullYear()).toBe(2049);
    expect(new Date(svid.notAfter).getUTCFullYear()).toBe(2050);
    checkLeafProfile(svid, { certDer: svid.chainDer[1]!, notAfter: Date.parse(new NodeCert(svid.chainDer[1]!).validTo) });
    const f = writeFiles(dir.path, { 'l.pem': toPem(svid.certDer) });
    const text = openssl(['asn1parse', '-in', f['l.pem']!]).stdout;
    expect(text).toMatch(/UTCTIME\s+:491231232\d{3}Z/);
    expect(text).toMatch(/GENERALIZEDTIME\s+:20500101003000Z/);
    const r = opensslVerify(dir.path, {
      roots: ca.x509Bundle(),
      intermediates: [svid.chainDer[1]!],
      leaf: svid.certDer,
      at: Date.UTC(2050, 0, 1, 0, 10),
    });
    expect(r.stdout).toMatch(/: OK/);
  });
});
