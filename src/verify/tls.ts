import { createPrivateKey } from 'node:crypto';
import https from 'node:https';
import tls from 'node:tls';
import type { Clock } from '../common/clock.js';
import { failedPrecondition } from '../common/errors.js';
import type { Secret } from '../common/secret.js';
import { systemClock } from '../common/system-clock.js';
import type { Authorizer } from './authorize.js';
import { BundleSet } from './bundle.js';
import { toPem } from './der.js';
import { refuse, VerificationError } from './errors.js';
import { RevocationChecker } from './revocation.js';
import { verifyX509Svid, type VerifiedX509Svid } from './x509.js';

/**
 * What the TLS helpers need from a live identity. The client library's X509Source satisfies
 * it as is: the SVID (DER chain leaf first, PKCS#8 key), the bundles keyed "spiffe://<td>",
 * the CRLs, and an 'update' event whenever any of them changes.
 */
export interface X509SvidSource {
  getX509Svid(): { readonly chainDer: readonly Buffer[]; readonly keyPkcs8Der: Secret<Buffer> };
  getBundles(): ReadonlyMap<string, readonly Buffer[]> | BundleSet;
  getCrls?(): readonly Buffer[];
  on(event: 'update', listener: () => void): unknown;
  off(event: 'update', listener: () => void): unknown;
}

export interface SpiffeTlsConfig {
  source: X509SvidSource;
  /** Decides which authenticated peers may proceed. */
  authorize: Authorizer;
  /** Time for certificate validity checks (default: the system clock). */
  clock?: Clock;
  /** Refusals are logged here (peer address, reason, SPIFFE ID when known); a pino logger fits. */
  logger?: { warn(fields: object, message: string): void };
}

/** The peer chain each verified socket presented at its handshake. */
const handshakeChains = new WeakMap<tls.TLSSocket, Buffer[]>();

/** What a connection's peer proved, kept per socket for request handlers. */
// A symbol property rather than a WeakMap: http2 hands request handlers a Proxy of the socket, which
// forwards property reads to the real socket but is not the same object as a map key.
const PEER_IDENTITY = Symbol('agentid.peerIdentity');

/** The verified peer identity of a socket that passed SPIFFE verification, else undefined. */
export function peerIdentity(socket: unknown): VerifiedX509Svid | undefined {
  if (typeof socket !== 'object' || socket === null) return undefined;
  return (socket as { [PEER_IDENTITY]?: VerifiedX509Svid })[PEER_IDENTITY];
}

const MAX_PEER_CHAIN = 10;

/**
 * The peer's certificate chain as sent, leaf first. Node exposes it only through
 * getPeerCertificate(true)'s issuerCertificate links, which end in a self-reference.
 */
export function peerChainDer(socket: tls.TLSSocket): Buffer[] {
  return chainOfPeerCertificate(socket.getPeerCertificate(true));
}

/** The same, from the detailed certificate a client's checkServerIdentity callback receives. */
export function chainOfPeerCertificate(peer: tls.PeerCertificate | undefined): Buffer[] {
  const out: Buffer[] = [];
  let cert = peer as tls.DetailedPeerCertificate | undefined;
  while (cert && cert.raw && out.length < MAX_PEER_CHAIN) {
    if (out.some((c) => c.equals(cert!.raw))) break;
    out.push(cert.raw);
    cert = cert.issuerCertificate;
  }
  return out;
}

interface Material {
  bundles: BundleSet;
  crls: RevocationChecker;
  certPem: string;
  keyPem: string;
  context: tls.SecureContext;
}

const BASE_OPTIONS = { minVersion: 'TLSv1.2' } as const;

/**
 * Shared state of the server and client helpers: the current certificate, key, bundles and
 * CRLs, rebuilt lazily after each 'update' of the source so every new handshake uses the latest.
 */
class SpiffeTlsState {
  private material: Material | undefined;
  private readonly listeners = new Set<() => void>();
  private readonly onUpdate = () => {
    this.material = undefined;
    for (const l of this.listeners) l();
  };
  readonly clock: Clock;

  constructor(readonly config: SpiffeTlsConfig) {
    this.clock = config.clock ?? systemClock;
    config.source.on('update', this.onUpdate);
  }

  current(): Material {
    if (this.material) return this.material;
    const { source } = this.config;
    const svid = source.getX509Svid();
    if (svid.chainDer.length === 0) throw failedPrecondition('SPIFFE TLS: the source has no certificate chain');
    const raw = source.getBundles();
    const bundles = raw instanceof BundleSet ? raw : BundleSet.fromX509Map(raw);
    const crls = new RevocationChecker({ crls: source.getCrls?.() ?? [] });
    const certPem = svid.chainDer.map((d) => toPem(d, 'CERTIFICATE')).join('');
    // PEM because tls.createSecureContext takes no DER keys; the string lives only in this object.
    const keyPem = createPrivateKey({ key: svid.keyPkcs8Der.reveal(), format: 'der', type: 'pkcs8' })
      .export({ format: 'pem', type: 'pkcs8' })
      .toString();
    const context = tls.createSecureContext({ ...BASE_OPTIONS, cert: certPem, key: keyPem });
    this.material = { bundles, crls, certPem, keyPem, context };
    return this.material;
  }

  onChange(listener: () => void): void {
    this.listeners.add(listener);
  }

