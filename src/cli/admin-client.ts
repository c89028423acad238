import { createPrivateKey } from 'node:crypto';
import { isIP } from 'node:net';
import type { PeerCertificate } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { WorkloadApiClient } from '../client/workload-client.js';
import type { X509Svid } from '../client/types.js';
import type { Clock } from '../common/clock.js';
import { AgentIdError, failedPrecondition, invalidArgument, notFound } from '../common/errors.js';
import { fromGrpcStatus } from '../common/grpc-errors.js';
import { loadProto } from '../common/proto.js';
import { systemClock } from '../common/system-clock.js';
import { SpiffeId } from '../spiffe/spiffe-id.js';
import { BundleSet, X509Bundle } from '../verify/bundle.js';
import { toPem } from '../verify/der.js';
import { isVerificationError } from '../verify/errors.js';
import { RevocationChecker } from '../verify/revocation.js';
import { verifyX509Svid } from '../verify/x509.js';
import { chainOfPeerCertificate } from '../verify/tls.js';
import { remote } from './output.js';

export const ADMIN_SOCKET_ENV = 'AGENTID_ADMIN_SOCKET';
export const ADMIN_URL_ENV = 'AGENTID_ADMIN_URL';
/** Path of the SPIFFE ID agentid's server SVID carries in every trust domain. */
export const ADMIN_SERVER_PATH = '/agentid/server';

const CALL_TIMEOUT_MS = 30_000;

/** Reaching the admin API over mTLS with the caller's own X.509-SVID. */
export interface AdminMtlsOptions {
  /** https://HOST:PORT of the server's admin.tcp listener. */
  url: string;
  /** The caller's SVID: chain and key to present, and its own trust domain's bundle to verify the server with. */
  svid: X509Svid;
  /** DER CRLs delivered with the SVID; a revoked server certificate is refused. */
  crls?: readonly Buffer[];
  /** SPIFFE ID the server must present (default spiffe://<caller's trust domain>/agentid/server). */
  serverId?: string;
  /** Time for certificate validity checks (default: the system clock). */
  clock?: Clock;
}

/** HOST (IPv6 without brackets) and PORT (default 443) of an admin URL: https://HOST:PORT, optionally with a trailing "/". */
export function parseAdminUrl(text: string): { host: string; port: number } {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    throw invalidArgument(`admin URL "${text}" is not a URL (expected https://HOST:PORT)`);
  }
  if (url.protocol !== 'https:') throw invalidArgument(`admin URL "${text}" must use https:// (the admin API is served over mTLS only)`);
  if (url.username || url.password) throw invalidArgument(`admin URL "${text}" must not carry credentials`);
  if ((url.pathname !== '/' && url.pathname !== '') || url.search || url.hash) {
    throw invalidArgument(`admin URL "${text}" must have no path, query or fragment (expected https://HOST:PORT)`);
  }
  // URL reports the default port as "", for https://h and https://h:443 alike.
  return { host: url.hostname.replace(/^\[(.*)\]$/, '$1'), port: url.port ? Number(url.port) : 443 };
}

interface Transport {
  target: string;
  credentials: grpc.ChannelCredentials;
  options: grpc.ChannelOptions;
  /** Why the connection failed, in words, for UNAVAILABLE. */
  unavailable(details: string): AgentIdError;
}

function unixTransport(socketPath: string): Transport {
  if (!socketPath.startsWith('/')) throw invalidArgument(`admin socket "${socketPath}" must be an absolute path`);
  return {
    target: `unix://${socketPath}`,
    credentials: grpc.credentials.createInsecure(),
    options: {},
    unavailable: (details) => {
      // grpc-js wraps the socket error in its own words; only the errno says what happened.
      const errno = /\b(E[A-Z]+)\b/.exec(details)?.[1];
      return new AgentIdError(
        'unavailable',
        `cannot reach the admin API at ${socketPath}${errno ? ` (${errno})` : ''}: is the server running with this data directory? ` +
          'Start it with `agentid server --data-dir DIR`, or point this command at it with --data-dir DIR or --admin-socket PATH',
      );
    },
  };
}

