import https from 'node:https';
import { isIP } from 'node:net';
import tls from 'node:tls';
import { abortError } from '../common/clock.js';
import { unavailable } from '../common/errors.js';
import type { BundleProfile } from '../config/types.js';
import { peerChainDer } from '../verify/tls.js';

export interface FetchRequest {
  url: URL;
  profile: BundleProfile;
  /** https_web only: PEM roots trusted instead of the system ones. */
  ca?: string | undefined;
  /**
   * https_spiffe only: called with the server's chain (DER, leaf first) once the handshake is
   * done and before any request byte is written; throwing refuses the endpoint.
   */
  verifyPeer?: ((chainDer: Buffer[]) => void) | undefined;
  maxBytes: number;
  /** Aborts the connection (the caller's timeout and stop()). */
  signal: AbortSignal;
}

/** Fetches one bundle document and returns its body. Injectable so tests can stand in for the network. */
export type BundleFetcher = (req: FetchRequest) => Promise<Buffer>;

/**
 * GET the bundle document over HTTPS. The TLS connection is made and authenticated here first
 * and only then handed to the HTTP client, so an https_spiffe endpoint that fails verification
 * never receives a single request byte. Redirects are not followed: a bundle endpoint URL is
 * configured trust, and a redirect would move that trust somewhere nobody configured.
 */
export const httpsFetch: BundleFetcher = async (req) => {
  if (req.url.protocol !== 'https:') throw unavailable(`bundle endpoint ${req.url.href}: only https URLs are fetched`);
  const socket = await connect(req);
  try {
    return await get(req, socket);
  } finally {
    socket.destroy();
  }
};

function connect(req: FetchRequest): Promise<tls.TLSSocket> {
  const { url, signal } = req;
  if (signal.aborted) return Promise.reject(abortError());
  const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
  const port = url.port === '' ? 443 : Number(url.port);
  const spiffe = req.profile === 'https_spiffe';
  return new Promise((resolve, reject) => {
    const socket = tls.connect({
      host,
      port,
      // SNI must not carry an IP address (RFC 6066 3).
      ...(isIP(host) ? {} : { servername: host }),
      minVersion: 'TLSv1.2',
      ALPNProtocols: ['http/1.1'],
      // https_spiffe: Web PKI rules (hostname, system roots) do not apply; the SVID is checked below.
      rejectUnauthorized: !spiffe,
      ...(spiffe || req.ca === undefined ? {} : { ca: req.ca }),
    });
    const onAbort = () => fail(abortError());
    const fail = (err: Error) => {
      signal.removeEventListener('abort', onAbort);
      socket.destroy();
      reject(err);
    };
    signal.addEventListener('abort', onAbort, { once: true });
    socket.on('error', (err) => fail(unavailable(`bundle endpoint ${url.href}: ${err.message}`, err)));
    socket.once('secureConnect', () => {
      signal.removeEventListener('abort', onAbort);
      if (spiffe) {
        try {
          if (!req.verifyPeer) throw unavailable('https_spiffe: no peer verifier given');
          req.verifyPeer(peerChainDer(socket));
        } catch (err) {
          socket.destroy();
          reject(err);
          return;
        }
      }
      resolve(socket);
    });
  });
}

function get(req: FetchRequest, socket: tls.TLSSocket): Promise<Buffer> {
  const { url, signal, maxBytes } = req;
  const where = `bundle endpoint ${url.href}`;
  return new Promise((resolve, reject) => {
    let settled = false;
    const finish = (err: Error | undefined, body?: Buffer) => {
      if (settled) return;
      settled = true;
      signal.removeEventListener('abort', onAbort);
      if (err) {
        request.destroy();
        reject(err);
      } else resolve(body!);
    };
    const onAbort = () => finish(abortError());
    const request = https.request(
      {
        method: 'GET',
        host: url.hostname,
        port: url.port,
        path: `${url.pathname}${url.search}`,
        headers: { accept: 'application/json', 'accept-encoding': 'identity' },
        createConnection: () => socket,
      },
      (res) => {
        if (res.statusCode !== 200) {
          res.resume();
          finish(unavailable(`${where}: HTTP status ${res.statusCode ?? '?'}, expected 200`));
          return;
        }
        const declared = Number(res.headers['content-length']);
        if (Number.isFinite(declared) && declared > maxBytes) {
          finish(unavailable(`${where}: response of ${declared} bytes exceeds the ${maxBytes}-byte limit`));
          return;
        }
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (chunk: Buffer) => {
          size += chunk.length;
          if (size > maxBytes) finish(unavailable(`${where}: response exceeds the ${maxBytes}-byte limit`));
          else chunks.push(chunk);
        });
        res.once('end', () => finish(undefined, Buffer.concat(chunks)));
        res.once('error', (err) => finish(unavailable(`${where}: ${err.message}`, err)));
        res.once('aborted', () => finish(unavailable(`${where}: response aborted`)));
      },
    );
    signal.addEventListener('abort', onAbort, { once: true });
    if (signal.aborted) onAbort();
    request.once('error', (err) => finish(unavailable(`${where}: ${err.message}`, err)));
    request.end();
  });
}
