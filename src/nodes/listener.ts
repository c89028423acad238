import * as grpc from '@grpc/grpc-js';
import type { Clock } from '../common/clock.js';
import { invalidArgument, permissionDenied, resourceExhausted } from '../common/errors.js';
import { toGrpcError } from '../common/grpc-errors.js';
import type { Logger } from '../common/logger.js';
import { loadProto } from '../common/proto.js';
import type { Datastore } from '../datastore/types.js';
import type { ReadModel, StateChange } from '../state/read-model.js';
import { parseNodeSpiffeId, type SpiffeId, type TrustDomain } from '../spiffe/spiffe-id.js';
import type { X509SvidSource } from '../verify/tls.js';
import { clientSvidVerifier } from '../admin/client-verify.js';
import { startTlsGrpcListener } from '../admin/tls-grpc.js';
import { AttestRateLimiter, type AttestRefusals } from './attest-limiter.js';
import { snapshotForNode } from './authorize.js';
import type { IssuedNodeSvid, NodeService } from './service.js';
import { SyncFanout, updateMessage, type FanoutStream, type SyncUpdateMessage } from './sync-fanout.js';

/*
 * The agent listener: agentid.node.v1.AgentIdNode for per-host agents, over TLS we own
 * (admin/tls-grpc.ts). The server presents its own SVID and asks for, but does not require, a
 * client certificate: Attest is made with a join token (no certificate) or with a host
 * certificate (x509pop). Every other call must come over a connection whose client certificate is
 * a node SVID that verifies now (our bundle, our CRLs), is not on the deny list, and names an
 * active node; this is checked again on every call, so an evicted or expired node SVID authorizes
 * nothing more even on a connection that stays open.
 */

export interface AgentListenerOptions {
  listen: { host: string; port: number };
  /** agentid's own SVID and our trust domain's bundle (ServerSvidSource). */
  source: X509SvidSource;
  trustDomain: TrustDomain;
  /** Current DER CRLs of our signing CAs. */
  crls: () => readonly Buffer[];
  nodes: NodeService;
  state: Pick<ReadModel, 'onChange' | 'revision' | 'authorities' | 'isRevoked'>;
  datastore: Pick<Datastore, 'entries' | 'tasks' | 'revocations' | 'authorities' | 'changes'>;
  /** Most requests of one MintX509Svids call (a bigger batch is refused, the agent splits it). */
  maxBatch?: number;
  /** Attest calls per minute from one source address (agents.attest_per_minute_per_address; attest-limiter.ts). */
  attestPerMinute: number;
  clock: Clock;
  logger: Logger;
}

export interface AgentListener {
  readonly port: number;
  /** Open Sync streams (for tests and metrics). */
  streams(): number;
  /** Attest calls refused by the rate limit since start, by cause (counted, not audited). */
  attestRefusals(): AttestRefusals;
  close(): Promise<void>;
}

interface Connection {
  chain: Buffer[];
  peer: string;
  /** The peer's IP address, which Attest attempts are charged to. */
  address: string | undefined;
}

let nodeService: { definition: grpc.ServiceDefinition; encodeSyncUpdate: (m: SyncUpdateMessage | { snapshot: boolean; revision: number; evicted: boolean }) => Buffer } | undefined;
/**
 * The node service as registered: Sync writes bytes the fan-out encoded once for many streams as
 * they are (grpc-js frames whatever the serializer returns), and encodes anything else itself.
 */
function nodeServiceDefinition(): NonNullable<typeof nodeService> {
  if (nodeService) return nodeService;
  const definition = (loadProto('agentid/node/v1/node.proto') as any).agentid.node.v1.AgentIdNode.service as grpc.ServiceDefinition;
  const encodeSyncUpdate = definition.Sync!.responseSerialize as (m: object) => Buffer;
  const sync = { ...definition.Sync!, responseSerialize: (m: Buffer | object) => (Buffer.isBuffer(m) ? m : encodeSyncUpdate(m)) };
  return (nodeService = { definition: { ...definition, Sync: sync } as grpc.ServiceDefinition, encodeSyncUpdate });
}

const DEFAULT_MAX_BATCH = 1000;
/** Refusals by the Attest rate limit are logged in aggregate, at most once per this interval. */
const ATTEST_REFUSAL_LOG_INTERVAL_MS = 60_000;

interface SyncStream extends FanoutStream {
  conn: Connection;
  send(update: object): void;
  end(status?: Partial<grpc.ServiceError>): void;
}

