import type { IncomingMessage, ServerResponse } from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { Actor } from '../common/actor.js';
import { auditActor, describeActor } from '../common/actor.js';
import type { Clock } from '../common/clock.js';
import { AgentIdError, failedPrecondition, invalidArgument, notFound, permissionDenied, resourceExhausted, type ErrorCode } from '../common/errors.js';
import { isCallerFacing } from '../common/grpc-errors.js';
import type { Logger } from '../common/logger.js';
import type { ClientSvidVerifier } from '../admin/client-verify.js';
import { svidCertificate, webCertificate, type ServerCertificate } from '../bundle-endpoint/tls-material.js';
import { peerChainDer, type X509SvidSource } from '../verify/tls.js';
import { ConsoleApi, recordAgent, type ConsoleServices } from './api.js';
import { ASSETS } from './assets.generated.js';
import { AuditFollower, type AuditSummary } from './audit-follower.js';
import { ConsoleSessions, type ConsoleSession } from './sessions.js';

/*
 * The web console: a small single-page app and its JSON API, over HTTPS on its own listener.
 *
 * Sign-in has no passwords. `agentid console login` asks the admin API (uid-mapped, like every
 * admin call) for a one-time link; GET /login/<token> spends it and sets the session cookie.
 * A browser presenting a client X.509-SVID that the mTLS admin mapping (admin.tcp.spiffe_roles)
 * gives a role signs in with that instead. Either way the session carries the caller's Actor and
 * every call goes through the same services and role checks as the admin API, audited as that
 * actor.
 *
 * Browser defences: the session cookie is __Host-, HttpOnly, Secure, SameSite=Strict; every
 * state change needs the session's CSRF token in X-CSRF-Token (a header a cross-site form cannot
 * set) and an Origin equal to this console's; the Content-Security-Policy allows only our own
 * script and style files (no inline code), no framing, no foreign connections.
 */

export interface ConsoleOptions {
  listen: { host: string; port: number };
  /** PEM files, or null to present the server's own SVID. */
  certFiles: { certFile: string; keyFile: string } | null;
  /** agentid's own SVID: the certificate (without certFiles) and the trust bundle for client certificates. */
  serverSvid: X509SvidSource;
  /** Maps a browser's client certificate to a role; undefined: certificate sign-in is off. */
  clientCertificates: ClientSvidVerifier | undefined;
  sessionTtlMs: number;
  services: ConsoleServices;
  clock: Clock;
  logger: Logger;
}

export interface RunningConsole {
  /** https://host:port */
  readonly url: string;
  readonly port: number;
  /** A one-time sign-in link for `actor` (the admin API's CreateConsoleLogin). */
  createLogin(actor: Actor): { url: string; expiresAt: number };
  close(): Promise<void>;
}

const COOKIE = '__Host-agentid-session';
const MAX_BODY_BYTES = 16 * 1024;
const MAX_EVENT_STREAMS = 100;
/** How often event streams get a keep-alive and streams of ended sessions are closed. */
const UPKEEP_MS = 15_000;
const TOKEN_PATH = /^\/login\/([A-Za-z0-9_-]{43})$/;
const TASK_PATH = /^\/api\/tasks\/([^/]+)\/([^/]+)$/;
const REVOKE_PATH = /^\/api\/tasks\/([^/]+)\/([^/]+)\/revoke$/;
const ENTRY_PATH = /^\/api\/entries\/([^/]+)$/;

const SECURITY_HEADERS: Record<string, string> = {
  'Content-Security-Policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'X-Content-Type-Options': 'nosniff',
  'X-Frame-Options': 'DENY',
  'Referrer-Policy': 'no-referrer',
  'Cross-Origin-Opener-Policy': 'same-origin',
  'Cross-Origin-Resource-Policy': 'same-origin',
  'Strict-Transport-Security': 'max-age=31536000',
};

const HTTP_STATUS: Record<ErrorCode, number> = {
  invalid_argument: 400,
  unauthenticated: 401,
  permission_denied: 403,
  not_found: 404,
  already_exists: 409,
  failed_precondition: 409,
  resource_exhausted: 429,
  unimplemented: 501,
  unavailable: 503,
  internal: 500,
};

const unauthenticated = (message: string) => new AgentIdError('unauthenticated', message);

interface EventClient {
  res: ServerResponse;
  sessionId: string;
}

