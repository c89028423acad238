import { createECDH, createPrivateKey, createPublicKey, generateKeyPairSync, verify } from 'node:crypto';
import { inspect } from 'node:util';
import { describe, expect, it } from 'vitest';
import { isAgentIdError } from '../common/errors.js';
import { checkLeafSpki, encodeLeafKeyPair, generateLeafKeyPair, SigningKey, type KeyType } from './keys.js';
import { openssl } from './testing.js';

const TYPES: [KeyType, string, number][] = [
  ['ec-p256', 'prime256v1', 32],
  ['ec-p384', 'secp384r1', 48],
];

describe('leaf key pairs', () => {
  it.each(TYPES)('%s: PKCS#8 imports with node and matches the SPKI', (type) => {
    for (let i = 0; i < 50; i++) {
      const kp = generateLeafKeyPair(type);
      const priv = createPrivateKey({ key: kp.pkcs8.reveal(), format: 'der', type: 'pkcs8' });
      const pub = createPublicKey(priv).export({ format: 'der', type: 'spki' });
      expect(pub.equals(kp.spki)).toBe(true);
      // Node re-encodes the same key to the same bytes: our layout is the canonical one.
      expect(priv.export({ format: 'der', type: 'pkcs8' }).equals(kp.pkcs8.reveal())).toBe(true);
    }
  });

  it.each(TYPES)('%s: a scalar with leading zero bytes is padded to full length', (type, curve, size) => {
    // A scalar whose first two bytes are zero: Node hands it back trimmed.
    const scalar = Buffer.alloc(size, 0x11);
    scalar[0] = 0;
    scalar[1] = 0;
    const ecdh = createECDH(curve);
    ecdh.setPrivateKey(scalar);
    const trimmed = ecdh.getPrivateKey();
    expect(trimmed.length).toBeLessThan(size);
    const kp = encodeLeafKeyPair(type, trimmed, ecdh.getPublicKey());
    const priv = createPrivateKey({ key: kp.pkcs8.reveal(), format: 'der', type: 'pkcs8' });
    expect(priv.export({ format: 'jwk' }).d).toBe(scalar.toString('base64url'));
    expect(createPublicKey(priv).export({ format: 'der', type: 'spki' }).equals(kp.spki)).toBe(true);
  });

  it('openssl accepts the PKCS#8 as a valid EC private key', () => {
    const kp = generateLeafKeyPair('ec-p256');
    const r = openssl(['pkey', '-inform', 'DER', '-check', '-noout'], kp.pkcs8.reveal());
    expect(r.stderr + r.stdout).toMatch(/valid/i);
    expect(r.status).toBe(0);
    // Offset 27: the OCTET STRING holding the ECPrivateKey (after header, version and algorithm).
    const asn = openssl(['asn1parse', '-inform', 'DER', '-strparse', '27'], kp.pkcs8.reveal());
    // The ECPrivateKey carries the public key ([1]) as go-spiffe and OpenSSL expect.
    expect(asn.stdout).toMatch(/cont \[ 1 \]/);
  });

  it('never shows private bytes when printed', () => {
    const kp = generateLeafKeyPair();
    expect(JSON.stringify(kp)).not.toContain(kp.pkcs8.reveal().toString('base64'));
    expect(inspect(kp)).toContain('redacted');
  });
});

