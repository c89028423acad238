import type { IncomingMessage, ServerResponse } from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import type { Clock } from '../common/clock.js';
import { failedPrecondition, invalidArgument } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { systemClock } from '../common/system-clock.js';
import type { TrustDomain } from '../spiffe/spiffe-id.js';
import type { X509SvidSource } from '../verify/tls.js';
import { buildDocuments, crlListDocument, parseIssuer, refreshHintSeconds, type BundleTrustSource, type Documents } from './documents.js';
import { svidCertificate, webCertificate, type ServerCertificate } from './tls-material.js';

/*
 * The HTTPS bundle endpoint. Routes (GET and HEAD only; another method on a known path gets 405,
 * any other path 404; paths match exactly, the query string is ignored):
 *
 *   /  and  /bundle                    SPIFFE bundle document of the own trust domain (application/json)
 *   /crls                              {"crls": ["<standard base64 DER CRL>", ...]}, one per signing CA
 *   /crl/<n>.crl                       the n-th of those CRLs (0-based) as DER (application/pkix-crl)
 *   <issuer path>/.well-known/openid-configuration   OIDC discovery document
 *   <issuer path>/keys                 OIDC JWK set (JWT keys, use "sig", alg), the discovery jwks_uri
 *
 * <issuer path> is the path of the JWT issuer URL ("" for https://host), so discovery is found
 * where OIDC Discovery 4 says: <issuer>/.well-known/openid-configuration.
 */

export interface BundleEndpointDeps {
  trustDomain: TrustDomain;
  /** Port 0 picks a free port (tests). */
  listen: { host: string; port: number };
  profile: 'https_web' | 'https_spiffe';
  /** https_web: PEM certificate chain and key, re-read when they change. */
  certFile: string | null;
  keyFile: string | null;
  /** https_spiffe: agentid's own SVID; the server follows its 'update' events. */
  serverSvid: X509SvidSource | null;
  trust: BundleTrustSource;
  refreshHintMs: number;
  /** The `iss` of minted JWT-SVIDs, e.g. https://agentid.example. */
  jwtIssuer: string;
  logger: Logger;
  /** Paces the certificate file checks (default: the system clock). */
  clock?: Clock;
}

export interface BundleEndpoint {
  readonly port: number;
  /** https://<host>:<port> */
  readonly url: string;
  /** Stops listening, drops open connections, stops following the certificate source. */
  close(): Promise<void>;
}

interface Response {
  status: number;
  type: string;
  body: Buffer | string;
  cacheControl: string;
}

const text = (status: number, body: string): Response => ({ status, type: 'text/plain; charset=utf-8', body: `${body}\n`, cacheControl: 'no-store' });
const NOT_FOUND = text(404, 'not found');
const METHOD_NOT_ALLOWED = text(405, 'method not allowed');
const INTERNAL = text(500, 'internal error');
const CRL_PATH = /^\/crl\/(0|[1-9][0-9]{0,3})\.crl$/;