function mtlsTransport(opts: AdminMtlsOptions): Transport {
  const { host, port } = parseAdminUrl(opts.url);
  const clock = opts.clock ?? systemClock;
  const callerId = SpiffeId.parse(opts.svid.spiffeId);
  const td = callerId.trustDomain;
  let serverId: SpiffeId;
  try {
    serverId = opts.serverId === undefined ? SpiffeId.fromSegments(td, ...ADMIN_SERVER_PATH.slice(1).split('/')) : SpiffeId.parse(opts.serverId);
  } catch (err) {
    throw invalidArgument(`admin server ID "${opts.serverId}" is not a valid SPIFFE ID`, err);
  }
  // The server is verified with the caller's own bundle only, so it can only ever be of that trust domain.
  if (serverId.trustDomain.name !== td.name) {
    throw invalidArgument(`admin server ID ${serverId.toString()} is not in the caller's trust domain ${td.name}`);
  }
  if (opts.svid.bundleDer.length === 0) throw failedPrecondition(`the SVID for ${callerId.toString()} came without a ${td.name} bundle to verify the admin server with`);
  const bundles = new BundleSet([X509Bundle.fromDer(td, opts.svid.bundleDer)]);
  const crls = opts.crls && opts.crls.length > 0 ? new RevocationChecker({ crls: opts.crls }) : undefined;
  const expected = serverId.toString();

  // The last refusal by checkServerIdentity; grpc-js reports it only as an UNAVAILABLE connection.
  let refusal: string | undefined;
  const checkServerIdentity = (_host: string, cert: PeerCertificate): Error | undefined => {
    // OpenSSL has already checked the chain against the bundle (rootCerts); this adds the SPIFFE
    // rules, CRLs and the server's identity, in place of a DNS name check the server SVID cannot pass.
    try {
      const verified = verifyX509Svid(chainOfPeerCertificate(cert), bundles, { now: clock.now(), ...(crls ? { crls } : {}) });
      const got = verified.spiffeId.toString();
      if (got !== expected) {
        refusal = `admin server at ${opts.url} presented SPIFFE ID ${got}, expected ${expected} (--admin-server-id)`;
        return new Error(refusal);
      }
      refusal = undefined;
      return undefined;
    } catch (err) {
      const reason = isVerificationError(err) ? `${err.reason}: ${err.message}` : (err as Error).message;
      refusal = `admin server at ${opts.url} failed SPIFFE verification (${reason})`;
      return new Error(refusal);
    }
  };

  const chainPem = opts.svid.chainDer.map((d) => toPem(d, 'CERTIFICATE')).join('');
  // PEM because grpc-js takes no DER key; the buffer goes straight into the TLS context, never to output.
  const keyPem = createPrivateKey({ key: opts.svid.keyPkcs8Der.reveal(), format: 'der', type: 'pkcs8' }).export({ format: 'pem', type: 'pkcs8' }) as string;
  const credentials = grpc.credentials.createSsl(Buffer.from(bundles.getX509Bundle(td)!.toPem()), Buffer.from(keyPem), Buffer.from(chainPem), { checkServerIdentity });

  return {
    target: isIP(host) === 6 ? `ipv6:[${host}]:${port}` : `${host}:${port}`,
    credentials,
    options: {
      // SNI takes no IP address (RFC 6066); the name is never checked, the SPIFFE ID above is.
      'grpc.ssl_target_name_override': isIP(host) ? 'agentid-server' : host,
      'grpc.use_local_subchannel_pool': 1,
    },
    unavailable: (details) =>
      refusal
        ? new AgentIdError('unauthenticated', refusal)
        : new AgentIdError(
            'unavailable',
            // grpc-js appends an empty "Resolution note:" to connection errors.
            `admin API at ${opts.url} unavailable (is admin.tcp enabled, and does the server accept ${callerId.toString()}?): ${details.replace(/\s*Resolution note:\s*$/, '')}`,
          ),
  };
}

/**
 * The caller's X.509-SVID from the Workload API at `socketPath`: the one named `spiffeId`, else
 * the default (first) one, with the CRLs delivered alongside.
 */
export async function fetchCallerSvid(opts: { socketPath: string; spiffeId?: string }): Promise<{ svid: X509Svid; crls: Buffer[] }> {
  const client = new WorkloadApiClient({ socketPath: opts.socketPath });
  let ctx;
  try {
    ctx = await client.fetchX509Context({ signal: AbortSignal.timeout(CALL_TIMEOUT_MS) });
  } catch (err) {
    const e = err instanceof AgentIdError ? err : new AgentIdError('unavailable', (err as Error).message);
    throw new AgentIdError(e.code, `cannot fetch this process's X.509-SVID for the admin mTLS connection: ${e.message}`);
  } finally {
    client.close();
  }
  const svid = opts.spiffeId === undefined ? ctx.svids[0] : ctx.svids.find((s) => s.spiffeId === opts.spiffeId);
  if (!svid) {
    const held = ctx.svids.map((s) => s.spiffeId).join(', ') || 'none';
    throw notFound(`this process holds no X.509-SVID for ${opts.spiffeId ?? 'any SPIFFE ID'} (it holds: ${held})`);
  }
  return { svid, crls: ctx.crls };
}

/**
 * A thin admin API client, over the Unix socket (a path) or over mTLS (AdminMtlsOptions): one
 * `call` per RPC, errors as AgentIdError with the server's message.
 */
export class AdminClient {
  private readonly client: grpc.Client & Record<string, Function>;
  private readonly transport: Transport;

  constructor(endpoint: string | AdminMtlsOptions) {
    this.transport = typeof endpoint === 'string' ? unixTransport(endpoint) : mtlsTransport(endpoint);
    const proto = loadProto('agentid/admin/v1/admin.proto') as any;
    const Ctor = proto.agentid.admin.v1.AgentIdAdmin as grpc.ServiceClientConstructor;
    this.client = new Ctor(this.transport.target, this.transport.credentials, this.transport.options) as any;
  }

  call<T = any>(method: string, request: object): Promise<T> {
    return new Promise((resolve, reject) => {
      this.client[method]!(request, { deadline: systemClock.now() + CALL_TIMEOUT_MS }, (err: grpc.ServiceError | null, res: T) => {
        if (!err) return resolve(res);
        // What the server refused is not a usage error of this command: exit 1, not 2.
        // UNAVAILABLE is either no connection at all (explained with a hint) or an answer from the
        // other side (an agent whose server is unreachable), whose own message is kept.
        const unreachable = err.code === grpc.status.UNAVAILABLE && /No connection established|\bE[A-Z]{3,}\b/.test(err.details);
        reject(remote(unreachable ? this.transport.unavailable(err.details) : new AgentIdError(fromGrpcStatus(err.code), err.details)));
      });
    });
  }

  close(): void {
    this.client.close();
  }
}
