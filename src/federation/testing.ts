/* Test support for src/federation (excluded from the build): a small PKI and HTTPS/TLS endpoints. */
import 'reflect-metadata';
import { generateKeyPairSync, webcrypto } from 'node:crypto';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import * as x509 from '@peculiar/x509';
import { JwtBundle, X509Bundle, toSpiffeBundleDocument } from '../verify/bundle.js';
import { toPem } from '../verify/der.js';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const subtle = webcrypto.subtle;
const EC = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
/** Wide enough for the ManualClock epoch (2026-01-01) and for Node's own wall-clock check of https_web certificates. */
const NOT_BEFORE = new Date(Date.UTC(2020, 0, 1));
const NOT_AFTER = new Date(Date.UTC(2040, 0, 1));

let serial = 1;
const nextSerial = () => (serial++).toString(16).padStart(4, '0');

export interface Root {
  der: Buffer;
  pem: string;
  cert: x509.X509Certificate;
  keys: webcrypto.CryptoKeyPair;
}

export interface Leaf {
  /** PEM chain for a TLS server (leaf only: it is signed by the root directly). */
  certPem: string;
  keyPem: string;
}

export async function makeRoot(name: string): Promise<Root> {
  const keys = (await subtle.generateKey(EC, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: nextSerial(),
    subject: `CN=${name}`,
    issuer: `CN=${name}`,
    notBefore: NOT_BEFORE,
    notAfter: NOT_AFTER,
    signingAlgorithm: EC,
    publicKey: keys.publicKey,
    signingKey: keys.privateKey,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  const der = Buffer.from(cert.rawData);
  return { der, pem: toPem(der, 'CERTIFICATE'), cert, keys };
}

async function issue(root: Root, san: x509.JsonGeneralName[]): Promise<Leaf> {
  const keys = (await subtle.generateKey(EC, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: nextSerial(),
    subject: '',
    issuer: root.cert.subject,
    notBefore: NOT_BEFORE,
    notAfter: NOT_AFTER,
    signingAlgorithm: EC,
    publicKey: keys.publicKey,
    signingKey: root.keys.privateKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
      new x509.SubjectAlternativeNameExtension(san, true),
      await x509.AuthorityKeyIdentifierExtension.create(root.keys.publicKey),
    ],
  });
  const pkcs8 = Buffer.from(await subtle.exportKey('pkcs8', keys.privateKey));
  return { certPem: toPem(Buffer.from(cert.rawData), 'CERTIFICATE'), keyPem: toPem(pkcs8, 'PRIVATE KEY') };
}

/** An X.509-SVID for a bundle endpoint (https_spiffe). */
export const issueSvid = (root: Root, spiffeId: string) => issue(root, [{ type: 'url', value: spiffeId }]);
/** A Web PKI server certificate for 127.0.0.1 (https_web). */
export const issueWebCert = (root: Root) => issue(root, [{ type: 'ip', value: '127.0.0.1' }]);

export function jwtBundle(td: string, kid: string): JwtBundle {
  const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return new JwtBundle(td, [{ kid, jwk: publicKey.export({ format: 'jwk' }), key: publicKey }]);
}

export function bundleDoc(td: string, roots: Root[], opts: { sequence?: number; hint?: number; jwt?: JwtBundle } = {}): string {
  return toSpiffeBundleDocument({
    x509: X509Bundle.fromDer(td, roots.map((r) => r.der)),
    ...(opts.jwt ? { jwt: opts.jwt } : {}),
    ...(opts.sequence === undefined ? {} : { sequence: opts.sequence }),
    ...(opts.hint === undefined ? {} : { refreshHintSeconds: opts.hint }),
  });
}

export interface Endpoint {
  url: string;
  /** Bundle document served at the next request. */
  doc: string;
  status: number;
  /** When set, requests are accepted but never answered. */
  hang: boolean;
  requests: number;
  setCertificate(leaf: Leaf): void;
  close(): Promise<void>;
}

/** An HTTPS bundle endpoint on 127.0.0.1 that serves `doc` at `/`. */
export async function startEndpoint(leaf: Leaf, doc = ''): Promise<Endpoint> {
  const server = https.createServer({ cert: leaf.certPem, key: leaf.keyPem }, (req, res) => {
    ep.requests++;
    if (ep.hang) return;
    res.writeHead(ep.status, { 'content-type': 'application/json' });
    res.end(ep.status === 200 ? ep.doc : 'unavailable');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const ep: Endpoint = {
    url: `https://127.0.0.1:${(server.address() as AddressInfo).port}/`,
    doc,
    status: 200,
    hang: false,
    requests: 0,
    setCertificate: (l) => server.setSecureContext({ cert: l.certPem, key: l.keyPem }),
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
  return ep;
}

/** A bare TLS server that counts application bytes it receives after the handshake. */
export async function startTlsCounter(leaf: Leaf): Promise<{ url: string; bytes: number; close(): Promise<void> }> {
  const sockets = new Set<tls.TLSSocket>();
  const server = tls.createServer({ cert: leaf.certPem, key: leaf.keyPem }, (socket) => {
    sockets.add(socket);
    socket.on('data', (d: Buffer) => (state.bytes += d.length));
    socket.on('error', () => undefined);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const state = {
    url: `https://127.0.0.1:${(server.address() as AddressInfo).port}/bundle`,
    bytes: 0,
    close: () =>
      new Promise<void>((r) => {
        for (const s of sockets) s.destroy();
        server.close(() => r());
      }),
  };
  return state;
}

/** Waits (in real time) for network work to reach a condition. */
export async function until(cond: () => boolean, what: string, state?: () => unknown, ms = 5000): Promise<void> {
  const deadline = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}${state ? `: ${JSON.stringify(state())}` : ''}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}
