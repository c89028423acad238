import { describe, expect, it } from 'vitest';
import { chainDer, fixture, FIXTURE_NOW, reasonOf } from '../../test/fixtures/load.js';
import { BundleSet, X509Bundle } from './bundle.js';
import { Certificate } from './certificate.js';
import { isVerificationError, type VerificationReason } from './errors.js';
import { RevocationChecker } from './revocation.js';
import { verifyX509Svid } from './x509.js';

const exampleBundle = X509Bundle.fromPem('example.org', fixture('x509/root.pem').toString());
const otherBundle = X509Bundle.fromPem('other.org', fixture('x509/other-root.pem').toString());
const bundles = new BundleSet([exampleBundle, otherBundle]);

describe('verifyX509Svid accepts', () => {
  it.each([
    ['good-leaf.pem', 'spiffe://example.org/svc/api', 3],
    ['good-client.pem', 'spiffe://example.org/agent/a1/task/t1', 3],
    ['good-leaf-signed-by-root.pem', 'spiffe://example.org/svc/direct', 2],
    ['good-deep-chain.pem', 'spiffe://example.org/svc/deep', 4],
    ['other-leaf.pem', 'spiffe://other.org/svc/api', 2],
  ])('%s as %s', (file, id, pathLength) => {
    const result = verifyX509Svid(chainDer(file), bundles, { now: FIXTURE_NOW });
    expect(result.spiffeId.toString()).toBe(id);
    expect(result.chain).toHaveLength(pathLength);
    expect(result.chain[result.chain.length - 1]!.equals(result.spiffeId.trustDomain.name === 'other.org' ? otherBundle.authorities[0]! : exampleBundle.authorities[0]!)).toBe(true);
  });

  it('a chain that also carries the root', () => {
    const chain = [...chainDer('good-leaf.pem'), ...chainDer('root.pem')];
    expect(verifyX509Svid(chain, bundles, { now: FIXTURE_NOW }).chain).toHaveLength(3);
  });

  it('at the exact notBefore and notAfter instants (bounds are inclusive)', () => {
    const leaf = new Certificate(chainDer('good-leaf.pem')[0]!);
    for (const now of [leaf.notBefore, leaf.notAfter]) {
      expect(verifyX509Svid(chainDer('good-leaf.pem'), bundles, { now }).spiffeId.path).toBe('/svc/api');
    }
    expect(reasonOf(() => verifyX509Svid(chainDer('good-leaf.pem'), bundles, { now: leaf.notAfter + 1 }))).toBe('expired');
    expect(reasonOf(() => verifyX509Svid(chainDer('good-leaf.pem'), bundles, { now: leaf.notBefore - 1 }))).toBe('not_yet_valid');
  });
});

describe('verifyX509Svid refuses, one rule per defect-named fixture', () => {
  it.each<[string, VerificationReason]>([
    ['leaf-is-ca.pem', 'leaf_is_ca'],
    ['two-uri-sans.pem', 'two_uri_sans'],
    ['no-uri-san.pem', 'no_uri_san'],
    ['bad-spiffe-id.pem', 'bad_spiffe_id'],
    ['expired.pem', 'expired'],
    ['not-yet-valid.pem', 'not_yet_valid'],
    ['key-cert-sign-on-leaf.pem', 'bad_key_usage'],
    ['crl-sign-on-leaf.pem', 'bad_key_usage'],
    ['no-digital-signature.pem', 'bad_key_usage'],
    ['signed-by-untrusted-ca.pem', 'untrusted'],
    ['bad-signature.pem', 'bad_signature'],
    ['intermediate-not-ca.pem', 'not_ca'],
    ['intermediate-no-key-cert-sign.pem', 'bad_key_usage'],
    ['expired-intermediate.pem', 'expired'],
    ['path-len-exceeded.pem', 'path_len_exceeded'],
    ['unknown-critical-extension.pem', 'unknown_critical_extension'],
  ])('%s -> %s', (file, reason) => {
    expect(reasonOf(() => verifyX509Svid(chainDer(file), bundles, { now: FIXTURE_NOW }))).toBe(reason);
  });

  it('errors carry code permission_denied and name the rule', () => {
    try {
      verifyX509Svid(chainDer('leaf-is-ca.pem'), bundles, { now: FIXTURE_NOW });
      expect.unreachable();
    } catch (err) {
      expect(isVerificationError(err, 'leaf_is_ca')).toBe(true);
      expect((err as Error & { code: string }).code).toBe('permission_denied');
      expect((err as Error).message).toMatch(/CA=false/);
    }
  });

  it('a leaf without its intermediate does not chain', () => {
    expect(reasonOf(() => verifyX509Svid(chainDer('good-leaf.pem').slice(0, 1), bundles, { now: FIXTURE_NOW }))).toBe('untrusted');
  });

  it('an empty, oversized or garbage chain is malformed', () => {
    expect(reasonOf(() => verifyX509Svid([], bundles, { now: FIXTURE_NOW }))).toBe('malformed');
    expect(reasonOf(() => verifyX509Svid([Buffer.from('30030201ff', 'hex')], bundles, { now: FIXTURE_NOW }))).toBe('malformed');
    const long = Array.from({ length: 9 }, () => chainDer('good-leaf.pem')[1]!);
    expect(reasonOf(() => verifyX509Svid(long, bundles, { now: FIXTURE_NOW }))).toBe('malformed');
  });
});