function cookieValue(req: IncomingMessage, name: string): string | undefined {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

function readJson(req: IncomingMessage): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const type = req.headers['content-type'] ?? '';
    if (!/^application\/json(;|$)/.test(type)) {
      req.resume();
      reject(invalidArgument('request body must be application/json'));
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY_BYTES) {
        reject(invalidArgument(`request body is larger than ${MAX_BODY_BYTES} bytes`));
        req.destroy();
      } else chunks.push(c);
    });
    req.on('end', () => {
      if (size === 0) return resolve({});
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch {
        reject(invalidArgument('request body is not valid JSON'));
      }
    });
    req.on('error', reject);
  });
}

function segment(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    throw invalidArgument('malformed path');
  }
}

/** Query time filters: ISO-8601 times (as <input type="datetime-local"> sends, read as UTC) or epoch milliseconds. */
function timeParam(value: string | null, name: string): number | undefined {
  if (value === null || value === '') return undefined;
  const ms = /^\d+$/.test(value) ? Number(value) : Date.parse(/[zZ]|[+-]\d\d:\d\d$/.test(value) ? value : `${value}Z`);
  if (!Number.isFinite(ms)) throw invalidArgument(`audit: ${name} is not a time`);
  return ms;
}

export async function startConsole(opts: ConsoleOptions): Promise<RunningConsole> {
  const { clock, services } = opts;
  const logger = opts.logger.child({ api: 'console' });
  const sessions = new ConsoleSessions({ clock, sessionTtlMs: opts.sessionTtlMs });
  const eventClients = new Set<EventClient>();

  const follower = new AuditFollower({
    file: services.auditFile,
    clock,
    logger,
    onRecords: (records) => broadcast(records),
  });
  services.auditTap(follower.observer);
  const api = new ConsoleApi(services, { follower, now: () => clock.now() });

  let server: https.Server | undefined;
  const apply = (o: Parameters<https.Server['setSecureContext']>[0]) => server?.setSecureContext(o);
  const certificate: ServerCertificate = opts.certFiles
    ? webCertificate({ label: 'console', ...opts.certFiles, clock, logger, apply })
    : svidCertificate({ label: 'console', source: opts.serverSvid, logger, apply });

  /** Topics a change touches, as this actor may see them: orchestrators hear only of their agents. */
  const topicsFor = (actor: Actor, records: AuditSummary[]): string[] => {
    const topics = new Set<string>();
    for (const r of records) {
      const agent = recordAgent(r);
      const visible = actor.role === 'admin' || (agent !== undefined && actor.agents.includes(agent));
      if (!visible) continue;
      if (r.type.startsWith('task.') || r.type.startsWith('svid.')) topics.add('tasks');
      if (r.type === 'revocation.added') topics.add('revocations');
      if (r.type.startsWith('entry.')) topics.add('entries');
      topics.add('audit');
    }
    return [...topics];
  };

  const broadcast = (records: AuditSummary[]) => {
    for (const client of eventClients) {
      const session = sessions.get(client.sessionId);
      if (!session) {
        client.res.end();
        continue;
      }
      const topics = topicsFor(session.actor, records);
      if (topics.length > 0) client.res.write(`event: change\ndata: ${JSON.stringify({ topics })}\n\n`);
    }
  };

  /** Ends event streams of sessions that expired or signed out; keeps idle proxies from dropping the rest. */
  const upkeep = () => {
    for (const client of eventClients) {
      if (!sessions.get(client.sessionId)) client.res.end();
      else client.res.write(': keep-alive\n\n');
    }
  };
  const stopUpkeep = new AbortController();
  const upkeepLoop = (async () => {
    for (;;) {
      try {
        await clock.sleep(UPKEEP_MS, stopUpkeep.signal);
      } catch {
        return; // closing
      }
      upkeep();
    }
  })();

  const setCookie = (res: ServerResponse, value: string, maxAgeSeconds: number) =>
    res.setHeader('Set-Cookie', `${COOKIE}=${value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=${maxAgeSeconds}`);

  const signedIn = (actor: Actor, method: 'link' | 'certificate') =>
    services.audit.append({ type: 'console.signed_in', outcome: 'ok', actor: auditActor(actor), by: describeActor(actor), role: actor.role, method });

  const openSession = (res: ServerResponse, actor: Actor, method: 'link' | 'certificate', extra: { notAfter?: number; clientChain?: Buffer[] } = {}) => {
    const { id, session } = sessions.open(actor, extra);
    signedIn(actor, method);
    setCookie(res, id, Math.max(1, Math.floor((session.expiresAt - clock.now()) / 1000)));
    return session;
  };

  /** The request's session; a certificate session whose chain no longer verifies is ended. */
  const sessionOf = (req: IncomingMessage): { id: string; session: ConsoleSession } | undefined => {
    const id = cookieValue(req, COOKIE);
    const session = sessions.get(id);
    if (!id || !session) return undefined;
    if (session.clientChain) {
      const caller = opts.clientCertificates?.callerForChain(session.clientChain);
      if (!caller?.actor) {
        sessions.close(id);
        return undefined;
      }
    }
    return { id, session };
  };

  /** Sign-in with the TLS client certificate, when it maps to a role. */
  const certificateSession = (req: IncomingMessage, res: ServerResponse): ConsoleSession | undefined => {
    if (!opts.clientCertificates) return undefined;
    const chain = peerChainDer(req.socket as TLSSocket);
    if (chain.length === 0) return undefined;
    const caller = opts.clientCertificates.callerForChain(chain);
    if (!caller.actor) {
      services.audit.append({ type: 'admin.denied', outcome: 'denied', who: caller.who, role: 'none', action: 'console.sign_in', reason: caller.reason });
      return undefined;
    }
    // The session ends when the certificate does, and sooner if it stops verifying (sessionOf).
    const notAfter = opts.clientCertificates.verify(chain).leaf.notAfter;
    return openSession(res, caller.actor, 'certificate', { clientChain: chain, notAfter });
  };

  /** State changes: a session, its CSRF token, and a same-origin request. */
  const checkStateChange = (req: IncomingMessage, session: ConsoleSession) => {
    const origin = req.headers.origin;
    const host = req.headers.host;
    if (!origin || !host || origin !== `https://${host}`) throw permissionDenied('cross-origin request refused');
    const site = req.headers['sec-fetch-site'];
    if (site !== undefined && site !== 'same-origin') throw permissionDenied('cross-site request refused');
    const token = req.headers['x-csrf-token'];
    if (!ConsoleSessions.csrfMatches(session, typeof token === 'string' ? token : undefined)) throw permissionDenied('missing or wrong CSRF token');
  };

  const send = (res: ServerResponse, status: number, type: string, body: string | Buffer, extra: Record<string, string> = {}) => {
    const bytes = typeof body === 'string' ? Buffer.from(body) : body;
    res.writeHead(status, { ...SECURITY_HEADERS, 'Content-Type': type, 'Content-Length': bytes.length, 'Cache-Control': 'no-store', ...extra });
    res.end(bytes);
  };
  const json = (res: ServerResponse, status: number, value: unknown) => send(res, status, 'application/json; charset=utf-8', JSON.stringify(value));

  const sendError = (res: ServerResponse, err: unknown, route: string) => {
    // Signing in is the console's own business; everything else follows the admin API's rule.
    if (err instanceof AgentIdError && (isCallerFacing(err.code) || err.code === 'unauthenticated')) {
      logger.info({ route, code: err.code, reason: err.message }, 'console request refused');
      json(res, HTTP_STATUS[err.code], { error: err.message, code: err.code });
      return;
    }
    logger.error({ route, err }, 'console request failed');
    const code: ErrorCode = err instanceof AgentIdError ? err.code : 'internal';
    json(res, HTTP_STATUS[code], { error: code === 'unavailable' ? 'service unavailable' : 'internal error', code });
  };

  const openEvents = (req: IncomingMessage, res: ServerResponse, sessionId: string) => {
    if (eventClients.size >= MAX_EVENT_STREAMS) throw resourceExhausted('console: too many open event streams');
    res.writeHead(200, { ...SECURITY_HEADERS, 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-store', Connection: 'keep-alive' });
    res.write(': connected\n\n');
    const client = { res, sessionId };
    eventClients.add(client);
    const drop = () => eventClients.delete(client);
    req.on('close', drop);
    res.on('close', drop);
  };

  const api_ = async (req: IncomingMessage, res: ServerResponse, path: string, query: URLSearchParams) => {
    const method = req.method ?? 'GET';
    if (path === '/api/session' && method === 'GET') {
      const current = sessionOf(req)?.session ?? certificateSession(req, res);
      if (!current) throw unauthenticated('not signed in: run `agentid console login` and open the link it prints');
      return json(res, 200, { ...api.whoAmI(current.actor), csrfToken: current.csrfToken, expiresAt: current.expiresAt });
    }
    const found = sessionOf(req);
    if (!found) throw unauthenticated('not signed in');
    const { session } = found;
    const actor = session.actor;
    if (method !== 'GET') checkStateChange(req, session);

    if (method === 'POST' && path === '/api/logout') {
      sessions.close(found.id);
      setCookie(res, '', 0);
      return json(res, 200, {});
    }
    if (method === 'GET') {
      if (path === '/api/events') return openEvents(req, res, found.id);
      if (path === '/api/overview') return json(res, 200, await api.overview(actor));
      if (path === '/api/tasks') return json(res, 200, await api.listTasks(actor, query.get('state') || undefined));
      if (path === '/api/revocations') return json(res, 200, await api.revocations(actor));
      if (path === '/api/entries') return json(res, 200, await api.entries(actor));
      if (path === '/api/audit') {
        return json(res, 200, api.auditTrail(actor, {
          task: query.get('task') || undefined,
          spiffeId: query.get('spiffeId') || undefined,
          type: query.get('type') || undefined,
          since: timeParam(query.get('since'), 'since'),
          until: timeParam(query.get('until'), 'until'),
        }));
      }
      const t = TASK_PATH.exec(path);
      if (t) return json(res, 200, await api.task(actor, segment(t[1]!), segment(t[2]!)));
    }
    if (method === 'POST') {
      const r = REVOKE_PATH.exec(path);
      if (r) return json(res, 200, await api.revokeTask(actor, segment(r[1]!), segment(r[2]!), await readJson(req)));
      if (path === '/api/entries') return json(res, 201, await api.createEntry(actor, await readJson(req)));
    }
    if (method === 'DELETE') {
      const e = ENTRY_PATH.exec(path);
      if (e) return json(res, 200, await api.deleteEntry(actor, segment(e[1]!)));
    }
    throw notFound(`no such API call: ${method} ${path.slice(0, 100)}`);
  };

  const onRequest = (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'https://console.invalid');
    const path = url.pathname;
    const route = path.startsWith('/login/') ? '/login/:token' : path.slice(0, 100);
    (async () => {
      if (path.startsWith('/api/')) return api_(req, res, path, url.searchParams);
      if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, 'text/plain; charset=utf-8', 'method not allowed\n', { Allow: 'GET, HEAD' });
      const login = TOKEN_PATH.exec(path);
      if (login || path.startsWith('/login/')) {
        const actor = login ? sessions.redeemLogin(login[1]!) : undefined;
        if (!actor) return send(res, 401, 'text/html; charset=utf-8', ASSETS.signInFailedHtml);
        openSession(res, actor, 'link');
        return send(res, 303, 'text/plain; charset=utf-8', 'signed in\n', { Location: '/' });
      }
      // No icon: answer the browser's automatic request without a 404 in its console.
      if (path === '/favicon.ico') return send(res, 204, 'text/plain; charset=utf-8', '');
      const asset = ASSETS.files[path];
      if (asset) return send(res, 200, asset.type, asset.body, { 'Cache-Control': 'no-cache', ETag: asset.etag });
      send(res, 404, 'text/plain; charset=utf-8', 'not found\n');
    })().catch((err) => sendError(res, err, route));
  };

  server = https.createServer(
    {
      ...certificate.options,
      // Ask for a client certificate (sign-in with an SVID) but let verify/ judge it, never OpenSSL.
      requestCert: opts.clientCertificates !== undefined,
      rejectUnauthorized: false,
    },
    onRequest,
  );
  server.headersTimeout = 10_000;
  server.requestTimeout = 15_000;
  server.keepAliveTimeout = 5_000;
  server.maxHeadersCount = 50;
  server.prependListener('connection', () => certificate.check());
  server.on('tlsClientError', (err) => logger.debug({ err: err.message }, 'console: TLS handshake failed'));

  const srv = server;
  try {
    await new Promise<void>((resolve, reject) => {
      srv.once('error', reject);
      srv.listen(opts.listen.port, opts.listen.host, () => {
        srv.off('error', reject);
        resolve();
      });
    });
  } catch (err) {
    certificate.close();
    follower.close();
    stopUpkeep.abort();
    throw failedPrecondition(`console: cannot listen on ${opts.listen.host}:${opts.listen.port}: ${(err as Error).message}`, err);
  }
  srv.on('error', (err) => logger.error({ err }, 'console: server error'));

  const port = (srv.address() as AddressInfo).port;
  const host = opts.listen.host.includes(':') ? `[${opts.listen.host}]` : opts.listen.host;
  const url = `https://${host}:${port}`;
  logger.info({ url }, 'web console listening');

  let closing: Promise<void> | undefined;
  return {
    url,
    port,
    createLogin(actor) {
      const { token, expiresAt } = sessions.issueLogin(actor);
      return { url: `${url}/login/${token}`, expiresAt };
    },
    close() {
      closing ??= (async () => {
        certificate.close();
        follower.close();
        stopUpkeep.abort();
        for (const c of eventClients) c.res.end();
        await Promise.all([
          new Promise<void>((resolve) => {
            srv.close(() => resolve());
            srv.closeAllConnections();
          }),
          upkeepLoop,
        ]);
      })();
      return closing;
    },
  };
}
