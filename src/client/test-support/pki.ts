import 'reflect-metadata';
import { webcrypto } from 'node:crypto';
import * as x509 from '@peculiar/x509';

type CryptoKeyPair = webcrypto.CryptoKeyPair;

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const subtle = webcrypto.subtle;
const EC: webcrypto.EcKeyGenParams & webcrypto.EcdsaParams = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };

/** Fixed epoch for every fixture; tests drive a ManualClock from here. */
export const EPOCH = Date.UTC(2026, 0, 1);
const DAY = 86_400_000;

let serial = 1;
const nextSerial = () => (serial++).toString(16).padStart(2, '0');

export interface TestCa {
  cert: x509.X509Certificate;
  der: Buffer;
  keys: CryptoKeyPair;
}

async function makeCa(name: string, issuer?: TestCa): Promise<TestCa> {
  const keys = (await subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(true, undefined, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
    await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
  ];
  if (issuer) extensions.push(await x509.AuthorityKeyIdentifierExtension.create(issuer.keys.publicKey));
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: nextSerial(),
    subject: `CN=${name}`,
    issuer: issuer ? issuer.cert.subject : `CN=${name}`,
    notBefore: new Date(EPOCH - DAY),
    notAfter: new Date(EPOCH + 3650 * DAY),
    signingAlgorithm: EC,
    publicKey: keys.publicKey,
    signingKey: issuer ? issuer.keys.privateKey : keys.privateKey,
    extensions,
  });
  return { cert, der: Buffer.from(cert.rawData), keys };
}

export interface TestSvid {
  spiffeId: string;
  /** Leaf then intermediate. */
  chain: Buffer[];
  keyPkcs8: Buffer;
  notAfter: number;
}

export interface TestPki {
  root: TestCa;
  intermediate: TestCa;
  federatedRoot: TestCa;
  /** A DER CRL signed by the root, revoking one serial. */
  crl: Buffer;
  issue(spiffeId: string, options?: { notAfter?: number; uris?: string[] }): Promise<TestSvid>;
  /** A fresh key pair that belongs to no certificate, as PKCS#8 DER. */
  strayKeyPkcs8(): Promise<Buffer>;
}

export async function createTestPki(): Promise<TestPki> {
  const root = await makeCa('agentid test root');
  const intermediate = await makeCa('agentid test intermediate', root);
  const federatedRoot = await makeCa('federated test root');
  const crl = await x509.X509CrlGenerator.create({
    issuer: root.cert.subject,
    thisUpdate: new Date(EPOCH),
    nextUpdate: new Date(EPOCH + DAY),
    entries: [{ serialNumber: 'ff01', revocationDate: new Date(EPOCH) }],
    signingAlgorithm: EC,
    signingKey: root.keys.privateKey,
  });

  const issue: TestPki['issue'] = async (spiffeId, options = {}) => {
    const keys = (await subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
    const notAfter = options.notAfter ?? EPOCH + 30 * DAY;
    const leaf = await x509.X509CertificateGenerator.create({
      serialNumber: nextSerial(),
      subject: '',
      issuer: intermediate.cert.subject,
      notBefore: new Date(EPOCH - DAY),
      notAfter: new Date(notAfter),
      signingAlgorithm: EC,
      publicKey: keys.publicKey,
      signingKey: intermediate.keys.privateKey,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.SubjectAlternativeNameExtension((options.uris ?? [spiffeId]).map((value) => ({ type: 'url' as const, value })), true),
        await x509.AuthorityKeyIdentifierExtension.create(intermediate.keys.publicKey),
      ],
    });
    return {
      spiffeId,
      chain: [Buffer.from(leaf.rawData), intermediate.der],
      keyPkcs8: Buffer.from(await subtle.exportKey('pkcs8', keys.privateKey)),
      notAfter,
    };
  };

  const strayKeyPkcs8 = async () => {
    const keys = (await subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
    return Buffer.from(await subtle.exportKey('pkcs8', keys.privateKey));
  };

  return { root, intermediate, federatedRoot, crl: Buffer.from(crl.rawData), issue, strayKeyPkcs8 };
}

/** An unsigned-for-purpose JWT: the client only reads exp, aud and sub, it never verifies. */
export function fakeJwt(claims: Record<string, unknown>): string {
  const enc = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
  return `${enc({ alg: 'ES256', kid: 'k1', typ: 'JWT' })}.${enc(claims)}.${Buffer.from('not-a-signature').toString('base64url')}`;
}
