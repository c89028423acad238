import { createPrivateKey } from 'node:crypto';
import { isIP } from 'node:net';
import type { PeerCertificate } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import type { Clock } from '../common/clock.js';
import { AgentIdError, unavailable } from '../common/errors.js';
import { fromGrpcStatus } from '../common/grpc-errors.js';
import { loadProto } from '../common/proto.js';
import type { SyncUpdateMessage } from '../nodes/sync-fanout.js';
import type { Secret } from '../common/secret.js';
import { toPem } from '../common/der.js';
import { SpiffeId, TrustDomain } from '../spiffe/spiffe-id.js';
import { Certificate } from '../verify/certificate.js';
import { X509Bundle } from '../verify/bundle.js';
import { isVerificationError } from '../verify/errors.js';
import { verifyX509Svid } from '../verify/x509.js';
import { chainOfPeerCertificate } from '../verify/tls.js';

/* Wire shapes of agentid.node.v1 (proto/agentid/node/v1/node.proto), as proto-loader decodes them (keepCase, longs as numbers). */
export interface WireNodeSvid {
  node: string;
  spiffe_id: string;
  cert_chain: Buffer[];
  expires_at: number;
  trust_bundle: Buffer[];
}
/** A SyncUpdate as the proto declares it (records as JSON): the server's own type. */
export type WireSyncUpdate = SyncUpdateMessage;
export interface WireX509SvidRequest {
  entry_id: string;
  task_agent: string;
  task_id: string;
  public_key: Buffer;
}
export interface WireX509SvidResult {
  cert_chain: Buffer[];
  expires_at: number;
  error_code: string;
  error_message: string;
}
export interface WireForwardedStartTask {
  agent: string;
  id: string;
  pid: number;
  start_time: string;
  descendants: boolean;
  cgroup: string;
  ttl_seconds: number;
  metadata: Record<string, string>;
  caller_uid: number;
}
export interface WireForwardedTaskRef {
  agent: string;
  id: string;
  reason: string;
  caller_uid: number;
}

/** The path every agentid server's SVID carries (spiffe://<td>/agentid/server). */
const SERVER_PATH = '/agentid/server';
const CALL_TIMEOUT_MS = 30_000;

/** What the agent presents as its TLS client certificate: nothing (join token), the host certificate (x509pop) or its node SVID. */
export interface ClientCertificate {
  chainDer: Buffer[];
  keyPkcs8: Secret<Buffer>;
}

export interface NodeClientOptions {
  /** HOST:PORT of the server's agent listener. */
  server: { host: string; port: number };
  /** DER roots the server's chain must lead to. */
  roots: Buffer[];
  /** The server's trust domain once known; before the first attestation any trust domain whose roots verify is learnt. */
  trustDomain: TrustDomain | undefined;
  client: ClientCertificate | undefined;
  clock: Clock;
}

/**
 * One mTLS channel to the server's agent listener. The server must present an SVID with the path
 * /agentid/server that verifies against the roots given (SPIFFE leaf rules, not a DNS name), in the
 * agent's trust domain once it knows it. Credentials are fixed per channel: a renewed node SVID
 * or new roots mean a new NodeClient.
 */
export class NodeClient {
  private readonly client: grpc.Client & Record<string, Function>;
  private refusal: string | undefined;
  /** The server's SPIFFE ID seen at the last handshake (how the agent learns its trust domain). */
  serverId: SpiffeId | undefined;

