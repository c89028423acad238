import { createPrivateKey } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { Gauge } from 'prom-client';
import * as grpc from '@grpc/grpc-js';
import type { Clock } from '../common/clock.js';
import { AgentIdError, failedPrecondition, isAgentIdError, permissionDenied, unavailable } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { loadProto } from '../common/proto.js';
import { Secret } from '../common/secret.js';
import { pemCertificates } from '../ca/authority.js';
import { readPrivateFile } from '../ca/key-files.js';
import { openDatastore } from '../datastore/index.js';
import { ReadModel } from '../state/read-model.js';
import { TaskHolders } from '../tasks/holders.js';
import { systemProcessInspector, type ProcessInspector } from '../attest/processes.js';
import { entryIdentity, taskIdentity, taskIsLive, type CallerFacts, type Identity } from '../issuer/identity.js';
import { stateIdentities } from '../issuer/task-candidates.js';
import { StreamHub } from '../issuer/hub.js';
import { TrustState, type PeerAuthority } from '../issuer/trust-state.js';
import { JwtValidator } from '../issuer/jwt-validator.js';
import { workloadStateEncoders } from '../workload/encode.js';
import { attestationNeeds, startWorkloadEdge, taskAncestry } from '../workload/edge.js';
import { PeerRegistry } from '../workload/peers.js';
import { DescriptorBudget, raiseOpenFileLimit } from '../workload/descriptors.js';
import { listenUnixWithPeerCreds } from '../workload/listener.js';
import { ServerMetrics, socketProbe, startOps } from '../ops/index.js';
import { Lifecycle } from '../server/lifecycle.js';
import { ensureDataDir } from '../server/data-dir.js';
import type { TrustDomain } from '../spiffe/spiffe-id.js';
import type { AgentConfig } from './config.js';
import { NodeClient } from './node-client.js';
import { acceptNodeSvid, newNodeKey, NodeIdentityFiles, type NodeIdentity } from './node-identity.js';
import { Replica } from './replica.js';
import { RemoteSvids, type SvidChanges } from './svids.js';
import { ServerLink } from './link.js';
import { agentAdminHandlers } from './admin.js';
import { AuditLog } from '../audit/index.js';
import { RefusalAggregator } from '../audit/refusals.js';

export interface AgentDeps {
  clock: Clock;
  logger: Logger;
  /** This host's processes (tests may substitute). */
  processes?: ProcessInspector;
  /** Reconnect backoff (tests shorten it). */
  backoff?: { initialMs: number; maxMs: number };
}

export interface RunningAgent {
  workloadSocket: string;
  adminSocket: string;
  /** http://host:port serving /live and /ready, when --health-listen is set. */
  healthUrl: string | undefined;
  /** http://host:port serving /metrics, when --metrics-listen is set. */
  metricsUrl: string | undefined;
  node: string;
  spiffeId: string;
  /** True while the Sync stream to the server is up. */
  connected(): boolean;
  /** Resolves with the reason when the server evicts this node (everything is already dropped). */
  evicted: Promise<string>;
  stop(): Promise<void>;
}

/** How long a caller's first answer waits for SVIDs being fetched for it. */
const ENSURE_WAIT_MS = 10_000;
/** How long a forwarded task start waits for the task to reach the replica. */
const STARTED_WAIT_MS = 10_000;
/** Identities ending (task end, entry expiry) and held SVIDs expiring are re-checked this often. */
const EXPIRY_TICK_MS = 1000;
/** Finished tasks whose processes are gone are forgotten this often. */
const LIVENESS_MS = 5000;
const ATTEST_RETRY_LIMIT_MS = 60_000;
/** Start-up waits this long for the first Sync update, then serves from the replica (server down). */
const FIRST_SYNC_WAIT_MS = 10_000;
/** Repeated Workload API refusals (same uid and reason) are summed into one audit line this often. */
const REFUSAL_INTERVAL_MS = 60_000;

/**
 * The per-host agent's composition root: node identity, local replica (SQLite in the data dir)
 * and the same read model -> task holders -> identity resolution -> stream hub chain as the
 * server, with SVIDs fetched from the server instead of minted. The Workload API edge is the
 * server's own module (workload/edge.ts). A failed step closes everything built before it.
 */
