import { constants as cryptoConstants, createPrivateKey } from 'node:crypto';
import type { AddressInfo, Socket } from 'node:net';
import tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../common/logger.js';
import { toPem } from '../verify/der.js';
import { peerChainDer, type X509SvidSource } from '../verify/tls.js';

/*
 * A gRPC server behind a TLS listener we own (see tcp.ts for why grpc-js's own TLS does not
 * fit): node:tls terminates TLS with agentid's current SVID (swapped via setSecureContext on every
 * source 'update'), asks for a client certificate without letting OpenSSL judge it, and hands the
 * presented chain to `admit` on 'secureConnection'. A socket admit refuses is destroyed before any
 * gRPC byte is read; an admitted one is injected into grpc-js over an insecure (already TLS)
 * transport, and what admit returned is kept for its calls, found by call.getPeer() (grpc-js
 * builds it as "<remoteAddress>:<remotePort>": unique per open TCP connection on one listener).
 * Used by the mTLS admin listener and by the agent listener for per-host agents.
 */

export interface TlsGrpcOptions<C> {
  listen: { host: string; port: number };
  /** agentid's own SVID: the served chain and key, and an 'update' event after renewal. */
  source: X509SvidSource;
  /** Adds the services; the given function finds a call's admitted connection. */
  register(server: grpc.Server, connectionOf: (call: { getPeer(): string }) => C | undefined): void;
  /** Judges a fresh connection by its client chain (maybe empty): what to keep for its calls, or undefined to refuse it. */
  /** `address`: the peer's IP address as the socket reports it (undefined once the socket is gone). */
  admit(chain: Buffer[], peer: string, address: string | undefined): C | undefined;
  /** For log lines: "admin mTLS", "agent listener". */
  name: string;
  logger: Logger;
}

export interface TlsGrpcListener<C> {
  readonly port: number;
  /** Admitted connections that are still open (for eviction: ending a node's streams). */
  connections(): C[];
  close(): Promise<void>;
}

function contextOptions(source: X509SvidSource, name: string): tls.SecureContextOptions {
  const svid = source.getX509Svid();
  if (svid.chainDer.length === 0) throw new Error(`${name}: the server SVID source has no certificate chain`);
  return {
    minVersion: 'TLSv1.2',
    cert: svid.chainDer.map((d) => toPem(d, 'CERTIFICATE')).join(''),
    // PEM because secure contexts take no DER keys; the string lives only inside the context.
    key: createPrivateKey({ key: svid.keyPkcs8Der.reveal(), format: 'der', type: 'pkcs8' }).export({ format: 'pem', type: 'pkcs8' }).toString(),
  };
}

/** Starts the listener; resolves once it is bound. */
export async function startTlsGrpcListener<C>(opts: TlsGrpcOptions<C>): Promise<TlsGrpcListener<C>> {
  const { source, name, logger } = opts;
  const admitted = new Map<string, { socket: tls.TLSSocket; value: C }>();
  const connectionOf = (call: { getPeer(): string }): C | undefined => {
    const conn = admitted.get(call.getPeer());
    return conn && !conn.socket.destroyed ? conn.value : undefined;
  };

  const grpcServer = new grpc.Server();
  opts.register(grpcServer, connectionOf);
  const injector = grpcServer.createConnectionInjector(grpc.ServerCredentials.createInsecure());

  const server = tls.createServer({
    ...contextOptions(source, name),
    requestCert: true,
    // OpenSSL knows neither SPIFFE rules nor our CRLs; `admit` judges the chain on 'secureConnection'.
    rejectUnauthorized: false,
    ALPNProtocols: ['h2'],
    // An unauthenticated peer holds a socket only this long.
    handshakeTimeout: 10_000,
    // No session resumption: every connection does a full handshake and presents its chain.
    secureOptions: cryptoConstants.SSL_OP_NO_TICKET,
  });

  // The chain the context was built from. The source says 'update' on every trust change too (each
  // revocation re-signs the CRLs); only a new SVID needs a new context (a key decoded, a context built).
  let served = source.getX509Svid().chainDer;
  const onUpdate = () => {
    const chain = source.getX509Svid().chainDer;
    if (chain.length === served.length && chain.every((d, i) => d.equals(served[i]!))) return;
    try {
      server.setSecureContext(contextOptions(source, name));
      served = chain;
    } catch (err) {
      // Keep serving the previous certificate; it stays valid until its notAfter.
      logger.error({ err: (err as Error).message }, `${name}: cannot load the renewed server SVID`);
    }
  };
  source.on('update', onUpdate);

  const rawSockets = new Set<Socket>();
  server.on('connection', (socket: Socket) => {
    rawSockets.add(socket);
    socket.once('close', () => rawSockets.delete(socket));
  });
  server.on('tlsClientError', (err, socket) => {
    logger.warn({ peer: `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`, reason: 'tls_handshake', err: err.message }, `${name}: handshake failed`);
  });
  server.on('secureConnection', (socket: tls.TLSSocket) => {
    // The key format grpc-js's getPeer() produces for this socket.
    const key = socket.remotePort ? `${socket.remoteAddress}:${socket.remotePort}` : String(socket.remoteAddress);
    const value = opts.admit(peerChainDer(socket), key, socket.remoteAddress);
    if (value === undefined) {
      // No error argument: nothing listens for 'error' on a server socket after the handshake.
      socket.destroy();
      return;
    }
    admitted.set(key, { socket, value });
    socket.once('close', () => {
      if (admitted.get(key)?.socket === socket) admitted.delete(key);
    });
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
  server.on('error', (err) => logger.error({ err: err.message }, `${name}: listener error`));
  const port = (server.address() as AddressInfo).port;
  logger.info({ host: opts.listen.host, port }, `${name} listener started`);

  let closing: Promise<void> | undefined;
  return {
    port,
    connections: () => [...admitted.values()].filter((c) => !c.socket.destroyed).map((c) => c.value),
    close() {
      closing ??= new Promise<void>((resolve) => {
        source.off('update', onUpdate);
        server.close(() => resolve());
        for (const s of rawSockets) s.destroy();
        injector.destroy();
        grpcServer.forceShutdown();
        admitted.clear();
      });
      return closing;
    },
  };
}