export async function startAgentListener(opts: AgentListenerOptions): Promise<AgentListener> {
  const { nodes, state, datastore } = opts;
  const logger = opts.logger.child({ api: 'agents' });
  const maxBatch = opts.maxBatch ?? DEFAULT_MAX_BATCH;
  const verifier = clientSvidVerifier({ source: opts.source, trustDomain: opts.trustDomain, roles: [], crls: opts.crls, clock: opts.clock });
  const streams = new Set<SyncStream>();
  const fanout = new SyncFanout({ revision: () => state.revision, encode: (m) => nodeServiceDefinition().encodeSyncUpdate(m), clock: opts.clock });
  const attestLimiter = new AttestRateLimiter(opts.attestPerMinute, opts.clock);
  let attestRefusalLoggedAt = -Infinity;
  /** Refuses an Attest over the source's rate before it reaches the datastore or the audit trail. */
  const chargeAttest = (conn: Connection): void => {
    if (attestLimiter.admit(conn.address)) return;
    const now = opts.clock.now();
    if (now - attestRefusalLoggedAt >= ATTEST_REFUSAL_LOG_INTERVAL_MS) {
      attestRefusalLoggedAt = now;
      logger.warn({ address: conn.address, refused: { ...attestLimiter.refused }, perMinute: opts.attestPerMinute }, 'agent listener: Attest attempts refused by the rate limit (logged at most once a minute)');
    }
    throw resourceExhausted(`too many Attest attempts from this address (limit ${opts.attestPerMinute} a minute); retry later`);
  };

  /** The node a connection's client certificate proves, now; refuses everything else. */
  const nodeOf = (conn: Connection | undefined): string => {
    if (!conn || conn.chain.length === 0) throw permissionDenied('a node SVID is required (attest first)');
    let id: SpiffeId;
    try {
      id = verifier.verify(conn.chain).spiffeId;
    } catch {
      throw permissionDenied('the node SVID does not verify');
    }
    const spiffeId = id.toString();
    const name = parseNodeSpiffeId(id);
    if (name === undefined) throw permissionDenied('the client certificate is not a node SVID');
    if (state.isRevoked(spiffeId)) throw permissionDenied('the node SVID is revoked');
    nodes.activeNode(name);
    return name;
  };

  /** Every server's X.509 roots (DER), for the agent's trust bundle. */
  const trustBundle = (): Buffer[] => {
    const seen = new Set<string>();
    for (const a of state.authorities()) for (const r of a.x509Authorities) seen.add(r);
    return [...seen].map((b) => Buffer.from(b, 'base64'));
  };
  const nodeSvidMessage = (issued: IssuedNodeSvid) => ({
    node: issued.node.name,
    spiffe_id: issued.svid.spiffeId,
    cert_chain: issued.svid.chainDer,
    expires_at: issued.svid.notAfter,
    trust_bundle: trustBundle(),
  });

  type Call = { request: any; getPeer(): string };
  const unary = (method: string, connectionOf: (call: Call) => Connection | undefined, handler: (req: any, conn: Connection | undefined) => unknown) =>
    (call: grpc.ServerUnaryCall<any, any>, callback: grpc.sendUnaryData<any>) => {
      (async () => handler(call.request, connectionOf(call)))().then(
        (res) => callback(null, res),
        (err) => callback(toGrpcError(err, logger, { method }) as grpc.ServiceError),
      );
    };

  const ref = (r: { entry_id?: string; task_agent?: string; task_id?: string }) => ({ entryId: r.entry_id ?? '', taskAgent: r.task_agent ?? '', taskId: r.task_id ?? '' });

  const handlers = (connectionOf: (call: Call) => Connection | undefined): grpc.UntypedServiceImplementation => ({
    Attest: unary('Attest', connectionOf, async (req, conn) => {
      if (!conn) throw permissionDenied('no TLS connection');
      chargeAttest(conn);
      const spki = Buffer.from(req.public_key ?? []);
      const issued = req.join_token
        ? await nodes.attestWithJoinToken(req.join_token, spki, conn.peer)
        : await nodes.attestWithHostCertificate(conn.chain, spki, conn.peer);
      return nodeSvidMessage(issued);
    }),
    RenewNodeSvid: unary('RenewNodeSvid', connectionOf, async (req, conn) =>
      nodeSvidMessage(await nodes.renew(nodeOf(conn), Buffer.from(req.public_key ?? []), conn!.peer))),
    MintX509Svids: unary('MintX509Svids', connectionOf, async (req, conn) => {
      const node = nodeOf(conn);
      const requests = (req.requests ?? []) as { entry_id: string; task_agent: string; task_id: string; public_key: Buffer }[];
      if (requests.length > maxBatch) throw invalidArgument(`at most ${maxBatch} requests per MintX509Svids call`);
      const results = await nodes.mintX509Svids(node, requests.map((r) => ({ ...ref(r), spki: Buffer.from(r.public_key ?? []) })));
      return {
        results: results.map((r) =>
          'ok' in r
            ? { cert_chain: r.ok.chainDer, expires_at: r.ok.notAfter, error_code: '', error_message: '' }
            : { cert_chain: [], expires_at: 0, error_code: r.error.code, error_message: r.error.message }),
      };
    }),
    MintJwtSvid: unary('MintJwtSvid', connectionOf, (req, conn) => {
      const svid = nodes.mintJwtSvid(nodeOf(conn), { ...ref(req), audience: req.audience ?? [] });
      return { token: svid.token.reveal(), expires_at: svid.expiresAt };
    }),
    StartTask: unary('StartTask', connectionOf, async (req, conn) => {
      const task = await nodes.forwardStartTask(nodeOf(conn), {
        agent: req.agent, id: req.id, pid: req.pid, startTime: req.start_time, descendants: req.descendants, cgroup: req.cgroup,
        ttlMs: Number(req.ttl_seconds) > 0 ? Number(req.ttl_seconds) * 1000 : undefined, metadata: req.metadata ?? {}, callerUid: req.caller_uid,
      });
      return { task: JSON.stringify(task) };
    }),
    EndTask: unary('EndTask', connectionOf, async (req, conn) => {
      const task = await nodes.forwardEndTask(nodeOf(conn), { agent: req.agent, id: req.id, reason: req.reason, callerUid: req.caller_uid });
      return { task: JSON.stringify(task) };
    }),
    Sync: (call: grpc.ServerWritableStream<any, any>) => {
      const conn = connectionOf(call);
      let node: string;
      try {
        node = nodeOf(conn);
      } catch (err) {
        call.emit('error', toGrpcError(err, logger, { method: 'Sync' }));
        return;
      }
      void follow(call, node, conn!);
    },
  });

  /** A Sync stream: the snapshot, then the node's share of every change (sync-fanout.ts), until it ends. */
  async function follow(call: grpc.ServerWritableStream<any, any>, node: string, conn: Connection): Promise<void> {
    let open = true;
    const stream: SyncStream = {
      node,
      conn,
      send: (m) => {
        if (open) call.write(m);
      },
      write: (bytes) => {
        if (open) call.write(bytes);
      },
      // Each message re-checks the node's SVID first: an expired or revoked one ends the stream.
      admit: (changes) => {
        if (!open) return false;
        try {
          nodeOf(conn);
          return true;
        } catch (err) {
          const evicted = changes.some((c) => c.kind === 'node' && c.name === node && c.after?.state === 'evicted');
          if (evicted) evict(stream);
          else stream.end(toGrpcError(err, logger, { method: 'Sync', node }));
          return false;
        }
      },
      end(status) {
        if (!open) return;
        open = false;
        fanout.remove(stream);
        streams.delete(stream);
        if (status) call.emit('error', status);
        else call.end();
      },
    };
    call.on('cancelled', () => stream.end());
    call.on('error', () => stream.end());
    call.on('close', () => stream.end());
    streams.add(stream);
    fanout.add(stream);
    try {
      // The head first: what is written while the lists are read also arrives as a change
      // (a record sent twice is harmless: the agent replaces it; sync-fanout.ts skips what the
      // snapshot is known to hold).
      const revision = Math.max(await datastore.changes.head(), state.revision);
      const [entries, tasks, revocations, authorities] = await Promise.all([
        datastore.entries.list(),
        datastore.tasks.list({ node }),
        datastore.revocations.list(),
        datastore.authorities.list(),
      ]);
      if (!open) return;
      stream.send(updateMessage(snapshotForNode(node, { entries, tasks, revocations }), { put: authorities, removed: [] }, revision, true));
      fanout.ready(stream, revision);
      logger.debug({ node, revision }, 'agent sync: snapshot sent');
    } catch (err) {
      stream.end(toGrpcError(err, logger, { method: 'Sync', node }));
    }
  }

  /** Tells the node's agent it was evicted and ends its stream. */
  function evict(stream: SyncStream): void {
    stream.send({ snapshot: false, revision: state.revision, evicted: true });
    stream.end();
  }

  const stopFollowing = state.onChange((changes) => {
    fanout.changed(changes);
    for (const c of changes) {
      if (c.kind !== 'node' || c.after?.state !== 'evicted') continue;
      for (const s of [...streams]) if (s.node === c.name) evict(s);
      logger.info({ node: c.name }, 'agent sync: node evicted, its streams ended');
    }
  });

  let listener;
  try {
    listener = await startTlsGrpcListener<Connection>({
      listen: opts.listen,
      source: opts.source,
      name: 'agent listener',
      logger,
      // Every connection is admitted: Attest needs none; the other calls check the node SVID themselves.
      admit: (chain, peer, address) => ({ chain, peer, address }),
      register: (server, connectionOf) => server.addService(nodeServiceDefinition().definition, handlers(connectionOf)),
    });
  } catch (err) {
    stopFollowing();
    throw err;
  }
  const bound = listener;
  return {
    port: bound.port,
    streams: () => streams.size,
    attestRefusals: () => ({ ...attestLimiter.refused }),
    async close() {
      stopFollowing();
      for (const s of [...streams]) s.end({ code: grpc.status.UNAVAILABLE, details: 'server shutting down' });
      await bound.close();
    },
  };
}