export async function startAgent(config: AgentConfig, deps: AgentDeps): Promise<RunningAgent> {
  const { clock, logger } = deps;
  ensureDataDir(config.dataDir, config.workloadSocket);
  const files = new NodeIdentityFiles(config.dataDir);
  const identity = await obtainNodeIdentity(config, files, deps);
  const trustDomain = identity.spiffeId.trustDomain;
  logger.info({ node: identity.node, spiffeId: identity.spiffeId.toString(), expiresAt: new Date(identity.expiresAt).toISOString() }, 'agent: node identity ready');

  const parts = new Lifecycle(logger);
  let link: ServerLink | undefined;
  try {
    // The agent's own hash-chained trail: its runs, its eviction, and every Workload API refusal
    // on this host (counted per uid and reason, as on the server). Lines name the node.
    const audit = AuditLog.open({ file: join(config.dataDir, 'audit.log'), clock, logger, server: `node/${identity.node}` });
    const refusals = new RefusalAggregator({ append: (e) => audit.append(e), clock, logger, intervalMs: REFUSAL_INTERVAL_MS });
    let running = false;
    parts.add('audit log', {
      close: () => {
        refusals.close();
        if (running) audit.append({ type: 'agent.stopped', outcome: 'ok', node: identity.node, pid: process.pid });
        audit.close();
      },
    });
    const datastore = await openDatastore({ datastore: { kind: 'sqlite', file: join(config.dataDir, 'replica.db') } }, { logger });
    parts.add('replica', datastore);
    const replica = new Replica(datastore);
    const state = await ReadModel.load({ datastore, logger: logger.child({ module: 'state' }), pollIntervalMs: 500, node: identity.node });
    state.start();
    parts.add('read model', state);
    const processes = deps.processes ?? systemProcessInspector();
    const holders = new TaskHolders({ processes, active: () => state.activeTasks(), node: identity.node });
    holders.load(await datastore.tasks.list());

    const trust = agentTrust(trustDomain, () => state.authorities().map(decodeAuthority), () => link?.nodeIdentity.trustBundle ?? identity.trustBundle, clock);
    const svids = new RemoteSvids({
      minter: () => link?.current,
      clock,
      logger,
      onChange: (changes) => svidsChanged(changes),
    });
    parts.add('SVIDs', svids);
    const resolve = stateIdentities({ state, holders, taskBufferMs: config.taskBufferMs });
    // Only identities whose SVID has arrived: the others join a stream when it does. A caller all
    // of whose identities are still on their way (a task just bound to it) is not refused: the
    // error leaves an open stream as it is until the SVIDs arrive, and a new caller is answered
    // UNAVAILABLE (retry) instead of PERMISSION_DENIED (no identity). That holds only while the
    // server is reachable: in an outage nothing is on its way, and a stream whose last held SVID
    // expired ends (PERMISSION_DENIED) rather than keeping an expired certificate.
    const served = (caller: CallerFacts, now: number) => {
      const entitled = resolve(caller, now);
      const ready = entitled.filter((i) => svids.has(i));
      if (ready.length === 0 && entitled.length > 0 && link?.connected) throw unavailable('identity not yet issued by the server');
      return ready;
    };
    const hub: StreamHub = new StreamHub({
      identitiesFor: served,
      cache: svids,
      trust,
      encoders: workloadStateEncoders(),
      clock,
      logger,
      ancestry: taskAncestry(holders, logger),
    });
    const svidsChanged = (changes: SvidChanges) => {
      logger.debug({ appeared: changes.appeared.length, replaced: changes.replaced.length, lost: changes.lost.length }, 'agent: SVIDs changed');
      for (const key of [...changes.appeared, ...changes.lost]) {
        const record = recordOf(key);
        if (record?.kind === 'entry') hub.changed({ kind: 'entry', before: record.entry, after: record.entry });
        else if (record?.kind === 'task') hub.changed({ kind: 'task', before: record.task, after: record.task });
      }
      if (changes.replaced.length > 0) hub.changed({ kind: 'renewal' });
    };
    const recordOf = (key: string) => {
      if (key.startsWith('entry:')) {
        const entry = state.entries.get(key.slice('entry:'.length));
        return entry ? { kind: 'entry' as const, entry } : undefined;
      }
      const [agent, id] = key.slice('task:'.length).split('/') as [string, string];
      const task = state.activeTask(agent, id) ?? holders.select().find((t) => t.agent === agent && t.id === id);
      return task ? { kind: 'task' as const, task } : undefined;
    };
    /** Every identity this node may serve: an SVID is kept ready for each. */
    const servable = (): Identity[] => {
      const now = clock.now();
      const out: Identity[] = [];
      for (const e of state.entries.list()) {
        if ((e.expiresAt !== null && e.expiresAt <= now) || state.isRevoked(e.spiffeId)) continue;
        out.push(entryIdentity(e));
      }
      for (const t of state.activeTasks()) if (taskIsLive(t, now) && !state.isRevoked(t.spiffeId)) out.push(taskIdentity(t, config.taskBufferMs));
      return out;
    };
    const stopFollowing = state.onChange((changes) => {
      holders.follow(changes);
      for (const change of changes) {
        if (change.kind === 'authority') {
          trust.invalidate();
          hub.changed({ kind: 'trust' });
        } else if (change.kind === 'revocation') {
          hub.changed({ kind: 'revocation', spiffeId: change.spiffeId });
        } else if (change.kind !== 'node') {
          hub.changed(change);
        }
      }
      svids.want(servable());
    });
    parts.add('change follower', { close: stopFollowing });
    svids.want(servable());

    const jwtValidator = new JwtValidator({ trustDomain, trust, federation: { jwt: () => undefined }, federatedTrustDomains: [], isRevoked: (id) => state.isRevoked(id), clock });
    const peers = new PeerRegistry();
    const descriptors = new DescriptorBudget(raiseOpenFileLimit(logger).soft, config.limits.descriptorReserve);
    const metrics = new ServerMetrics();
    audit.observe(metrics.auditObserver);
    new Gauge({
      name: 'agentid_agent_server_connected',
      help: '1 while the agent holds a live Sync stream to an agentid server, else 0 (it serves what it holds meanwhile)',
      registers: [metrics.registry],
      collect() {
        this.set(link?.connected ? 1 : 0);
      },
    });
    const workload = parts.add('workload API', await startWorkloadEdge({
      socketPath: config.workloadSocket,
      limits: config.limits,
      sha256MaxBytes: config.sha256MaxBytes,
      logger,
      clock,
      peers,
      descriptors,
      metrics,
      attestOptions: attestationNeeds(state.entries, holders),
      hub,
      identities: (_connection, caller) => served(caller, clock.now()),
      cache: svids,
      validateJwt: (token, audience) => jwtValidator.validate(token, audience),
      onRefused(peer, method, reason) {
        refusals.refused({ pid: peer?.pid ?? 0, uid: peer?.uid ?? -1, reason: `${method}: ${reason}` });
      },
      afterAttest: (caller) => svids.ensure(resolve(caller, clock.now()), ENSURE_WAIT_MS),
      closingMessage: 'agent shutting down',
    }));

    const admin = parts.add('admin API', await startAgentAdmin(config, {
      peers,
      descriptors,
      processes,
      logger,
      forward: {
        startTask: (req) => requireLink().startTask(req),
        endTask: (req) => requireLink().endTask(req),
      },
      localTask: (agent, id) => datastore.tasks.get(agent, id),
      started: async (task) => {
        await waitFor(() => state.activeTask(task.agent, task.id) !== undefined, (fire) => state.onChange(fire), STARTED_WAIT_MS);
        await svids.ensure([taskIdentity(state.activeTask(task.agent, task.id) ?? task, config.taskBufferMs)], ENSURE_WAIT_MS);
      },
    }));
    const requireLink = () => {
      const client = link?.current;
      if (!client) throw unavailable(`this agent has no connection to the agentid server (${link?.downReason ?? 'starting'}); tasks cannot be started or ended now`);
      return client;
    };

    let evictedResolve!: (reason: string) => void;
    const evicted = new Promise<string>((r) => (evictedResolve = r));
    let evictedOnce = false;
    const evict = async (reason: string) => {
      if (evictedOnce) return;
      evictedOnce = true;
      logger.error({ node: identity.node, reason }, 'agent: this node was evicted; every identity it served is dropped and the agent stops');
      audit.append({ type: 'agent.evicted', outcome: 'denied', node: identity.node, pid: process.pid, reason });
      link?.stop();
      svids.close();
      hub.closeAll(permissionDenied('this node was evicted from the trust domain'));
      try {
        await replica.clear(clock.now());
      } catch (err) {
        logger.error({ err }, 'agent: could not clear the replica after eviction');
      }
      // The node identity is worthless now; a new join token is the only way back.
      rmSync(files.dir, { recursive: true, force: true });
      evictedResolve(reason);
    };

    link = new ServerLink({
      server: config.server,
      trustDomain,
      roots: () => {
        const fromAuthorities = trust.ownX509Bundle();
        return fromAuthorities.length > 0 ? fromAuthorities : link!.nodeIdentity.trustBundle;
      },
      identity,
      saveIdentity: (next) => files.save(next),
      revision: () => replica.revision(),
      apply: (update) => replica.apply(update, clock.now()),
      onConnected: () => svids.retryNow(),
      onDisconnected: (reason) => logger.warn({ reason }, 'agent: disconnected from the agentid server; serving held SVIDs until they expire'),
      onEvicted: (reason) => void evict(reason),
      clock,
      logger,
      backoff: deps.backoff,
    });
    link.start();
    parts.add('server link', { close: () => link!.stop() });
    // Callers arriving in the first moments would otherwise see only what the replica held at start.
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, FIRST_SYNC_WAIT_MS);
      void link!.firstSync.then(() => (clearTimeout(timer), resolve()));
    });

    // No CA of its own: the authority expiry gauge stays empty on an agent.
    metrics.watch({ openConnections: () => peers.size, openStreams: () => hub.size, authorities: () => [], now: () => clock.now(), workloadLimits: workload.limits });
    const expiryTick = setInterval(() => {
      svids.dropExpired();
      hub.changed({ kind: 'expiry' });
    }, EXPIRY_TICK_MS);
    expiryTick.unref();
    const livenessTick = setInterval(() => void holders.prune().catch((err) => logger.warn({ err }, 'agent: task liveness check failed')), LIVENESS_MS);
    livenessTick.unref();
    parts.add('timers', { close: () => (clearInterval(expiryTick), clearInterval(livenessTick)) });

    const ops = parts.add('health and metrics', await startOps({
      health: {
        listen: config.healthListen,
        probes: [
          { name: 'server_link', check: () => { if (!link!.connected) throw new Error(`no connection to the agentid server: ${link!.downReason ?? ''}`); } },
          socketProbe('workload_api', config.workloadSocket),
        ],
      },
      metrics: { listen: config.metricsListen, metrics },
      logger: logger.child({ api: 'ops' }),
    }));

    audit.append({ type: 'agent.started', outcome: 'ok', node: identity.node, pid: process.pid, upstream: `${config.server.host}:${config.server.port}` });
    running = true;
    logger.info({ node: identity.node, workloadSocket: workload.socket, adminSocket: admin.socket, server: `${config.server.host}:${config.server.port}` }, 'agentid agent started');
    let stopping: Promise<void> | undefined;
    return {
      workloadSocket: workload.socket,
      adminSocket: admin.socket,
      healthUrl: ops.healthUrl,
      metricsUrl: ops.metricsUrl,
      node: identity.node,
      spiffeId: identity.spiffeId.toString(),
      connected: () => link!.connected,
      evicted,
      stop() {
        stopping ??= (async () => {
          await parts.closeAll();
          logger.info('agentid agent stopped');
        })();
        return stopping;
      },
    };
  } catch (err) {
    link?.stop();
    await parts.closeAll();
    throw err;
  }
}

