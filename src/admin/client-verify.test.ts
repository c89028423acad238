import { describe, expect, it } from 'vitest';
import { chainDer, fixture, FIXTURE_NOW, reasonOf } from '../../test/fixtures/load.js';
import { ManualClock } from '../common/clock.js';
import { TrustDomain } from '../spiffe/spiffe-id.js';
import { Certificate } from '../verify/certificate.js';
import type { X509SvidSource } from '../verify/tls.js';
import { clientSvidVerifier } from './client-verify.js';

/**
 * The verifier remembers a chain's last successful verification (a node's Sync stream re-checks
 * its caller on every change). What it remembers must never outlive what made the chain valid:
 * the time inside every certificate's window, the CRLs and the bundle of that moment.
 */
describe('clientSvidVerifier: a chain that verified once', () => {
  const root = chainDer('root.pem');
  const setup = () => {
    const state = { bundle: root, crls: [] as Buffer[] };
    const source = {
      getBundles: () => new Map([['spiffe://example.org', state.bundle]]),
      getCrls: () => state.crls,
    } as unknown as X509SvidSource;
    const clock = new ManualClock(FIXTURE_NOW);
    const verifier = clientSvidVerifier({ source, trustDomain: TrustDomain.parse('example.org'), roles: [], clock });
    return { state, clock, verifier };
  };

  it('is refused once the CRLs list it (the same chain array, as a connection keeps it)', () => {
    const { state, verifier } = setup();
    const chain = chainDer('revoked-serial.pem');
    expect(verifier.verify(chain).spiffeId.toString()).toBe('spiffe://example.org/svc/api');
    expect(verifier.verify(chain).spiffeId.toString()).toBe('spiffe://example.org/svc/api');
    state.crls = [fixture('x509/revoked.crl')];
    expect(reasonOf(() => verifier.verify(chain))).toBe('revoked');
  });

  it('is refused once its certificate expires', () => {
    const { clock, verifier } = setup();
    const chain = chainDer('good-leaf.pem');
    const leaf = new Certificate(chain[0]!);
    verifier.verify(chain);
    clock.set(leaf.notAfter);
    expect(verifier.verify(chain).spiffeId.path).toBe('/svc/api');
    clock.set(leaf.notAfter + 1);
    expect(reasonOf(() => verifier.verify(chain))).toBe('expired');
  });

  it('is refused once the bundle no longer holds its root', () => {
    const { state, verifier } = setup();
    const chain = chainDer('good-leaf.pem');
    verifier.verify(chain);
    state.bundle = chainDer('other-root.pem');
    expect(reasonOf(() => verifier.verify(chain))).toBe('untrusted');
  });

  it('after a CRL change it checks only the new CRLs against the verified path (no full verification), and refuses what they list', () => {
    const { state, verifier } = setup();
    const good = chainDer('good-leaf.pem');
    const revoked = chainDer('revoked-serial.pem');
    verifier.verify(good);
    verifier.verify(revoked);
    expect(verifier.stats.fullChecks).toBe(2);
    // Every revocation re-signs the CRLs: a chain they do not list stays valid without a new parse,
    // path build and signature check; a chain they list is refused at once.
    state.crls = [fixture('x509/revoked.crl')];
    expect(verifier.verify(good).spiffeId.path).toBe('/svc/api');
    expect(reasonOf(() => verifier.verify(revoked))).toBe('revoked');
    expect(verifier.verify(good).spiffeId.path).toBe('/svc/api');
    expect(verifier.stats.fullChecks).toBe(2);
    // The bundle is not a CRL: a change to it verifies in full again.
    state.bundle = chainDer('other-root.pem');
    expect(reasonOf(() => verifier.verify(good))).toBe('untrusted');
    expect(verifier.stats.fullChecks).toBe(3);
  });
});