describe('trust domain separation (wrong-trust-domain.pem: spiffe://other.org leaf signed by the example.org CA)', () => {
  const chain = chainDer('wrong-trust-domain.pem');

  it('is checked against other.org only, never against a bundle that would verify it', () => {
    expect(reasonOf(() => verifyX509Svid(chain, bundles, { now: FIXTURE_NOW }))).toBe('untrusted');
  });
  it('with no other.org bundle at all: no_bundle', () => {
    expect(reasonOf(() => verifyX509Svid(chain, new BundleSet([exampleBundle]), { now: FIXTURE_NOW }))).toBe('no_bundle');
  });
  it('against a single bundle of another trust domain: wrong_trust_domain', () => {
    expect(reasonOf(() => verifyX509Svid(chain, exampleBundle, { now: FIXTURE_NOW }))).toBe('wrong_trust_domain');
    expect(verifyX509Svid(chainDer('good-leaf.pem'), exampleBundle, { now: FIXTURE_NOW }).spiffeId.toString()).toBe(
      'spiffe://example.org/svc/api',
    );
  });
  it('an empty bundle for the trust domain trusts nothing', () => {
    expect(reasonOf(() => verifyX509Svid(chainDer('good-leaf.pem'), new BundleSet([new X509Bundle('example.org', [])]), { now: FIXTURE_NOW }))).toBe('no_bundle');
  });
});

describe('revocation', () => {
  const crl = (name: string) => fixture(`x509/${name}`);

  it('revoked-serial.pem is refused when revoked.crl lists its serial', () => {
    const chain = chainDer('revoked-serial.pem');
    expect(verifyX509Svid(chain, bundles, { now: FIXTURE_NOW }).spiffeId.toString()).toBe('spiffe://example.org/svc/api');
    const crls = new RevocationChecker({ crls: [crl('revoked.crl')] });
    expect(reasonOf(() => verifyX509Svid(chain, bundles, { now: FIXTURE_NOW, crls }))).toBe('revoked');
    // Other certificates of the same issuer are not affected.
    expect(verifyX509Svid(chainDer('good-leaf.pem'), bundles, { now: FIXTURE_NOW, crls }).leaf.serial).toBe('1001');
  });

  it('crl-bad-signature.crl (same issuer name, forged signature) is never trusted', () => {
    const crls = new RevocationChecker({ crls: [crl('crl-bad-signature.crl')] });
    // It lists both 0badc0de and the good leaf's serial 1001; neither may be refused on its word.
    expect(verifyX509Svid(chainDer('revoked-serial.pem'), bundles, { now: FIXTURE_NOW, crls }).leaf.serial).toBe('badc0de');
    expect(verifyX509Svid(chainDer('good-leaf.pem'), bundles, { now: FIXTURE_NOW, crls }).leaf.serial).toBe('1001');
  });

  it('a CRL past its nextUpdate (crl-stale.crl) still revokes', () => {
    const crls = new RevocationChecker({ crls: [crl('crl-stale.crl')] });
    expect(reasonOf(() => verifyX509Svid(chainDer('revoked-serial.pem'), bundles, { now: FIXTURE_NOW, crls }))).toBe('revoked');
  });

  it("an intermediate revoked by the root's CRL takes its leaves down (revoked-intermediate.pem)", () => {
    const chain = chainDer('revoked-intermediate.pem');
    expect(verifyX509Svid(chain, bundles, { now: FIXTURE_NOW }).chain).toHaveLength(3);
    const crls = new RevocationChecker({ crls: [crl('root-revokes-intermediate.crl')] });
    expect(reasonOf(() => verifyX509Svid(chain, bundles, { now: FIXTURE_NOW, crls }))).toBe('revoked');
  });

  it('CRLs scoped to another trust domain do not apply; update() replaces in place', () => {
    const crls = new RevocationChecker();
    crls.update([crl('revoked.crl')], 'other.org');
    expect(verifyX509Svid(chainDer('revoked-serial.pem'), bundles, { now: FIXTURE_NOW, crls }).leaf.serial).toBe('badc0de');
    crls.update([crl('revoked.crl')], 'example.org');
    expect(reasonOf(() => verifyX509Svid(chainDer('revoked-serial.pem'), bundles, { now: FIXTURE_NOW, crls }))).toBe('revoked');
    crls.update([], 'example.org');
    expect(verifyX509Svid(chainDer('revoked-serial.pem'), bundles, { now: FIXTURE_NOW, crls }).leaf.serial).toBe('badc0de');
  });
});
