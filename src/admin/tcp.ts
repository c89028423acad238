import type * as grpc from '@grpc/grpc-js';
import type { Clock } from '../common/clock.js';
import type { Logger } from '../common/logger.js';
import { loadProto } from '../common/proto.js';
import type { TrustDomain } from '../spiffe/spiffe-id.js';
import { refuse, VerificationError } from '../verify/errors.js';
import type { X509SvidSource } from '../verify/tls.js';
import { clientSvidVerifier } from './client-verify.js';
import { startTlsGrpcListener } from './tls-grpc.js';
import type { SpiffeRole } from './roles.js';
import type { AdminCaller, CallerOf } from './service.js';

/*
 * Design. grpc-js's own TLS (ServerCredentials.createSsl) cannot serve this listener correctly:
 * its certificate and roots are fixed when the port is bound (agentid's SVID renews at half-life,
 * the bundle changes on CA rotation), it verifies client chains with OpenSSL only (no SPIFFE rules,
 * no CRLs), and getAuthContext() hands over the leaf alone. So this module owns the TCP listener:
 * node:tls terminates TLS with the current SVID (swapped via setSecureContext on every source
 * 'update'), asks for a client certificate without letting OpenSSL judge it, and verifies the
 * presented chain with verify/ (SPIFFE leaf rules, our trust domain's bundle, CRLs) on
 * 'secureConnection'. A refused socket is destroyed before any gRPC byte is read; a verified one
 * is handed to grpc-js through createConnectionInjector over an insecure (already TLS) transport.
 *
 * Calls find their connection by call.getPeer(), which grpc-js builds as "<remoteAddress>:<remotePort>":
 * unique per open TCP connection on one listener. Every call verifies the stored chain again against
 * the bundle and CRLs of that moment before mapping the SPIFFE ID to a role, so an SVID revoked or
 * expired while its connection stays open authorizes nothing more.
 */

export interface AdminTcpOptions {
  listen: { host: string; port: number };
  /**
   * agentid's own SVID (ServerSvidSource): the served certificate chain and key, our trust
   * domain's bundle, and an 'update' event after renewal or a trust change.
   */
  source: X509SvidSource;
  trustDomain: TrustDomain;
  roles: readonly SpiffeRole[];
  /** Builds the admin service with this listener's caller function, e.g. adminHandlers({ ...deps, callerOf }). */
  handlers: (callerOf: CallerOf) => grpc.UntypedServiceImplementation;
  /**
   * Current DER CRLs of our signing CAs, read on every handshake and every call (cheap when the
   * provider caches, as TrustState does). Default: source.getCrls().
   */
  crls?: () => readonly Buffer[];
  clock: Clock;
  logger: Logger;
}

export interface AdminTcpListener {
  /** The bound port (useful with port 0). */
  readonly port: number;
  close(): Promise<void>;
}

interface Connection {
  chain: Buffer[];
  spiffeId: string;
}

let adminService: grpc.ServiceDefinition | undefined;
function adminServiceDefinition(): grpc.ServiceDefinition {
  return (adminService ??= (loadProto('agentid/admin/v1/admin.proto') as any).agentid.admin.v1.AgentIdAdmin.service);
}

/** Starts the mTLS admin listener; resolves once it is bound. */
export async function startAdminTcpListener(opts: AdminTcpOptions): Promise<AdminTcpListener> {
  const { source, trustDomain, roles, clock } = opts;
  const logger = opts.logger.child({ api: 'admin-tcp' });
  const verifier = clientSvidVerifier({ source, trustDomain, roles, crls: opts.crls, clock });

  const listener = await startTlsGrpcListener<Connection>({
    listen: opts.listen,
    source,
    name: 'admin mTLS',
    logger,
    admit(chain, peer) {
      try {
        if (chain.length === 0) throw refuse('malformed', 'admin mTLS: the client presented no certificate');
        const spiffeId = verifier.verify(chain).spiffeId.toString();
        logger.debug({ peer, spiffeId }, 'admin mTLS: client verified');
        return { chain, spiffeId };
      } catch (err) {
        const reason = err instanceof VerificationError ? err.reason : 'internal';
        logger.warn({ peer, reason, err: (err as Error).message }, 'admin mTLS: client refused');
        return undefined;
      }
    },
    register(server, connectionOf) {
      const callerOf: CallerOf = (call): AdminCaller => {
        const conn = connectionOf(call);
        if (!conn) return { who: 'unknown', reason: 'connection has no verified client SVID' };
        return verifier.callerForChain(conn.chain, conn.spiffeId);
      };
      server.addService(adminServiceDefinition(), opts.handlers(callerOf));
    },
  });
  return { port: listener.port, close: () => listener.close() };
}
