import { describe, expect, it } from 'vitest';
import { fixture, fixtureText, FIXTURE_NOW, JWT_AUDIENCE, reasonOf } from '../../test/fixtures/load.js';
import { BundleSet, JwtBundle } from './bundle.js';
import type { VerificationReason } from './errors.js';
import { JWT_SVID_ALGORITHMS, MAX_JWT_BYTES, VerifiedSignatures, verifyJwtSvid, type JwtVerifyOptions } from './jwt.js';

const exampleJwt = JwtBundle.fromJwkSet('example.org', fixture('jwt/jwt-bundle.json'));
const bundles = new BundleSet([exampleJwt]);
const opts: JwtVerifyOptions = { audience: JWT_AUDIENCE, now: FIXTURE_NOW };
const token = (name: string) => fixtureText(`jwt/${name}`);

describe('verifyJwtSvid accepts', () => {
  it.each(['jwt-good.txt', 'jwt-good-es384.txt', 'jwt-good-rs256.txt', 'jwt-good-ps256.txt', 'jwt-good-aud-string.txt'])('%s', (name) => {
    const r = verifyJwtSvid(token(name), bundles, opts);
    expect(r.spiffeId.toString()).toBe('spiffe://example.org/agent/a1/task/t1');
    expect(r.claims.jti).toBe('fixture-0001');
    expect(typeof r.header.kid).toBe('string');
  });

  it('with any one of several audiences, and against a single JwtBundle', () => {
    expect(verifyJwtSvid(token('jwt-good.txt'), exampleJwt, { ...opts, audience: ['x', JWT_AUDIENCE] }).spiffeId.path).toBe('/agent/a1/task/t1');
  });

  it('within the skew of exp, and not at exp + skew', () => {
    const exp = Date.UTC(2036, 0, 1);
    expect(verifyJwtSvid(token('jwt-good.txt'), bundles, { ...opts, now: exp + 29_999 }).spiffeId.path).toBe('/agent/a1/task/t1');
    expect(reasonOf(() => verifyJwtSvid(token('jwt-good.txt'), bundles, { ...opts, now: exp + 30_000 }))).toBe('expired');
    expect(reasonOf(() => verifyJwtSvid(token('jwt-good.txt'), bundles, { ...opts, now: exp, skewMs: 0 }))).toBe('expired');
  });
});

describe('verifyJwtSvid refuses, one rule per defect-named fixture', () => {
  it.each<[string, VerificationReason]>([
    ['jwt-expired.txt', 'expired'],
    ['jwt-no-exp.txt', 'missing_claim'],
    ['jwt-wrong-aud.txt', 'bad_audience'],
    ['jwt-no-kid.txt', 'no_kid'],
    ['jwt-alg-none.txt', 'bad_alg'],
    ['jwt-hs256.txt', 'bad_alg'],
    ['jwt-unknown-kid.txt', 'unknown_kid'],
    ['jwt-future-iat.txt', 'issued_in_future'],
    ['jwt-not-before.txt', 'not_yet_valid'],
    ['jwt-bad-sub.txt', 'bad_spiffe_id'],
    ['jwt-no-sub.txt', 'missing_claim'],
    ['jwt-wrong-trust-domain.txt', 'no_bundle'],
    ['jwt-bad-typ.txt', 'bad_typ'],
    ['jwt-crit.txt', 'malformed'],
    ['jwt-alg-key-mismatch.txt', 'bad_alg'],
    ['jwt-bad-signature.txt', 'bad_signature'],
    ['jwt-es256-der-signature.txt', 'bad_signature'],
  ])('%s -> %s', (name, reason) => {
    expect(reasonOf(() => verifyJwtSvid(token(name), bundles, opts))).toBe(reason);
  });

  it('a sub in another trust domain is checked against that domain only, never the key that signed it', () => {
    const other = JwtBundle.fromJwkSet('other.org', { keys: [] });
    expect(reasonOf(() => verifyJwtSvid(token('jwt-wrong-trust-domain.txt'), new BundleSet([exampleJwt, other]), opts))).toBe('unknown_kid');
    expect(reasonOf(() => verifyJwtSvid(token('jwt-wrong-trust-domain.txt'), exampleJwt, opts))).toBe('wrong_trust_domain');
  });

  it('an algorithm outside allowedAlgs', () => {
    expect(reasonOf(() => verifyJwtSvid(token('jwt-good-rs256.txt'), bundles, { ...opts, allowedAlgs: ['ES256'] }))).toBe('bad_alg');
  });

  it('refuses to be configured with none or HS256', () => {
    expect(() => verifyJwtSvid(token('jwt-good.txt'), bundles, { ...opts, allowedAlgs: ['none' as 'ES256'] })).toThrow(/cannot be allowed/);
    expect(() => verifyJwtSvid(token('jwt-good.txt'), bundles, { ...opts, allowedAlgs: ['HS256' as 'ES256'] })).toThrow(/cannot be allowed/);
    expect(() => verifyJwtSvid(token('jwt-good.txt'), bundles, { ...opts, audience: [] })).toThrow(/audience/);
  });

  it('revocation is consulted with the SPIFFE ID', () => {
    const seen: string[] = [];
    const revoked = (id: string) => (seen.push(id), true);
    expect(reasonOf(() => verifyJwtSvid(token('jwt-good.txt'), bundles, { ...opts, revoked }))).toBe('revoked');
    expect(seen).toEqual(['spiffe://example.org/agent/a1/task/t1']);
  });

  it.each<[string, string]>([
    ['two parts', 'a.b'],
    ['four parts', 'a.b.c.d'],
    ['padding', `${token('jwt-good.txt')}=`],
    ['non-base64url header', `*${token('jwt-good.txt')}`],
    ['header is an array', `${Buffer.from('[1]').toString('base64url')}.e30.AA`],
    ['header is not JSON', `${Buffer.from('{alg').toString('base64url')}.e30.AA`],
    ['oversized', `${'a'.repeat(MAX_JWT_BYTES)}.b.c`],
    ['empty', ''],
  ])('malformed token: %s', (_name, text) => {
    expect(reasonOf(() => verifyJwtSvid(text, bundles, opts))).toBe('malformed');
  });

  it('non-canonical base64url (same bytes, different text) is refused', () => {
    // "e30" and "e31" both decode to "{}": the low bits of the last character are unused.
    expect(Buffer.from('e31', 'base64url').toString()).toBe('{}');
    const [, p, sig] = token('jwt-good.txt').split('.') as [string, string, string];
    expect(reasonOf(() => verifyJwtSvid(`e31.${p}.${sig}`, bundles, opts))).toBe('malformed');
  });
});

