import { generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { chainDer, fixture } from '../../test/fixtures/load.js';
import { BundleSet, JwtBundle, parseSpiffeBundle, publicJwk, toSpiffeBundleDocument, X509Bundle } from './bundle.js';

const rootPem = fixture('x509/root.pem').toString();
const rootDer = chainDer('root.pem')[0]!;
const otherDer = chainDer('other-root.pem')[0]!;
const jwks = JSON.parse(fixture('jwt/jwt-bundle.json').toString()) as { keys: Record<string, unknown>[] };

describe('X509Bundle', () => {
  it('parses PEM, a DER list and concatenated DER to the same authorities', () => {
    const fromPem = X509Bundle.fromPem('example.org', rootPem);
    const concat = X509Bundle.fromDer('spiffe://example.org', Buffer.concat([rootDer, otherDer]));
    const list = X509Bundle.fromDer('example.org', [rootDer, otherDer]);
    expect(fromPem.authoritiesDer).toEqual([rootDer]);
    expect(concat.authoritiesDer).toEqual([rootDer, otherDer]);
    expect(list.toDer()).toEqual(concat.toDer());
    expect(X509Bundle.fromPem('example.org', concat.toPem()).authoritiesDer).toEqual([rootDer, otherDer]);
    expect(concat.trustDomain.name).toBe('example.org');
  });

  it('drops duplicate authorities', () => {
    expect(X509Bundle.fromDer('example.org', [rootDer, rootDer]).authorities).toHaveLength(1);
  });

  it.each<[string, () => unknown, RegExp]>([
    ['trailing garbage', () => X509Bundle.fromDer('example.org', Buffer.concat([rootDer, Buffer.from([0x30])])), /truncated/],
    ['not a SEQUENCE', () => X509Bundle.fromDer('example.org', Buffer.from([0x04, 0x00])), /not a DER SEQUENCE/],
    ['PEM without certificates', () => X509Bundle.fromPem('example.org', 'hello'), /no CERTIFICATE/],
    ['bad trust domain', () => X509Bundle.fromDer('Example.org', rootDer), /lowercase/],
    ['a SEQUENCE that is no certificate', () => X509Bundle.fromDer('example.org', Buffer.from('3003020101', 'hex')), /cannot be parsed/],
  ])('refuses %s', (_n, fn, message) => {
    expect(fn).toThrow(message);
  });
});

describe('JwtBundle', () => {
  it('parses a JWK set by kid', () => {
    const b = JwtBundle.fromJwkSet('example.org', fixture('jwt/jwt-bundle.json'));
    expect([...b.authorities.keys()].sort()).toEqual(['es256-dev', 'es384-dev', 'rsa-dev']);
    expect(b.findKey('es256-dev')!.key.asymmetricKeyType).toBe('ec');
    // Round trip through the plain JWK set keeps keys and kids.
    const again = JwtBundle.fromJwkSet('example.org', b.toJwkSet());
    expect(again.findKey('rsa-dev')!.key.equals(b.findKey('rsa-dev')!.key)).toBe(true);
  });

  it('refuses the whole set when one key lacks kid (like go-spiffe)', () => {
    const { kid: _kid, ...noKid } = jwks.keys[0]!;
    expect(() => JwtBundle.fromJwkSet('example.org', { keys: [noKid, jwks.keys[1]] })).toThrow(/keys\[0\]: every JWT key must have a non-empty "kid"/);
  });

  it.each<[string, Record<string, unknown>, RegExp]>([
    ['duplicate kid', { keys: [jwks.keys[0], jwks.keys[0]] }, /appears twice/],
    ['x509-svid use', { keys: [{ ...jwks.keys[0], use: 'x509-svid' }] }, /use/],
    ['private key member', { keys: [{ ...jwks.keys[0], d: 'AAAA' }] }, /private member "d"/],
    ['trimmed EC coordinate', { keys: [{ ...jwks.keys[0], x: Buffer.from(jwks.keys[0]!.x as string, 'base64url').subarray(1).toString('base64url') }] }, /32 bytes/],
    ['keys not an array', { keys: {} }, /"keys" must be an array/],
  ])('refuses %s', (_n, doc, message) => {
    expect(() => JwtBundle.fromJwkSet('example.org', doc)).toThrow(message);
  });

  it('skips keys of an unknown kty and refuses non-JSON', () => {
    expect(JwtBundle.fromJwkSet('example.org', { keys: [{ kty: 'oct', kid: 'x', k: 'AA' }, jwks.keys[0]] }).authorities.size).toBe(1);
    expect(() => JwtBundle.fromJwkSet('example.org', '{')).toThrow(/not valid JSON/);
  });
});

describe('BundleSet', () => {
  it('keeps trust domains apart and replaces per kind', () => {
    const set = new BundleSet([X509Bundle.fromDer('example.org', rootDer), X509Bundle.fromDer('other.org', otherDer)]);
    set.add(JwtBundle.fromJwkSet('example.org', jwks));
    expect(set.getX509Bundle('example.org')!.authoritiesDer).toEqual([rootDer]);
    expect(set.getX509Bundle('other.org')!.authoritiesDer).toEqual([otherDer]);
    expect(set.getJwtBundle('other.org')).toBeUndefined();
    expect(set.getX509Bundle('third.org')).toBeUndefined();
    set.add(X509Bundle.fromDer('example.org', otherDer));
    expect(set.getX509Bundle('example.org')!.authoritiesDer).toEqual([otherDer]);
    expect(set.getJwtBundle('example.org')!.authorities.size).toBe(3);
  });

  it('builds from the Workload API maps (spiffe:// keys)', () => {
    const set = BundleSet.fromX509Map(new Map<string, Buffer | Buffer[]>([['spiffe://example.org', rootDer], ['spiffe://other.org', [otherDer]]]));
    expect(set.x509Bundles.map((b) => b.trustDomain.name).sort()).toEqual(['example.org', 'other.org']);
    const jwt = BundleSet.fromJwtMap(new Map([['spiffe://example.org', fixture('jwt/jwt-bundle.json')]]));
    expect(jwt.getJwtBundle('example.org')!.authorities.size).toBe(3);
  });
});

describe('SPIFFE bundle document', () => {
  it('parses the fixture document (x5c, jwt-svid keys, sequence, refresh hint)', () => {
    const b = parseSpiffeBundle('example.org', fixture('spiffe-bundle.json'));
    expect(b.x509.authoritiesDer).toEqual([rootDer]);
    expect(b.jwt.authorities.size).toBe(3);
    expect(b.sequence).toBe(7);
    expect(b.refreshHintSeconds).toBe(300);
  });

  it('round-trips through toSpiffeBundleDocument with integers and padded coordinates', () => {
    const b = parseSpiffeBundle('example.org', fixture('spiffe-bundle.json'));
    const text = toSpiffeBundleDocument({ x509: b.x509, jwt: b.jwt, sequence: 8, refreshHintSeconds: 300 });
    expect(text).toMatch(/"spiffe_sequence":8[,}]/);
    expect(text).toMatch(/"spiffe_refresh_hint":300[,}]/);
    const doc = JSON.parse(text) as { keys: Record<string, unknown>[] };
    const x509Key = doc.keys.find((k) => k.use === 'x509-svid')!;
    expect(x509Key.x5c).toEqual([rootDer.toString('base64')]);
    for (const k of doc.keys.filter((key) => key.kty === 'EC')) {
      const size = k.crv === 'P-256' ? 32 : 48;
      expect(Buffer.from(k.x as string, 'base64url')).toHaveLength(size);
      expect(Buffer.from(k.y as string, 'base64url')).toHaveLength(size);
    }
    const again = parseSpiffeBundle('example.org', text);
    expect(again.x509.authoritiesDer).toEqual([rootDer]);
    expect([...again.jwt.authorities.keys()].sort()).toEqual(['es256-dev', 'es384-dev', 'rsa-dev']);
  });

  it('pads EC coordinates that have leading zero bytes', () => {
    // About 1 key in 128 has a coordinate with a leading zero byte; find one quickly.
    for (let i = 0; i < 5000; i++) {
      const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const raw = publicKey.export({ format: 'jwk' });
      if (Buffer.from(raw.x!, 'base64url').length === 32 && Buffer.from(raw.y!, 'base64url').length === 32 && Buffer.from(raw.x!, 'base64url')[0] !== 0 && Buffer.from(raw.y!, 'base64url')[0] !== 0) continue;
      const jwk = publicJwk(publicKey);
      expect(Buffer.from(jwk.x!, 'base64url')).toHaveLength(32);
      expect(Buffer.from(jwk.y!, 'base64url')).toHaveLength(32);
      return;
    }
    throw new Error('no key with a leading zero coordinate in 5000 tries');
  });

  it.each<[string, (doc: { keys: Record<string, unknown>[] }) => unknown, RegExp]>([
    ['x5c in base64url', (d) => (d.keys[0]!.x5c = [(d.keys[0]!.x5c as string[])[0]!.replace(/\+/g, '-').replace(/\//g, '_') + '-']), /standard base64/],
    ['two certificates in x5c', (d) => (d.keys[0]!.x5c = [...(d.keys[0]!.x5c as string[]), ...(d.keys[0]!.x5c as string[])]), /exactly one/],
    ['x5c key differs from the JWK', (d) => (d.keys[0]!.x = d.keys[1]!.x), /different keys|usable|32 bytes/],
    ['jwt-svid key without kid', (d) => delete d.keys[1]!.kid, /non-empty "kid"/],
    ['sequence as a string', (d) => ((d as Record<string, unknown>).spiffe_sequence = '7'), /integer/],
    ['refresh hint fractional', (d) => ((d as Record<string, unknown>).spiffe_refresh_hint = 1.5), /integer/],
  ])('refuses %s', (_n, mutate, message) => {
    const doc = JSON.parse(fixture('spiffe-bundle.json').toString()) as { keys: Record<string, unknown>[] };
    mutate(doc);
    expect(() => parseSpiffeBundle('example.org', doc)).toThrow(message);
  });

  it('ignores keys with an unknown use or kty (bundle spec 4.2)', () => {
    const doc = JSON.parse(fixture('spiffe-bundle.json').toString()) as { keys: Record<string, unknown>[] };
    doc.keys.push({ kty: 'EC', use: 'wit-svid', kid: 'w' }, { kty: 'oct', use: 'jwt-svid', kid: 'h', k: 'AA' });
    const b = parseSpiffeBundle('example.org', doc);
    expect(b.jwt.authorities.size).toBe(3);
  });

  it('refuses to serialize bundles of two trust domains into one document', () => {
    expect(() =>
      toSpiffeBundleDocument({ x509: X509Bundle.fromDer('example.org', rootDer), jwt: JwtBundle.fromJwkSet('other.org', jwks) }),
    ).toThrow(/different trust domains/);
  });
});