/** Resolves when `done()` holds, checked at once and on every event `subscribe` reports, or after `timeoutMs`. */
function waitFor(done: () => boolean, subscribe: (fire: () => void) => () => void, timeoutMs: number): Promise<void> {
  if (done()) return Promise.resolve();
  return new Promise((resolve) => {
    const finish = () => {
      clearTimeout(timer);
      unsubscribe();
      resolve();
    };
    const timer = setTimeout(finish, timeoutMs);
    const unsubscribe = subscribe(() => {
      if (done()) finish();
    });
  });
}

function decodeAuthority(a: { x509Authorities: string[]; jwtKeys: object[]; crls: string[] }): PeerAuthority {
  return {
    x509Authorities: a.x509Authorities.map((s) => Buffer.from(s, 'base64')),
    jwtKeys: a.jwtKeys,
    crls: a.crls.map((s) => Buffer.from(s, 'base64')),
  };
}

/**
 * Trust on an agent: no CA of its own. Every root, JWT key and CRL is some server's published
 * AuthorityRecord, replicated; until the first sync, the roots the node SVID came with.
 */
function agentTrust(trustDomain: TrustDomain, authorities: () => PeerAuthority[], nodeRoots: () => Buffer[], clock: Clock): TrustState {
  return new TrustState({
    ca: {
      trustDomain: { idString: trustDomain.idString },
      x509Bundle: () => (authorities().length === 0 ? nodeRoots() : []),
      jwtKeys: () => [],
      buildCrls: () => [],
    },
    issuances: { listRevokedUnexpired: async () => [], latestNotAfter: async () => undefined },
    clock,
    peers: authorities,
  });
}