  /** Verifies and authorizes the peer of a finished handshake. Throws VerificationError. */
  verify(socket: tls.TLSSocket, authorize: Authorizer): VerifiedX509Svid {
    // A re-check of an open connection uses the chain seen at its handshake: a closing socket
    // may no longer report its peer certificate.
    const chain = handshakeChains.get(socket) ?? peerChainDer(socket);
    if (chain.length === 0) throw refuse('malformed', 'SPIFFE TLS: the peer presented no certificate');
    const m = this.current();
    const result = verifyX509Svid(chain, m.bundles, { now: this.clock.now(), crls: m.crls });
    const decision = authorize(result.spiffeId);
    if (!decision.ok) throw refuse('unauthorized', `SPIFFE TLS: peer ${result.spiffeId} is not authorized: ${decision.reason}`);
    Object.defineProperty(socket, PEER_IDENTITY, { value: result, configurable: true, enumerable: false });
    handshakeChains.set(socket, chain);
    return result;
  }

  /** Runs `verify`; on failure logs and destroys the socket, before any application byte is read or written. */
  guard(socket: tls.TLSSocket, authorize: Authorizer, side: 'server' | 'client'): void {
    try {
      this.verify(socket, authorize);
    } catch (err) {
      const reason = err instanceof VerificationError ? err.reason : 'internal';
      this.config.logger?.warn(
        { side, peer: `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`, reason, err: (err as Error).message },
        'SPIFFE TLS: peer refused',
      );
      socket.destroy(err instanceof Error ? err : new Error(String(err)));
    }
  }

  close(): void {
    this.config.source.off('update', this.onUpdate);
    this.listeners.clear();
  }
}

export interface SpiffeServerTls {
  /** Options for tls.createServer, https.createServer or http2.createSecureServer. */
  readonly options: tls.TlsOptions;
  /**
   * Verifies every client on 'secureConnection' (prepended, so it runs before the HTTP layer
   * sees the socket); on each source update swaps in the new certificate and re-checks every open
   * connection, closing those now refused (revoked, expired). Returns the server.
   */
  attach<S extends tls.Server>(server: S): S;
  /** Verifies one already-handshaken socket (custom servers); throws VerificationError. */
  verifyPeer(socket: tls.TLSSocket): VerifiedX509Svid;
  /** Stops following the source. */
  close(): void;
}

/**
 * mTLS server side. Node's TLS layer requests the client certificate but does not judge it
 * (rejectUnauthorized: false); SPIFFE verification, revocation and authorization run in
 * `attach`'s 'secureConnection' hook on every handshake against the latest bundles and CRLs.
 * Without `attach` the options alone accept any client: always call it.
 */
export function serverTlsOptions(config: SpiffeTlsConfig): SpiffeServerTls {
  const state = new SpiffeTlsState(config);
  const contextOptions = (): tls.SecureContextOptions => {
    const m = state.current();
    return { ...BASE_OPTIONS, cert: m.certPem, key: m.keyPem };
  };
  return {
    options: { ...contextOptions(), requestCert: true, rejectUnauthorized: false },
    attach<S extends tls.Server>(server: S): S {
      // Open connections are re-checked on every update (new CRLs, bundles): a keep-alive or HTTP/2
      // connection of a peer revoked after its handshake is closed, not served until it hangs up.
      const live = new Set<tls.TLSSocket>();
      server.prependListener('secureConnection', (socket: tls.TLSSocket) => {
        state.guard(socket, config.authorize, 'server');
        if (socket.destroyed) return;
        live.add(socket);
        socket.once('close', () => live.delete(socket));
      });
      state.onChange(() => {
        server.setSecureContext(contextOptions());
        for (const socket of live) state.guard(socket, config.authorize, 'server');
      });
      return server;
    },
    verifyPeer: (socket) => state.verify(socket, config.authorize),
    close: () => state.close(),
  };
}

export interface SpiffeClientTls {
  /**
   * tls.connect with the current SVID; the server is verified and authorized on 'secureConnect'
   * (prepended, before any queued write leaves) and the socket destroyed with the reason on failure.
   */
  connect(options: tls.ConnectionOptions & { authorize?: Authorizer }): tls.TLSSocket;
  /** An https.Agent whose every new connection goes through `connect`. */
  agent(options?: https.AgentOptions & { authorize?: Authorizer }): https.Agent;
  /** Verifies one already-handshaken socket; throws VerificationError. */
  verifyPeer(socket: tls.TLSSocket, authorize?: Authorizer): VerifiedX509Svid;
  close(): void;
}

/**
 * mTLS client side. Node only calls checkServerIdentity after OpenSSL's own chain check
 * succeeds, so verification runs in a 'secureConnect' hook instead; Node holds application
 * writes until that event's listeners have run, so nothing reaches an unverified server.
 * TLS session reuse is disabled: a resumed session carries no certificate chain to verify.
 */
export function clientTlsOptions(config: SpiffeTlsConfig): SpiffeClientTls {
  const state = new SpiffeTlsState(config);
  const connect = (options: tls.ConnectionOptions & { authorize?: Authorizer }): tls.TLSSocket => {
    const { authorize = config.authorize, ...rest } = options;
    const socket = tls.connect({
      ...rest,
      secureContext: state.current().context,
      rejectUnauthorized: false,
      // The SPIFFE ID is the server's name, not a DNS name; the hook below checks it.
      checkServerIdentity: () => undefined,
      session: undefined,
    });
    socket.prependOnceListener('secureConnect', () => state.guard(socket, authorize, 'client'));
    return socket;
  };
  return {
    connect,
    agent(options = {}) {
      const { authorize, ...agentOptions } = options;
      class SpiffeAgent extends https.Agent {
        override createConnection(opts: https.RequestOptions): tls.TLSSocket {
          return connect({ ...(opts as tls.ConnectionOptions), authorize: authorize ?? config.authorize });
        }
      }
      return new SpiffeAgent({ ...agentOptions, maxCachedSessions: 0 });
    },
    verifyPeer: (socket, authorize = config.authorize) => state.verify(socket, authorize),
    close: () => state.close(),
  };
}
