import { createPrivateKey } from 'node:crypto';
import { EventEmitter } from 'node:events';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import tls from 'node:tls';
import { afterEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { Secret } from '../common/secret.js';
import type { X509Source } from '../client/sources.js';
import { chainDer, fixture, FIXTURE_NOW } from '../../test/fixtures/load.js';
import { authorizeAny, authorizeId, authorizeTaskOf } from './authorize.js';
import { isVerificationError } from './errors.js';
import { clientTlsOptions, peerIdentity, serverTlsOptions, type X509SvidSource } from './tls.js';

// The client library's X509Source must satisfy the interface without an adapter.
const _sourceFits: (s: X509Source) => X509SvidSource = (s) => s;
void _sourceFits;

const rootDer = chainDer('root.pem');

/** A live source over fixture files; `set` swaps the SVID or CRLs and emits 'update'. */
class FixtureSource extends EventEmitter implements X509SvidSource {
  private chain: Buffer[];
  private key: Buffer;
  crls: Buffer[] = [];
  constructor(name: string) {
    super();
    this.chain = chainDer(`${name}.pem`);
    this.key = keyDer(name);
  }
  set(change: { name?: string; crls?: Buffer[] }): void {
    if (change.name) {
      this.chain = chainDer(`${change.name}.pem`);
      this.key = keyDer(change.name);
    }
    if (change.crls) this.crls = change.crls;
    this.emit('update');
  }
  getX509Svid() {
    return { chainDer: this.chain, keyPkcs8Der: new Secret(this.key) };
  }
  getBundles() {
    return new Map([['spiffe://example.org', rootDer]]);
  }
  getCrls() {
    return this.crls;
  }
}

function keyDer(name: string): Buffer {
  return createPrivateKey(fixture(`x509/${name}.key.pem`)).export({ format: 'der', type: 'pkcs8' });
}

const SERVER_ID = 'spiffe://example.org/svc/api';
const CLIENT_ID = 'spiffe://example.org/agent/a1/task/t1';
const clock = new ManualClock(FIXTURE_NOW);
const cleanups: (() => void | Promise<void>)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

interface Logged {
  reason: string;
}

async function startHttps(source: X509SvidSource, authorize = authorizeTaskOf('example.org', 'a1')) {
  const logged: Logged[] = [];
  const handled: string[] = [];
  const spiffe = serverTlsOptions({ source, authorize, clock, logger: { warn: (o: object) => void logged.push(o as Logged) } as never });
  const server = spiffe.attach(
    https.createServer(spiffe.options, (req, res) => {
      const id = peerIdentity(req.socket)?.spiffeId.toString() ?? 'none';
      handled.push(id);
      res.end(`hello ${id}`);
    }),
  );
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  cleanups.push(() => new Promise<void>((r) => { spiffe.close(); server.closeAllConnections(); server.close(() => r()); }));
  return { port: (server.address() as AddressInfo).port, logged, handled };
}

function get(port: number, source: X509SvidSource, authorize = authorizeId(SERVER_ID)): Promise<string> {
  const client = clientTlsOptions({ source, authorize, clock });
  const agent = client.agent({ keepAlive: false });
  cleanups.push(() => { agent.destroy(); client.close(); });
  return new Promise((resolve, reject) => {
    const req = https.request({ host: '127.0.0.1', port, path: '/', method: 'POST', agent, headers: { authorization: 'Bearer do-not-leak' } }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => resolve(body));
    });
    req.on('error', reject);
    req.end('secret body');
  });
}