export async function startBundleEndpoint(deps: BundleEndpointDeps): Promise<BundleEndpoint> {
  const clock = deps.clock ?? systemClock;
  const hint = refreshHintSeconds(deps.refreshHintMs);
  const issuer = parseIssuer(deps.jwtIssuer);
  const maxAge = `max-age=${hint}`;

  let server: https.Server | undefined;
  const apply = (options: Parameters<https.Server['setSecureContext']>[0]) => server?.setSecureContext(options);
  let certificate: ServerCertificate;
  if (deps.profile === 'https_web') {
    if (!deps.certFile || !deps.keyFile) throw invalidArgument('bundle endpoint: profile https_web needs cert_file and key_file');
    certificate = webCertificate({ certFile: deps.certFile, keyFile: deps.keyFile, clock, logger: deps.logger, apply });
  } else if (deps.profile === 'https_spiffe') {
    if (!deps.serverSvid) throw invalidArgument('bundle endpoint: profile https_spiffe needs the server SVID source');
    certificate = svidCertificate({ source: deps.serverSvid, logger: deps.logger, apply });
  } else {
    throw invalidArgument(`bundle endpoint: unknown profile ${JSON.stringify(deps.profile)}`);
  }

  // The documents are rebuilt only when the trust material changes, not on every request.
  let cached: { key: string; docs: Documents } | undefined;
  const documents = (): Documents => {
    const x509Authorities = deps.trust.x509Authorities();
    const jwtKeys = deps.trust.jwtKeys();
    const sequence = deps.trust.sequence();
    const key = `${sequence}|${x509Authorities.map((c) => c.toString('base64')).join(',')}|${JSON.stringify(jwtKeys)}`;
    if (cached?.key !== key) {
      cached = { key, docs: buildDocuments({ trustDomain: deps.trustDomain, x509Authorities, jwtKeys, sequence, refreshHintSeconds: hint, issuer }) };
    }
    return cached.docs;
  };
  const json = (body: string, cacheControl = maxAge): Response => ({ status: 200, type: 'application/json', body, cacheControl });

  const routes = new Map<string, () => Response>([
    ['/', () => json(documents().bundle)],
    ['/bundle', () => json(documents().bundle)],
    // CRLs change on revocation; a cached copy would hide a revocation for up to the refresh hint.
    ['/crls', () => json(crlListDocument(deps.trust.crls()), 'no-cache')],
    [`${issuer.pathPrefix}/.well-known/openid-configuration`, () => json(documents().openidConfiguration)],
    [`${issuer.pathPrefix}/keys`, () => json(documents().keys)],
  ]);
  const crl = (index: number): Response => {
    const der = deps.trust.crls()[index];
    return der ? { status: 200, type: 'application/pkix-crl', body: der, cacheControl: 'no-cache' } : NOT_FOUND;
  };

  const route = (req: IncomingMessage): Response => {
    const url = req.url ?? '';
    const q = url.indexOf('?');
    const path = q === -1 ? url : url.slice(0, q);
    const handler = routes.get(path);
    const crlMatch = handler ? null : CRL_PATH.exec(path);
    if (!handler && !crlMatch) return NOT_FOUND;
    if (req.method !== 'GET' && req.method !== 'HEAD') return METHOD_NOT_ALLOWED;
    return handler ? handler() : crl(Number(crlMatch![1]));
  };

  const onRequest = (req: IncomingMessage, res: ServerResponse) => {
    let response: Response;
    try {
      response = route(req);
    } catch (err) {
      deps.logger.error({ err }, 'bundle endpoint: building a response failed');
      response = INTERNAL;
    }
    const body = typeof response.body === 'string' ? Buffer.from(response.body) : response.body;
    const headers: Record<string, string | number> = {
      'Content-Type': response.type,
      'Content-Length': body.length,
      'Cache-Control': response.cacheControl,
      'X-Content-Type-Options': 'nosniff',
    };
    if (response === METHOD_NOT_ALLOWED) headers.Allow = 'GET, HEAD';
    res.writeHead(response.status, headers);
    // Node sends no body for HEAD; the headers above still describe the GET response.
    res.end(body);
  };

  server = https.createServer({ ...certificate.options, requestCert: false }, onRequest);
  // Small fixed documents: a slow or idle client never holds a socket for long.
  server.headersTimeout = 10_000;
  server.requestTimeout = 15_000;
  server.keepAliveTimeout = 5_000;
  server.maxHeadersCount = 50;
  // Prepended so the check runs before the TLS layer wraps the socket with the current context.
  server.prependListener('connection', () => certificate.check());
  server.on('tlsClientError', (err) => deps.logger.debug({ err: err.message }, 'bundle endpoint: TLS handshake failed'));

  const srv = server;
  try {
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen(deps.listen.port, deps.listen.host, () => {
        srv.off('error', reject);
        resolve();
      });
    });
  } catch (err) {
    certificate.close();
    throw failedPrecondition(`bundle endpoint: cannot listen on ${deps.listen.host}:${deps.listen.port}: ${(err as Error).message}`, err);
  }
  srv.on('error', (err) => deps.logger.error({ err }, 'bundle endpoint: server error'));

  const port = (srv.address() as AddressInfo).port;
  const host = deps.listen.host.includes(':') ? `[${deps.listen.host}]` : deps.listen.host;
  const url = `https://${host}:${port}`;
  deps.logger.info({ url, profile: deps.profile, trustDomain: deps.trustDomain.name }, 'bundle endpoint listening');

  let closing: Promise<void> | undefined;
  return {
    port,
    url,
    close() {
      closing ??= new Promise<void>((resolve) => {
        certificate.close();
        srv.close(() => resolve());
        srv.closeAllConnections();
      });
      return closing;
    },
  };
}