describe('VerifiedSignatures (a memo of tokens whose signature verified)', () => {
  it('remembers a token only once its signature verified, and still runs every other check on it', () => {
    const memo = new VerifiedSignatures();
    expect(reasonOf(() => verifyJwtSvid(token('jwt-bad-signature.txt'), bundles, { ...opts, verifiedSignatures: memo }))).toBe('bad_signature');
    expect(memo.size).toBe(0);
    const good = token('jwt-good.txt');
    verifyJwtSvid(good, bundles, { ...opts, verifiedSignatures: memo });
    expect(memo.has(good)).toBe(true);
    expect(reasonOf(() => verifyJwtSvid(good, bundles, { ...opts, audience: 'someone-else', verifiedSignatures: memo }))).toBe('bad_audience');
    expect(reasonOf(() => verifyJwtSvid(good, bundles, { ...opts, now: Date.UTC(2037, 0, 1), verifiedSignatures: memo }))).toBe('expired');
    expect(reasonOf(() => verifyJwtSvid(good, bundles, { ...opts, revoked: () => true, verifiedSignatures: memo }))).toBe('revoked');
    // A bundle without the token's key refuses it, memo or not.
    expect(reasonOf(() => verifyJwtSvid(good, JwtBundle.fromJwkSet('example.org', { keys: [] }), { ...opts, verifiedSignatures: memo }))).toBe('unknown_kid');
  });

  it('vouches for the exact token only: the same signature on another payload is verified, and refused', () => {
    const memo = new VerifiedSignatures();
    const good = token('jwt-good.txt');
    verifyJwtSvid(good, bundles, { ...opts, verifiedSignatures: memo });
    const [h, p, sig] = good.split('.') as [string, string, string];
    const claims = JSON.parse(Buffer.from(p, 'base64url').toString()) as Record<string, unknown>;
    const forged = `${h}.${Buffer.from(JSON.stringify({ ...claims, sub: 'spiffe://example.org/admin' })).toString('base64url')}.${sig}`;
    expect(reasonOf(() => verifyJwtSvid(forged, bundles, { ...opts, verifiedSignatures: memo }))).toBe('bad_signature');
  });

  it('skips decoding a remembered token (the same frozen claims each time), not the checks that depend on the call', () => {
    const memo = new VerifiedSignatures();
    const good = token('jwt-good.txt');
    const first = verifyJwtSvid(good, bundles, { ...opts, verifiedSignatures: memo });
    const again = verifyJwtSvid(good, bundles, { ...opts, verifiedSignatures: memo });
    expect(again.claims).toBe(first.claims);
    expect(again.spiffeId.toString()).toBe(first.spiffeId.toString());
    expect(Object.isFrozen(again.claims)).toBe(true);
    expect(() => {
      (again.claims as Record<string, unknown>).sub = 'spiffe://example.org/admin';
    }).toThrow();
    const alg = String(first.header.alg);
    const others = JWT_SVID_ALGORITHMS.filter((a) => a !== alg);
    expect(reasonOf(() => verifyJwtSvid(good, bundles, { ...opts, allowedAlgs: others, verifiedSignatures: memo }))).toBe('bad_alg');
  });

  it('stays within its capacity', () => {
    const memo = new VerifiedSignatures(2);
    const decoded = verifyJwtSvid(token('jwt-good.txt'), bundles, opts);
    for (const t of ['a', 'b', 'c']) memo.add(t, decoded);
    expect(memo.size).toBeLessThanOrEqual(2);
    expect(memo.has('c')).toBe(true);
    expect(() => new VerifiedSignatures(0)).toThrow();
  });
});
