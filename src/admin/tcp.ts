import { constants as cryptoConstants, createPrivateKey } from 'node:crypto';
import type { AddressInfo, Socket } from 'node:net';
import tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import type { Clock } from '../common/clock.js';
import type { Logger } from '../common/logger.js';
import { loadProto } from '../common/proto.js';
import type { TrustDomain } from '../spiffe/spiffe-id.js';
import { toPem } from '../verify/der.js';
import { refuse, VerificationError } from '../verify/errors.js';
import { peerChainDer, type X509SvidSource } from '../verify/tls.js';
import type { VerifiedX509Svid } from '../verify/x509.js';
import { clientSvidVerifier } from './client-verify.js';
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
  socket: tls.TLSSocket;
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
  const verifyChain = (chain: Buffer[]): VerifiedX509Svid => verifier.verify(chain);

  const contextOptions = (): tls.SecureContextOptions => {
    const svid = source.getX509Svid();
    if (svid.chainDer.length === 0) throw new Error('admin mTLS: the server SVID source has no certificate chain');
    return {
      minVersion: 'TLSv1.2',
      cert: svid.chainDer.map((d) => toPem(d, 'CERTIFICATE')).join(''),
      // PEM because secure contexts take no DER keys; the string lives only inside the context.
      key: createPrivateKey({ key: svid.keyPkcs8Der.reveal(), format: 'der', type: 'pkcs8' }).export({ format: 'pem', type: 'pkcs8' }).toString(),
    };
  };

  const connections = new Map<string, Connection>();
  const callerOf: CallerOf = (call): AdminCaller => {
    const conn = connections.get(call.getPeer());
    if (!conn || conn.socket.destroyed) return { who: 'unknown', reason: 'connection has no verified client SVID' };
    return verifier.callerForChain(conn.chain, conn.spiffeId);
  };

  const grpcServer = new grpc.Server();
  grpcServer.addService(adminServiceDefinition(), opts.handlers(callerOf));
  const injector = grpcServer.createConnectionInjector(grpc.ServerCredentials.createInsecure());

  const server = tls.createServer({
    ...contextOptions(),
    requestCert: true,
    // OpenSSL knows neither SPIFFE rules nor our CRLs; verify/ judges the chain on 'secureConnection'.
    rejectUnauthorized: false,
    ALPNProtocols: ['h2'],
    // An unauthenticated peer holds a socket only this long.
    handshakeTimeout: 10_000,
    // No session resumption: every connection does a full handshake and presents its chain.
    secureOptions: cryptoConstants.SSL_OP_NO_TICKET,
  });

  const onUpdate = () => {
    try {
      server.setSecureContext(contextOptions());
    } catch (err) {
      // Keep serving the previous certificate; it stays valid until its notAfter.
      logger.error({ err: (err as Error).message }, 'admin mTLS: cannot load the renewed server SVID');
    }
  };
  source.on('update', onUpdate);

  const rawSockets = new Set<Socket>();
  server.on('connection', (socket: Socket) => {
    rawSockets.add(socket);
    socket.once('close', () => rawSockets.delete(socket));
  });
  server.on('tlsClientError', (err, socket) => {
    logger.warn({ peer: `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`, reason: 'tls_handshake', err: err.message }, 'admin mTLS: handshake failed');
  });
  server.on('secureConnection', (socket: tls.TLSSocket) => {
    const peer = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
    let spiffeId: string;
    const chain = peerChainDer(socket);
    try {
      if (chain.length === 0) throw refuse('malformed', 'admin mTLS: the client presented no certificate');
      spiffeId = verifyChain(chain).spiffeId.toString();
    } catch (err) {
      const reason = err instanceof VerificationError ? err.reason : 'internal';
      logger.warn({ peer, reason, err: (err as Error).message }, 'admin mTLS: client refused');
      // No error argument: nothing listens for 'error' on a server socket after the handshake.
      socket.destroy();
      return;
    }
    // The key format grpc-js's getPeer() produces for this socket.
    const key = socket.remotePort ? `${socket.remoteAddress}:${socket.remotePort}` : String(socket.remoteAddress);
    connections.set(key, { socket, chain, spiffeId });
    socket.once('close', () => {
      if (connections.get(key)?.socket === socket) connections.delete(key);
    });
    logger.debug({ peer, spiffeId }, 'admin mTLS: client verified');
    injector.injectConnection(socket);
  });

  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    server.listen(opts.listen.port, opts.listen.host, () => {
      server.off('error', onError);
      resolve();
    });
  }).catch((err) => {
    source.off('update', onUpdate);
    injector.destroy();
    grpcServer.forceShutdown();
    throw err;
  });
  server.on('error', (err) => logger.error({ err: err.message }, 'admin mTLS: listener error'));
  const port = (server.address() as AddressInfo).port;
  logger.info({ host: opts.listen.host, port }, 'admin mTLS listener started');

  let closing: Promise<void> | undefined;
  return {
    port,
    close() {
      closing ??= new Promise<void>((resolve) => {
        source.off('update', onUpdate);
        server.close(() => resolve());
        for (const s of rawSockets) s.destroy();
        injector.destroy();
        grpcServer.forceShutdown();
        connections.clear();
      });
      return closing;
    },
  };
}

