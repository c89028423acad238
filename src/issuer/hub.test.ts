import { describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { silentLogger } from '../common/logger.js';
import { Secret } from '../common/secret.js';
import { SpiffeId } from '../spiffe/spiffe-id.js';
import type { AgentIdError } from '../common/errors.js';
import type { Identity } from './identity.js';
import { StreamHub, type Caller, type X509State } from './hub.js';
import { SvidCache, type MintedX509 } from './svid-cache.js';
import type { TrustMaterial } from './trust.js';

const clock = new ManualClock(Date.UTC(2026, 5, 1));
let serial = 0;
const minter = {
  mintX509Svid: ({ spiffeId, ttlMs }: { spiffeId: SpiffeId; ttlMs: number }): MintedX509 => ({
    spiffeId: spiffeId.toString(),
    certDer: Buffer.from([1]),
    chainDer: [Buffer.from([1])],
    privateKeyPkcs8: new Secret(Buffer.from([2])),
    serial: String(++serial),
    notBefore: clock.now(),
    notAfter: clock.now() + ttlMs,
    issuerId: 'ca1',
  }),
  mintJwtSvid: () => {
    throw new Error('not used');
  },
};

const identity = (path: string): Identity => ({
  key: `entry:${path}`,
  spiffeId: SpiffeId.parse(`spiffe://td.example${path}`),
  x509TtlMs: 600_000,
  jwtTtlMs: 300_000,
  hint: '',
  dnsNames: [],
  federatesWith: [],
  notAfterCap: null,
  task: null,
  entryId: path,
  matchedSelectors: [],
});

function setup() {
  let trustVersion = 1;
  const trust: TrustMaterial = {
    trustDomainId: 'spiffe://td.example',
    ownX509Bundle: () => [Buffer.from([9])],
    ownJwtBundle: () => Buffer.from('{"keys":[]}'),
    crls: () => [],
    federatedX509: () => new Map(),
    federatedJwt: () => new Map(),
    version: () => trustVersion,
  };
  let entitled: Identity[] = [identity('/a')];
  const cache = new SvidCache({ minter, recordIssuance: () => {}, events: { x509Issued: () => {}, jwtIssued: () => {} }, clock, logger: silentLogger(), random: () => 0 });
  const hub = new StreamHub({ identitiesFor: () => entitled, cache, trust, clock, logger: silentLogger() });
  const caller: Caller = { pid: 10, uid: 1000, startTime: '1', ancestors: [], cgroup: null, selectors: [] };
  const states: X509State[] = [];
  const ends: AgentIdError[] = [];
  return {
    hub,
    states,
    ends,
    subscribe: () => hub.subscribe('x509', caller, (s) => states.push(s), (e) => ends.push(e)),
    entitle: (ids: Identity[]) => (entitled = ids),
    bumpTrust: () => trustVersion++,
  };
}

describe('StreamHub', () => {
  it('sends the first state at once and pushes only when something changed', () => {
    const t = setup();
    t.subscribe();
    expect(t.states).toHaveLength(1);
    t.hub.refresh();
    expect(t.states).toHaveLength(1);
    t.entitle([identity('/a'), identity('/b')]);
    t.hub.refresh();
    expect(t.states.at(-1)!.svids.map((s) => s.svid.spiffeId)).toEqual(['spiffe://td.example/a', 'spiffe://td.example/b']);
    t.bumpTrust();
    t.hub.refresh();
    expect(t.states).toHaveLength(3);
  });

  it('re-mints at renewal time and shares one SVID per identity between streams', async () => {
    const t = setup();
    t.subscribe();
    t.subscribe();
    expect(t.states[0]!.svids[0]!.svid.serial).toBe(t.states[1]!.svids[0]!.svid.serial);
    await clock.advance(299_000);
    t.hub.refresh();
    expect(t.states).toHaveLength(2);
    await clock.advance(2_000); // past half of the 600 s lifetime
    t.hub.refresh();
    expect(t.states).toHaveLength(4);
    expect(t.states[2]!.svids[0]!.svid.serial).not.toBe(t.states[0]!.svids[0]!.svid.serial);
  });

  it('refuses a caller with no identity and ends a stream that loses its last one', () => {
    const t = setup();
    t.entitle([]);
    expect(() => t.subscribe()).toThrow(/no identity issued/);
    t.entitle([identity('/a')]);
    t.subscribe();
    t.entitle([]);
    t.hub.refresh();
    expect(t.ends.map((e) => e.code)).toEqual(['permission_denied']);
    expect(t.hub.size).toBe(0);
  });
});