/** The node identity from the data directory while valid; otherwise a new attestation (join token or x509pop). */
async function obtainNodeIdentity(config: AgentConfig, files: NodeIdentityFiles, deps: AgentDeps): Promise<NodeIdentity> {
  const { clock, logger } = deps;
  const held = await files.load();
  if (held && held.expiresAt > clock.now()) {
    if (config.joinToken) logger.info('agent: the data directory holds a valid node SVID; the join token is not used');
    return held;
  }
  if (!config.joinToken && !config.x509pop) {
    throw failedPrecondition(
      held
        ? `the node SVID in ${files.dir} expired at ${new Date(held.expiresAt).toISOString()}; attest again with a new --join-token (agentid token generate --node NAME) or --x509pop-cert/--x509pop-key`
        : `${config.dataDir} holds no node identity yet; attest with --join-token TOKEN (agentid token generate --node NAME on the server) or --x509pop-cert/--x509pop-key`,
    );
  }
  if (!config.trustBundleFile) throw failedPrecondition('first attestation needs --trust-bundle FILE (PEM roots of the trust domain, e.g. from `agentid bundle show`) to verify the server with');
  const roots = pemCertificates(readFileSync(config.trustBundleFile, 'utf8'), config.trustBundleFile);
  const hostCert = config.x509pop
    ? { chainDer: pemCertificates(readFileSync(config.x509pop.certFile, 'utf8'), config.x509pop.certFile), keyPkcs8: await readHostKey(config.x509pop.keyFile) }
    : undefined;
  const key = newNodeKey();
  const started = clock.now();
  for (let attempt = 0; ; attempt++) {
    const client = new NodeClient({ server: config.server, roots, trustDomain: undefined, client: hostCert, clock });
    try {
      const wire = await client.attest({ join_token: config.joinToken?.reveal() ?? '', public_key: key.spki });
      const identity = acceptNodeSvid(wire, key, client.serverId?.trustDomain);
      await files.save(identity);
      logger.info({ node: identity.node, via: config.x509pop ? 'x509pop' : 'join_token' }, 'agent: node attested');
      return identity;
    } catch (err) {
      // An unreachable server, or one whose Attest rate limit this address is over, is worth
      // waiting for; a refused token or certificate is final.
      const transient = isAgentIdError(err, 'unavailable') || isAgentIdError(err, 'resource_exhausted');
      if (!transient || clock.now() - started > ATTEST_RETRY_LIMIT_MS) {
        throw err instanceof AgentIdError ? new AgentIdError(err.code, `node attestation failed: ${err.message}`) : err;
      }
      const delay = Math.min(5000, 250 * 2 ** attempt);
      logger.warn({ err: err.message, retryInMs: delay }, 'agent: attestation not possible yet (server unreachable or busy); retrying');
      await new Promise((r) => setTimeout(r, delay));
    } finally {
      client.close();
    }
  }
}

