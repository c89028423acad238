import { describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { silentLogger } from '../common/logger.js';
import { Secret } from '../common/secret.js';
import { SpiffeId } from '../spiffe/spiffe-id.js';
import type { Identity } from './identity.js';
import { SvidCache, type MintedJwt, type MintedX509 } from './svid-cache.js';

const T0 = Date.UTC(2026, 5, 1);
const CAUSE = { pid: 1, uid: 0 };

function identity(name: string, x509TtlMs = 600_000): Identity {
  return {
    key: `entry:${name}`,
    spiffeId: SpiffeId.parse(`spiffe://td.example/${name}`),
    x509TtlMs,
    jwtTtlMs: 300_000,
    hint: '',
    dnsNames: [],
    federatesWith: [],
    notAfterCap: null,
    task: null,
    entryId: name,
    matchedSelectors: [],
  };
}

/** A cache over a counting minter; renewal at exactly half-life (random 0: no jitter). */
function setup() {
  const clock = new ManualClock(T0);
  let serial = 0;
  const minter = {
    mintX509Svid: ({ spiffeId, ttlMs }: { spiffeId: SpiffeId; ttlMs: number }): MintedX509 => ({
      spiffeId: spiffeId.toString(),
      certDer: Buffer.from([++serial]),
      chainDer: [Buffer.from([serial])],
      privateKeyPkcs8: new Secret(Buffer.from([2])),
      serial: String(serial),
      notBefore: clock.now(),
      notAfter: clock.now() + ttlMs,
      issuerId: 'ca1',
    }),
    mintJwtSvid: ({ spiffeId, ttlMs }: { spiffeId: SpiffeId; ttlMs: number }): MintedJwt => ({
      spiffeId: spiffeId.toString(),
      token: new Secret(`jwt${++serial}`),
      jti: String(serial),
      kid: 'k1',
      issuedAt: clock.now(),
      expiresAt: clock.now() + ttlMs,
    }),
  };
  const cache = new SvidCache({ minter, recordIssuance: () => {}, events: { x509Issued: () => {}, jwtIssued: () => {} }, clock, logger: silentLogger(), random: () => 0 });
  return { cache, clock };
}

describe('SvidCache', () => {
  it('forgets the SVIDs of one SPIFFE ID (X.509 and JWT), and only those', () => {
    const { cache } = setup();
    const a = identity('a');
    const b = identity('b');
    const a1 = cache.x509For(a, CAUSE);
    const b1 = cache.x509For(b, CAUSE);
    const aJwt = cache.jwtFor(a, ['aud'], CAUSE);
    const bJwt = cache.jwtFor(b, ['aud'], CAUSE);
    cache.forgetSpiffeId('spiffe://td.example/a');
    expect(cache.x509For(a, CAUSE).serial).not.toBe(a1.serial);
    expect(cache.jwtFor(a, ['aud'], CAUSE)).not.toBe(aJwt);
    expect(cache.x509For(b, CAUSE)).toBe(b1);
    expect(cache.jwtFor(b, ['aud'], CAUSE)).toBe(bJwt);
    // Unknown IDs change nothing.
    cache.forgetSpiffeId('spiffe://td.example/none');
    expect(cache.x509For(b, CAUSE)).toBe(b1);
  });

  it('answers the earliest renewal as SVIDs are added, renewed, forgotten and released', () => {
    const { cache, clock } = setup();
    expect(cache.nextRenewalAt()).toBeUndefined();
    const long = identity('long', 600_000);
    const short = identity('short', 60_000);
    const renewAt = (svid: MintedX509) => svid.notBefore + Math.floor((svid.notAfter - svid.notBefore) / 2);
    const l1 = cache.x509For(long, CAUSE);
    expect(cache.nextRenewalAt()).toBe(renewAt(l1));
    const s1 = cache.x509For(short, CAUSE);
    expect(cache.nextRenewalAt()).toBe(renewAt(s1));
    // The short one renews: its new renewal is later than before.
    clock.set(renewAt(s1));
    const s2 = cache.x509For(short, CAUSE);
    expect(s2).not.toBe(s1);
    expect(cache.nextRenewalAt()).toBe(Math.min(renewAt(s2), renewAt(l1)));
    // Forgotten: the other one is the earliest.
    cache.forgetSpiffeId('spiffe://td.example/short');
    expect(cache.nextRenewalAt()).toBe(renewAt(l1));
    // Released by every stream: nothing cached, nothing to renew.
    cache.retain({ has: () => false });
    expect(cache.nextRenewalAt()).toBeUndefined();
  });
});
