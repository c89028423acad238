import { describe, expect, it } from 'vitest';
import { chainDer, fixture } from '../../test/fixtures/load.js';
import { Certificate } from './certificate.js';
import { RevocationChecker } from './revocation.js';

const intermediate = new Certificate(chainDer('intermediate.pem')[0]!);
const root = new Certificate(chainDer('root.pem')[0]!);
const crl = (name: string) => fixture(`x509/${name}`);

describe('RevocationChecker.isRevoked', () => {
  it('answers from a CRL only for the issuer that signed it', () => {
    const c = new RevocationChecker({ crls: [crl('revoked.crl')] });
    expect(c.isRevoked(intermediate, '0badc0de')).toBe(true);
    expect(c.isRevoked(intermediate, 'BADC0DE')).toBe(true); // hex case and leading zeros do not matter
    expect(c.isRevoked(intermediate, '1001')).toBe(false);
    // The root did not sign revoked.crl: its entries say nothing about the root's certificates.
    expect(c.isRevoked(root, '0badc0de')).toBe(false);
  });

  it('ignores a CRL whose signature does not verify (crl-bad-signature.crl)', () => {
    const c = new RevocationChecker({ crls: [crl('crl-bad-signature.crl')] });
    expect(c.isRevoked(intermediate, '0badc0de')).toBe(false);
    expect(c.isRevoked(intermediate, '1001')).toBe(false);
  });

  it('keeps the previous CRLs when an update cannot be parsed', () => {
    const c = new RevocationChecker({ crls: [crl('revoked.crl')] });
    expect(() => c.update([crl('revoked.crl'), Buffer.from('not a crl')])).toThrow(/element 1 cannot be parsed/);
    expect(c.isRevoked(intermediate, '0badc0de')).toBe(true);
    expect(c.size).toBe(1);
    c.update([]);
    expect(c.isRevoked(intermediate, '0badc0de')).toBe(false);
  });

  it('scopes CRLs to a trust domain when given one', () => {
    const c = new RevocationChecker({ crls: [crl('revoked.crl')], trustDomain: 'example.org' });
    expect(c.isRevoked(intermediate, '0badc0de', 'example.org')).toBe(true);
    expect(c.isRevoked(intermediate, '0badc0de', 'other.org')).toBe(false);
    expect(c.isRevoked(intermediate, '0badc0de')).toBe(false);
    c.clear('example.org');
    expect(c.isRevoked(intermediate, '0badc0de', 'example.org')).toBe(false);
  });
});