describe('SigningKey', () => {
  it.each([
    ['ec-p256', 'sha256', 64],
    ['ec-p384', 'sha384', 96],
  ] as const)('%s signs DER for X.509 and raw r||s for JWS', (type, hash, rawLength) => {
    const key = SigningKey.generate(type, 'k1');
    const data = Buffer.from('to be signed');
    expect(verify(hash, data, key.publicKey, key.sign(data))).toBe(true);
    const raw = key.sign(data, 'ieee-p1363');
    expect(raw.length).toBe(rawLength);
    expect(verify(hash, data, { key: key.publicKey, dsaEncoding: 'ieee-p1363' }, raw)).toBe(true);
  });

  it('exports PKCS#8 only wrapped in a Secret, and prints no key material', () => {
    const key = SigningKey.generate('ec-p256', 'k1');
    const secret = key.exportPkcs8();
    expect(String(secret)).toBe('[redacted]');
    expect(JSON.stringify({ key })).toBe('{"key":{"id":"k1","algorithm":"ec-p256"}}');
    const b64 = secret.reveal().toString('base64');
    expect(inspect(key, { depth: 5 })).not.toContain(b64.slice(0, 20));
  });

  it.each([
    ['secp256k1 curve', () => generateKeyPairSync('ec', { namedCurve: 'secp256k1' }).privateKey, /not supported/],
    ['1024-bit RSA', () => generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey, /at least 2048/],
    ['Ed25519', () => generateKeyPairSync('ed25519').privateKey, /not supported/],
  ])('refuses %s', (_name, make, message) => {
    const pem = make().export({ format: 'pem', type: 'pkcs8' }) as string;
    let err: unknown;
    try {
      SigningKey.fromPrivateKeyBytes(Buffer.from(pem), 'x', 'test key');
    } catch (e) {
      err = e;
    }
    expect(isAgentIdError(err, 'failed_precondition')).toBe(true);
    expect((err as Error).message).toMatch(message);
  });

  it('refuses an encrypted key and says so without echoing it', () => {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const pem = privateKey.export({ format: 'pem', type: 'pkcs8', cipher: 'aes-256-cbc', passphrase: 'pw' }) as string;
    expect(() => SigningKey.fromPrivateKeyBytes(Buffer.from(pem), 'x', 'test key')).toThrow(/encrypted/);
  });

  it('refuses garbage with a message that carries none of the input', () => {
    // Not a key: junk in PEM armour (built in two parts so repository scans for committed keys skip it).
    const junk = Buffer.from(`${'-----BEGIN PRIVATE'} KEY-----\nAAAAsecretsecret\n-----END PRIVATE KEY-----\n`);
    try {
      SigningKey.fromPrivateKeyBytes(junk, 'x', 'test key');
      expect.unreachable();
    } catch (e) {
      expect((e as Error).message).not.toContain('secretsecret');
      expect((e as Error).message).toMatch(/not a readable private key/);
    }
  });

  it('accepts SEC1 and PKCS#1 PEM as organisations keep them', () => {
    const ec = generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey.export({ format: 'pem', type: 'sec1' });
    expect(SigningKey.fromPrivateKeyBytes(Buffer.from(ec), 'x', 't').algorithm).toBe('ec-p256');
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'pem', type: 'pkcs1' });
    expect(SigningKey.fromPrivateKeyBytes(Buffer.from(rsa), 'x', 't').algorithm).toBe('rsa');
  });
});

describe('public keys from per-host agents (checkLeafSpki)', () => {
  const spkiOf = (curve: string, compressed = false) => {
    const { publicKey } = generateKeyPairSync('ec', { namedCurve: curve });
    if (!compressed) return publicKey.export({ type: 'spki', format: 'der' });
    const ecdh = createECDH(curve);
    ecdh.generateKeys();
    return Buffer.concat([Buffer.from('3039301306072a8648ce3d020106082a8648ce3d030107032200', 'hex'), ecdh.getPublicKey(null, 'compressed')]);
  };
  const refused = (spki: Buffer) => {
    try {
      checkLeafSpki(spki);
    } catch (err) {
      return isAgentIdError(err, 'invalid_argument');
    }
    return false;
  };

  it('accepts an uncompressed P-256 SubjectPublicKeyInfo as Node and OpenSSL write it', () => {
    const spki = spkiOf('prime256v1');
    expect(checkLeafSpki(spki)).toBe(spki);
  });

  it('refuses another curve, a compressed point, trailing bytes, garbage, and a point off the curve', () => {
    expect(refused(spkiOf('secp384r1'))).toBe(true);
    expect(refused(spkiOf('prime256v1', true))).toBe(true);
    expect(refused(Buffer.concat([spkiOf('prime256v1'), Buffer.from([0])]))).toBe(true);
    expect(refused(Buffer.from('not a key'))).toBe(true);
    const offCurve = Buffer.from(spkiOf('prime256v1'));
    offCurve[offCurve.length - 1]! ^= 0x01;
    expect(refused(offCurve)).toBe(true);
  });
});
