import { describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import type { IssuanceRecord } from '../datastore/types.js';
import { TrustState } from './trust-state.js';

function setup() {
  const clock = new ManualClock(Date.UTC(2026, 5, 1));
  const revoked: IssuanceRecord[] = [];
  /** Latest notAfter of each SPIFFE ID's issuances (revoked or not). */
  const latest = new Map<string, number>();
  let builds = 0;
  let reads = 0;
  const trust = new TrustState({
    ca: {
      trustDomain: { idString: 'spiffe://td.example' },
      x509Bundle: () => [Buffer.from('ca')],
      jwtKeys: () => [{ kid: 'k1' }],
      // Every build is new bytes (a new CRL number), as the real CA's are.
      buildCrls: (list) => [Buffer.from(`crl#${++builds}:${list.map((r) => r.serial).join(',')}`)],
    },
    issuances: {
      listRevokedUnexpired: async () => (reads++, revoked),
      latestNotAfter: async (id) => latest.get(id),
    },
    clock,
  });
  const revoke = (serial: string, kind: 'x509' | 'jwt' = 'x509') => {
    const spiffeId = `spiffe://td.example/${serial}`;
    revoked.push({ kind, serial, spiffeId, issuerId: 'ca1', issuedAt: 0, notAfter: clock.now() + 60_000, task: null });
    latest.set(spiffeId, clock.now() + 60_000);
  };
  return { trust, revoke, latest, clock, reads: () => reads };
}

describe('TrustState versions', () => {
  it('moves the CRL version only when the CRLs list a different set of serials', async () => {
    const { trust, revoke } = setup();
    await trust.rebuildCrls();
    const first = trust.versions();
    const crls = trust.crls();
    // A revocation whose ID has no X.509 serial (never issued, or JWT only): same CRLs, same version.
    revoke('j1', 'jwt');
    await trust.rebuildCrls();
    expect(trust.versions()).toEqual(first);
    expect(trust.crls()).toBe(crls);
    revoke('x1');
    await trust.rebuildCrls();
    expect(trust.versions()).toEqual({ ...first, crl: first.crl + 1 });
    expect(trust.crls()[0]!.toString()).toMatch(/:x1$/);
  });

  it('after a revocation, re-reads and re-signs only when a revoked identity holds an unexpired issuance', async () => {
    const { trust, revoke, latest, clock, reads } = setup();
    await trust.rebuildCrls();
    const first = trust.versions();
    const readsBefore = reads();
    // Never issued anything, or only SVIDs that have expired: nothing can join the CRLs.
    latest.set('spiffe://td.example/old', clock.now() - 1);
    await trust.rebuildCrlsAfterRevoking(['spiffe://td.example/never', 'spiffe://td.example/old']);
    expect(reads()).toBe(readsBefore);
    expect(trust.versions()).toEqual(first);
    // One of them holds a live SVID: rebuilt, and its serial is listed.
    revoke('x2');
    await trust.rebuildCrlsAfterRevoking(['spiffe://td.example/never', 'spiffe://td.example/x2']);
    expect(reads()).toBe(readsBefore + 1);
    expect(trust.versions()).toEqual({ ...first, crl: first.crl + 1 });
    expect(trust.crls()[0]!.toString()).toMatch(/:x2$/);
  });

  it('re-signed CRLs and a CA change move the versions they concern, JWT keys only on a CA change', async () => {
    const { trust } = setup();
    await trust.rebuildCrls();
    const first = trust.versions();
    await trust.rebuildCrls({ force: true });
    expect(trust.versions()).toEqual({ ...first, crl: first.crl + 1 });
    trust.invalidate();
    expect(trust.versions()).toEqual({ x509: first.x509 + 1, jwt: first.jwt + 1, crl: first.crl + 2, federation: first.federation });
  });

  it('serves the other servers\' roots, JWT keys and CRLs with its own, once each', async () => {
    const clock = new ManualClock(Date.UTC(2026, 5, 1));
    const peers = [
      { x509Authorities: [Buffer.from('peer-ca'), Buffer.from('ca')], jwtKeys: [{ kid: 'k2' }, { kid: 'k1' }], crls: [Buffer.from('peer-crl')] },
    ];
    const trust = new TrustState({
      ca: { trustDomain: { idString: 'spiffe://td.example' }, x509Bundle: () => [Buffer.from('ca')], jwtKeys: () => [{ kid: 'k1' }], buildCrls: () => [Buffer.from('own-crl')] },
      issuances: { listRevokedUnexpired: async () => [], latestNotAfter: async () => undefined },
      clock,
      peers: () => peers,
    });
    await trust.rebuildCrls();
    expect(trust.ownX509Bundle().map(String)).toEqual(['ca', 'peer-ca']);
    expect(JSON.parse(trust.ownJwtBundle().toString()).keys.map((k: { kid: string }) => k.kid)).toEqual(['k1', 'k2']);
    expect(trust.crls().map(String)).toEqual(['own-crl', 'peer-crl']);
    expect(trust.ownCrlsOnly().map(String)).toEqual(['own-crl']);
  });
});