describe('SPIFFE mTLS over node https on 127.0.0.1', () => {
  it('authenticates both sides and exposes the client identity to the handler', async () => {
    const server = await startHttps(new FixtureSource('good-leaf'));
    expect(await get(server.port, new FixtureSource('good-client'))).toBe(`hello ${CLIENT_ID}`);
    expect(server.handled).toEqual([CLIENT_ID]);
  });

  it('refuses a client the authorizer rejects, before the request handler runs', async () => {
    const server = await startHttps(new FixtureSource('good-leaf'), authorizeId('spiffe://example.org/someone/else'));
    await expect(get(server.port, new FixtureSource('good-client'))).rejects.toThrow();
    expect(server.handled).toEqual([]);
    expect(server.logged.map((l) => l.reason)).toEqual(['unauthorized']);
  });

  it.each([
    ['signed-by-untrusted-ca', 'untrusted'],
    ['other-leaf', 'no_bundle'],
  ])('refuses a client presenting %s (%s)', async (name, reason) => {
    const server = await startHttps(new FixtureSource('good-leaf'), authorizeAny());
    await expect(get(server.port, new FixtureSource(name))).rejects.toThrow();
    expect(server.handled).toEqual([]);
    expect(server.logged.map((l) => l.reason)).toEqual([reason]);
  });

  it('refuses a client without a certificate', async () => {
    const server = await startHttps(new FixtureSource('good-leaf'), authorizeAny());
    const error = await new Promise<Error | undefined>((resolve) => {
      const req = https.request({ host: '127.0.0.1', port: server.port, rejectUnauthorized: false, agent: false }, () => resolve(undefined));
      req.on('error', resolve);
      req.end();
    });
    expect(error).toBeInstanceOf(Error);
    expect(server.handled).toEqual([]);
    expect(server.logged.map((l) => l.reason)).toEqual(['malformed']);
  });

  it('checks revocation on every handshake against the latest CRLs', async () => {
    const serverSource = new FixtureSource('good-leaf');
    const server = await startHttps(serverSource, authorizeAny());
    const revokedClient = new FixtureSource('revoked-serial');
    expect(await get(server.port, revokedClient)).toBe('hello spiffe://example.org/svc/api');
    serverSource.set({ crls: [fixture('x509/revoked.crl')] });
    await expect(get(server.port, revokedClient)).rejects.toThrow();
    // The open keep-alive connection of the first request is closed on the update too, so 'revoked' may be logged twice.
    expect(new Set(server.logged.map((l) => l.reason))).toEqual(new Set(['revoked']));
    // A forged CRL never revokes.
    serverSource.set({ crls: [fixture('x509/crl-bad-signature.crl')] });
    expect(await get(server.port, revokedClient)).toBe('hello spiffe://example.org/svc/api');
  });

  it('serves the rotated certificate after a source update', async () => {
    const serverSource = new FixtureSource('good-leaf');
    const server = await startHttps(serverSource, authorizeAny());
    const client = new FixtureSource('good-client');
    await get(server.port, client, authorizeId(SERVER_ID));
    serverSource.set({ name: 'good-client' });
    await expect(get(server.port, client, authorizeId(SERVER_ID))).rejects.toSatisfy((e) => isVerificationError(e, 'unauthorized'));
    expect(await get(server.port, client, authorizeId(CLIENT_ID))).toBe(`hello ${CLIENT_ID}`);
  });

  it('the client refuses a server it does not authorize and sends it nothing', async () => {
    // A raw TLS server that records every byte it receives.
    const received: Buffer[] = [];
    const sockets: tls.TLSSocket[] = [];
    const server = tls.createServer(
      { key: fixture('x509/good-client.key.pem'), cert: fixture('x509/good-client.pem') },
      (socket) => {
        sockets.push(socket);
        socket.on('data', (d: Buffer) => received.push(d));
        socket.on('error', () => {});
      },
    );
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    cleanups.push(() => new Promise<void>((r) => { sockets.forEach((s) => s.destroy()); server.close(() => r()); }));
    const client = clientTlsOptions({ source: new FixtureSource('good-client'), authorize: authorizeId(SERVER_ID), clock });
    cleanups.push(() => client.close());
    const socket = client.connect({ host: '127.0.0.1', port: (server.address() as AddressInfo).port });
    socket.write('Authorization: Bearer do-not-leak');
    const err = await new Promise<unknown>((resolve) => socket.on('error', resolve));
    expect(isVerificationError(err, 'unauthorized')).toBe(true);
    await new Promise((r) => setTimeout(r, 100));
    expect(Buffer.concat(received).toString()).not.toContain('do-not-leak');
  });

  it('the client checks certificate validity with its clock', async () => {
    const server = await startHttps(new FixtureSource('good-leaf'), authorizeAny());
    const late = new ManualClock(Date.UTC(2036, 0, 2));
    const client = clientTlsOptions({ source: new FixtureSource('good-client'), authorize: authorizeId(SERVER_ID), clock: late });
    cleanups.push(() => client.close());
    const socket = client.connect({ host: '127.0.0.1', port: server.port });
    const err = await new Promise<unknown>((resolve) => socket.on('error', resolve));
    expect(isVerificationError(err, 'expired')).toBe(true);
  });
});

describe('SPIFFE mTLS over node http2', () => {
  it('authenticates the client of an HTTP/2 session and refuses one the authorizer rejects', async () => {
    const http2 = await import('node:http2');
    const start = async (authorize: Parameters<typeof serverTlsOptions>[0]['authorize']) => {
      const spiffe = serverTlsOptions({ source: new FixtureSource('good-leaf'), authorize, clock });
      const handled: string[] = [];
      const server = spiffe.attach(
        http2.createSecureServer({ ...spiffe.options, allowHTTP1: false }, (req, res) => {
          const id = peerIdentity(req.socket)?.spiffeId.toString() ?? 'none';
          handled.push(id);
          res.end(`hello ${id}`);
        }),
      );
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      cleanups.push(() => new Promise<void>((r) => { spiffe.close(); server.close(() => r()); }));
      return { port: (server.address() as AddressInfo).port, handled };
    };
    const request = (port: number) => {
      const client = clientTlsOptions({ source: new FixtureSource('good-client'), authorize: authorizeId(SERVER_ID), clock });
      cleanups.push(() => client.close());
      return new Promise<string>((resolve, reject) => {
        const session = http2.connect(`https://127.0.0.1:${port}`, { createConnection: () => client.connect({ host: '127.0.0.1', port, ALPNProtocols: ['h2'] }) });
        session.on('error', reject);
        const req = session.request({ ':path': '/' });
        let body = '';
        let responded = false;
        req.on('response', () => (responded = true));
        req.on('data', (d: Buffer) => (body += d.toString()));
        // A refused client's session is torn down: the stream closes without any response.
        req.on('close', () => { session.destroy(); if (responded) resolve(body); else reject(new Error('no response: connection closed')); });
        req.on('error', () => {});
        req.end();
      });
    };
    const ok = await start(authorizeTaskOf('example.org', 'a1'));
    expect(await request(ok.port)).toBe(`hello ${CLIENT_ID}`);
    expect(ok.handled).toEqual([CLIENT_ID]);
    const refusing = await start(authorizeId('spiffe://example.org/someone/else'));
    await expect(request(refusing.port)).rejects.toThrow();
    expect(refusing.handled).toEqual([]);
  });
});