  constructor(private readonly opts: NodeClientOptions) {
    if (opts.roots.length === 0) throw new AgentIdError('failed_precondition', 'no trust roots to verify the agentid server with (--trust-bundle)');
    const rootsPem = opts.roots.map((d) => toPem(d, 'CERTIFICATE')).join('');
    const checkServerIdentity = (_host: string, cert: PeerCertificate): Error | undefined => {
      try {
        const chain = chainOfPeerCertificate(cert);
        const leafId = new Certificate(chain[0]!).uriSans[0];
        const td = opts.trustDomain ?? (leafId ? SpiffeId.parse(leafId).trustDomain : undefined);
        if (!td) throw new Error('the server certificate carries no SPIFFE ID');
        const verified = verifyX509Svid(chain, X509Bundle.fromDer(td, opts.roots), { now: opts.clock.now() });
        if (verified.spiffeId.path !== SERVER_PATH) throw new Error(`it presented ${verified.spiffeId.toString()}, not an agentid server ID`);
        this.serverId = verified.spiffeId;
        this.refusal = undefined;
        return undefined;
      } catch (err) {
        const reason = isVerificationError(err) ? `${err.reason}: ${err.message}` : (err as Error).message;
        this.refusal = `agentid server at ${opts.server.host}:${opts.server.port} failed verification (${reason})`;
        return new Error(this.refusal);
      }
    };
    const key = opts.client
      ? Buffer.from(createPrivateKey({ key: opts.client.keyPkcs8.reveal(), format: 'der', type: 'pkcs8' }).export({ format: 'pem', type: 'pkcs8' }) as string)
      : null;
    const chain = opts.client ? Buffer.from(opts.client.chainDer.map((d) => toPem(d, 'CERTIFICATE')).join('')) : null;
    const credentials = grpc.credentials.createSsl(Buffer.from(rootsPem), key, chain, { checkServerIdentity });
    const { host, port } = opts.server;
    const proto = loadProto('agentid/node/v1/node.proto') as any;
    const Ctor = proto.agentid.node.v1.AgentIdNode as grpc.ServiceClientConstructor;
    this.client = new Ctor(isIP(host) === 6 ? `ipv6:[${host}]:${port}` : `${host}:${port}`, credentials, {
      // SNI takes no IP address; the name is never checked, the SPIFFE ID is.
      'grpc.ssl_target_name_override': isIP(host) ? 'agentid-server' : host,
      'grpc.use_local_subchannel_pool': 1,
      // Outages are handled by the agent's own backoff; a call fails fast instead of queueing.
      'grpc.initial_reconnect_backoff_ms': 500,
      'grpc.max_reconnect_backoff_ms': 5000,
      'grpc.keepalive_time_ms': 20_000,
      'grpc.keepalive_timeout_ms': 10_000,
    }) as any;
  }

  attest(req: { join_token: string; public_key: Buffer }): Promise<WireNodeSvid> {
    return this.unary('Attest', req);
  }

  renewNodeSvid(req: { public_key: Buffer }): Promise<WireNodeSvid> {
    return this.unary('RenewNodeSvid', req);
  }

  mintX509Svids(requests: WireX509SvidRequest[]): Promise<WireX509SvidResult[]> {
    return this.unary<{ results: WireX509SvidResult[] }>('MintX509Svids', { requests }).then((r) => r.results);
  }

  mintJwtSvid(req: { entry_id: string; task_agent: string; task_id: string; audience: string[] }): Promise<{ token: string; expires_at: number }> {
    return this.unary('MintJwtSvid', req);
  }

  startTask(req: WireForwardedStartTask): Promise<{ task: string }> {
    return this.unary('StartTask', req);
  }

  endTask(req: WireForwardedTaskRef): Promise<{ task: string }> {
    return this.unary('EndTask', req);
  }

  /** The Sync stream; `onError` gets an AgentIdError (the stream is over). */
  sync(afterRevision: number, handlers: { onUpdate(u: WireSyncUpdate): void; onEnd(err: AgentIdError | undefined): void }): () => void {
    const call = this.client.Sync!({ after_revision: afterRevision }) as grpc.ClientReadableStream<WireSyncUpdate>;
    let done = false;
    const end = (err: AgentIdError | undefined) => {
      if (done) return;
      done = true;
      handlers.onEnd(err);
    };
    call.on('data', (u: WireSyncUpdate) => {
      if (!done) handlers.onUpdate(u);
    });
    call.on('error', (err: grpc.ServiceError) => end(this.toError(err)));
    call.on('end', () => end(undefined));
    return () => {
      done = true;
      call.cancel();
    };
  }

  close(): void {
    this.client.close();
  }

  private unary<T>(method: string, request: object): Promise<T> {
    return new Promise((resolve, reject) => {
      this.client[method]!(request, { deadline: this.opts.clock.now() + CALL_TIMEOUT_MS }, (err: grpc.ServiceError | null, res: T) =>
        err ? reject(this.toError(err)) : resolve(res));
    });
  }

  private toError(err: grpc.ServiceError): AgentIdError {
    if (err.code === grpc.status.UNAVAILABLE) {
      if (this.refusal) return new AgentIdError('unauthenticated', this.refusal);
      return unavailable(`agentid server at ${this.opts.server.host}:${this.opts.server.port} unavailable: ${err.details.replace(/\s*Resolution note:\s*$/, '')}`);
    }
    return new AgentIdError(fromGrpcStatus(err.code), err.details);
  }
}