/** The x509pop host key: PEM (PKCS#8, SEC1 or PKCS#1), read as a private file. */
async function readHostKey(path: string): Promise<Secret<Buffer>> {
  const bytes = await readPrivateFile(path);
  try {
    const key = createPrivateKey({ key: bytes, format: bytes.includes('-----BEGIN') ? 'pem' : 'der', ...(bytes.includes('-----BEGIN') ? {} : { type: 'pkcs8' as const }) });
    return new Secret(key.export({ format: 'der', type: 'pkcs8' }));
  } finally {
    bytes.fill(0);
  }
}

/** The agent's admin socket (roles by uid from the agent config). */
async function startAgentAdmin(
  config: AgentConfig,
  deps: Omit<Parameters<typeof agentAdminHandlers>[0], 'roles'> & { descriptors: DescriptorBudget },
) {
  const server = new grpc.Server();
  const adminProto = loadProto('agentid/admin/v1/admin.proto') as any;
  server.addService(adminProto.agentid.admin.v1.AgentIdAdmin.service, agentAdminHandlers({ ...deps, roles: { adminUids: config.adminUids, orchestrators: config.orchestrators } }));
  const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  // As on the server: only admins reach a 0600 socket; orchestrators with other uids need it open, and roles decide.
  const listener = await listenUnixWithPeerCreds(config.adminSocket, {
    mode: config.orchestrators.length > 0 ? 0o666 : 0o600,
    logger: deps.logger,
    onConnection(socket, creds) {
      deps.descriptors.track(socket);
      deps.peers.register(socket, creds);
      injector.injectConnection(socket);
    },
  });
  return {
    socket: config.adminSocket,
    async close() {
      await listener.close();
      injector.destroy();
      server.forceShutdown();
    },
  };
}

