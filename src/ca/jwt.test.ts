import { createECDH, createPrivateKey, createPublicKey, verify } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { JwtSigner, jwtKeySetJson, publicJwk } from './jwt.js';
import { encodeLeafKeyPair, SigningKey, type KeyType } from './keys.js';

const NOW = Date.UTC(2026, 0, 1, 12, 0, 0) + 999;

function decode(token: string) {
  const [h, p, s] = token.split('.');
  return {
    header: JSON.parse(Buffer.from(h!, 'base64url').toString()),
    claims: JSON.parse(Buffer.from(p!, 'base64url').toString()),
    signingInput: `${h}.${p}`,
    signature: Buffer.from(s!, 'base64url'),
  };
}

describe('JwtSigner', () => {
  it.each([
    ['ec-p256', 'ES256', 'sha256', 64],
    ['ec-p384', 'ES384', 'sha384', 96],
  ] as const)('%s tokens verify with node:crypto and carry the SPIFFE claims', (type, alg, hash, sigLength) => {
    const signer = new JwtSigner(SigningKey.generate(type, 'kid-123'));
    const minted = signer.mint({
      spiffeId: 'spiffe://example.org/agent/a',
      audience: ['aud1', 'aud2'],
      issuer: 'https://example.org',
      now: NOW,
      ttlMs: 300_000,
    });
    const t = decode(minted.token.reveal());
    expect(t.header).toEqual({ alg, kid: 'kid-123', typ: 'JWT' });
    expect(t.claims).toEqual({
      sub: 'spiffe://example.org/agent/a',
      aud: ['aud1', 'aud2'],
      exp: Math.floor(NOW / 1000) + 300,
      iat: Math.floor(NOW / 1000),
      iss: 'https://example.org',
      jti: minted.jti,
    });
    // iat is floored: never in the future, even by the 999 ms of NOW.
    expect(t.claims.iat * 1000).toBeLessThanOrEqual(NOW);
    expect(minted.issuedAt).toBe(t.claims.iat * 1000);
    expect(minted.expiresAt).toBe(t.claims.exp * 1000);
    expect(t.signature.length).toBe(sigLength);
    // Verify against the published JWK, as a relying party would.
    const jwkKey = createPublicKey({ key: { ...publicJwk(signer.key) }, format: 'jwk' });
    expect(verify(hash, Buffer.from(t.signingInput), { key: jwkKey, dsaEncoding: 'ieee-p1363' }, t.signature)).toBe(true);
  });

  it('aud is an array even for one audience, and jti is unique', () => {
    const signer = new JwtSigner(SigningKey.generate('ec-p256', 'k'));
    const req = { spiffeId: 'spiffe://example.org/a', audience: ['only'], issuer: 'https://example.org', now: NOW, ttlMs: 60_000 };
    const jtis = new Set<string>();
    for (let i = 0; i < 200; i++) {
      const m = signer.mint(req);
      expect(decode(m.token.reveal()).claims.aud).toEqual(['only']);
      jtis.add(m.jti);
    }
    expect(jtis.size).toBe(200);
  });

  it.each([
    ['empty audience', { audience: [] as string[] }, /audience must not be empty/],
    ['empty audience value', { audience: [''] }, /non-empty strings/],
    ['TTL under a second', { ttlMs: 500 }, /at least one second/],
  ])('refuses %s', (_name, patch, message) => {
    const signer = new JwtSigner(SigningKey.generate('ec-p256', 'k'));
    const req = { spiffeId: 'spiffe://example.org/a', audience: ['x'], issuer: 'https://example.org', now: NOW, ttlMs: 60_000, ...patch };
    expect(() => signer.mint(req)).toThrow(message);
  });

  it('the token prints as [redacted]', () => {
    const m = new JwtSigner(SigningKey.generate('ec-p256', 'k')).mint({
      spiffeId: 'spiffe://example.org/a',
      audience: ['x'],
      issuer: 'https://example.org',
      now: NOW,
      ttlMs: 60_000,
    });
    expect(JSON.stringify(m)).not.toContain(m.token.reveal());
  });
});

describe('JWK sets', () => {
  /** A signing key whose public x coordinate starts with a zero byte (the go-spiffe trap). */
  function keyWithLeadingZeroX(type: KeyType, curve: string): SigningKey {
    for (let i = 0; i < 20_000; i++) {
      const e = createECDH(curve);
      const point = e.generateKeys();
      if (point[1] === 0) {
        const kp = encodeLeafKeyPair(type, e.getPrivateKey(), point);
        const priv = createPrivateKey({ key: kp.pkcs8.reveal(), format: 'der', type: 'pkcs8' });
        return SigningKey.fromKeyObject(priv, 'zero-x', 'test');
      }
    }
    throw new Error('no key with a leading zero found');
  }

  it.each([
    ['ec-p256', 'prime256v1', 43],
    ['ec-p384', 'secp384r1', 64],
  ] as const)('%s coordinates keep leading zero bytes', (type, curve, b64Length) => {
    const jwk = publicJwk(keyWithLeadingZeroX(type, curve));
    expect(jwk.x).toHaveLength(b64Length);
    expect(jwk.y).toHaveLength(b64Length);
    expect(Buffer.from(jwk.x, 'base64url')[0]).toBe(0);
  });

  it('every key has kid, kty and crv; use only when asked', () => {
    const keys = [publicJwk(SigningKey.generate('ec-p256', 'a')), publicJwk(SigningKey.generate('ec-p384', 'b'))];
    const plain = JSON.parse(jwtKeySetJson(keys));
    expect(plain.keys).toHaveLength(2);
    for (const k of plain.keys) {
      expect(Object.keys(k).sort()).toEqual(['crv', 'kid', 'kty', 'x', 'y']);
    }
    const withUse = JSON.parse(jwtKeySetJson(keys, { withUse: true }));
    expect(withUse.keys.map((k: { use: string }) => k.use)).toEqual(['jwt-svid', 'jwt-svid']);
  });
});
