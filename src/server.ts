import { mkdirSync, chmodSync, statSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { Clock } from './common/clock.js';
import { setLogLevel, type Logger } from './common/logger.js';
import { SYSTEM_ACTOR } from './common/actor.js';
import { failedPrecondition, unavailable } from './common/errors.js';
import { loadProto } from './common/proto.js';
import { SpiffeId, TrustDomain } from './spiffe/spiffe-id.js';
import { ServerSvidSource } from './issuer/server-svid.js';
import { bundleSequence, startBundleEndpoint } from './bundle-endpoint/index.js';
import { Federation } from './federation/index.js';
import type { Config } from './config/index.js';
import { CertificateAuthority, type CaOptions } from './ca/authority.js';
import { openSqliteDatastore } from './datastore/sqlite.js';
import { BatchedIssuances } from './datastore/batched-issuances.js';
import type { Datastore } from './datastore/types.js';
import { EntryIndex } from './entries/match.js';
import { EntryService } from './entries/service.js';
import { AttestationCache, Attestor } from './attest/index.js';
import { AuditLog } from './audit/index.js';
import { buildIntegrity, type Component } from './integrity/index.js';
import { assertSafeDataDirPath } from './integrity/data-dir.js';
import { DiskReserve } from './audit/disk-reserve.js';
import { RefusalAggregator } from './audit/refusals.js';
import { MIN_REMAINING_MS, anyBoundWithDescendants, resolveIdentities } from './issuer/identity.js';
import { SvidCache } from './issuer/svid-cache.js';
import { TasksByBinding } from './issuer/task-candidates.js';
import { StreamHub, type StateChange } from './issuer/hub.js';
import { TrustState } from './issuer/trust-state.js';
import { Revoker } from './tasks/revocations.js';
import { TaskService } from './tasks/service.js';
import { TaskHolders } from './tasks/holders.js';
import { systemProcessInspector } from './attest/processes.js';
import { Scheduler } from './scheduler.js';
import { PeerRegistry, type PeerCredentialsLike } from './workload/peers.js';
import { listenUnixWithPeerCreds } from './workload/listener.js';
import { DescriptorBudget, raiseOpenFileLimit } from './workload/descriptors.js';
import { WorkloadLimiter, type LimitCounters } from './workload/limits.js';
import { workloadHandlers } from './workload/service.js';
import { refuseMalformedRequests, strictRequests } from './workload/strict-input.js';
import { workloadServiceDefinition, workloadStateEncoders } from './workload/encode.js';
import { adminHandlers } from './admin/service.js';
import { AuthorityService } from './admin/authorities.js';
import { startAdminTcpListener } from './admin/tcp.js';
import { validateSpiffeRoles } from './admin/roles.js';
import { ConfigReloader, type ReloadResult } from './ops/reload.js';
import { addReflection, caProbe, datastoreProbe, ServerMetrics, socketProbe, startOps } from './ops/index.js';
import { verifyJwtSvid, JwtBundle, BundleSet } from './verify/index.js';
import { buildConsole } from './console/index.js';

export interface RunningServer {
  workloadSocket: string;
  adminSocket: string;
  /** https://host:port of the bundle endpoint, when enabled. */
  bundleEndpointUrl: string | undefined;
  /** Port of the mTLS admin listener, when enabled. */
  adminTcpPort: number | undefined;
  /** https://host:port of the web console, when enabled. */
  consoleUrl: string | undefined;
  /** http://host:port of the health (/live, /ready) and metrics (/metrics) endpoints, when enabled. */
  healthUrl: string | undefined;
  metricsUrl: string | undefined;
  ca: CertificateAuthority;
  /** SIGHUP: applies what can change while running (ops/reload.ts). */
  reload(next: Config): Promise<ReloadResult>;
  /** Workload API limit counters (refusals, timer closes, open connections and streams), for metrics. */
  workloadLimits(): LimitCounters;
  stop(): Promise<void>;
}

const CRL_REFRESH_MS = 10 * 60_000;
/** After handing due renewals to the hub, when to look for the next ones. */
const RENEWAL_RECHECK_MS = 1000;
const SERVER_VERSION = '0.1.0';

/**
 * The data directory is 0700, except that a Workload API socket inside it needs others to be able
 * to reach it: then it is 0711 (others may open a path they know, never list or read). Keys stay
 * 0600 inside the 0700 ca/ directory, the database and audit log are 0600.
 */
function ensureDataDir(dir: string, workloadSocket: string): void {
  assertSafeDataDirPath(dir);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  assertSafeDataDirPath(dir);
  const st = statSync(dir);
  if (st.uid !== process.getuid!()) throw failedPrecondition(`data directory ${dir} is owned by uid ${st.uid}, not by the server's uid`);
  const mode = dirname(workloadSocket) === dir ? 0o711 : 0o700;
  if ((st.mode & 0o777) !== mode) chmodSync(dir, mode);
}

const LOCK_FILE = 'server.pid';

/** The pid of a live agentid server using this data directory, if any. */
export function runningServerPid(dataDir: string): number | undefined {
  try {
    const pid = Number(readFileSync(join(dataDir, LOCK_FILE), 'utf8').trim());
    if (!Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid) return undefined;
    process.kill(pid, 0);
    return pid;
  } catch {
    return undefined;
  }
}

/** The CA settings of a validated config; the server and the offline CLI commands open the CA alike. */
export function caOptionsFrom(config: Config, deps: { clock: Clock; logger: Logger }): CaOptions {
  const upstream = config.ca.upstream;
  return {
    dataDir: config.dataDir,
    trustDomain: TrustDomain.parse(config.trustDomain),
    clock: deps.clock,
    logger: deps.logger,
    keyType: config.ca.keyType,
    caTtlMs: config.ca.ttlMs,
    rootTtlMs: config.ca.rootTtlMs,
    jwtKeyType: config.jwt.keyType,
    jwtKeyTtlMs: config.jwt.keyTtlMs,
    maxJwtTtlMs: config.svid.maxJwtTtlMs,
    jwtIssuer: config.jwt.issuer,
    upstream: upstream ? { certFile: upstream.certFile, keyFile: upstream.keyFile, bundleFile: upstream.bundleFile ?? undefined } : undefined,
  };
}

/**
 * The composition root: the only place that builds the datastore, CA, audit log and services and
 * wires them together. Data flows one way: socket -> attest -> match -> mint -> push.
 */
export async function startServer(config: Config, deps: ServerDeps): Promise<RunningServer> {
  // A failed step closes everything the earlier steps opened: no half-started server keeps serving.
  const opened: (() => unknown)[] = [];
  try {
    return await buildServer(config, deps, (close) => opened.push(close));
  } catch (err) {
    for (const close of opened.reverse()) {
      try {
        await close();
      } catch (closeErr) {
        deps.logger.warn({ err: closeErr }, 'closing after a failed start');
      }
    }
    throw err;
  }
}

export interface ServerDeps {
  clock: Clock;
  logger: Logger;
  /** Parts whose loss or replacement the operator accepts for this start (--recover); audited. */
  recover?: ReadonlySet<Component>;
}

async function buildServer(config: Config, deps: ServerDeps, onFailure: (close: () => unknown) => void): Promise<RunningServer> {
  const { clock, logger } = deps;
  const trustDomain = TrustDomain.parse(config.trustDomain);
  // Per-task identities can never hold an admin role, whatever the config says.
  const tcpRoles = config.admin.tcp?.spiffeRoles.map((r) => ({ spiffeId: r.spiffeId, role: r.role, agents: [...r.agents] })) ?? [];
  if (config.admin.tcp) validateSpiffeRoles(tcpRoles, trustDomain);
  ensureDataDir(config.dataDir, config.workloadSocket);
  const other = runningServerPid(config.dataDir);
  if (other !== undefined) throw failedPrecondition(`another agentid server (pid ${other}) is using ${config.dataDir}`);

  const integrity = buildIntegrity({ dataDir: config.dataDir, auditFile: config.audit.file, recover: deps.recover ?? new Set(), logger });
  const sqlite = openSqliteDatastore(join(config.dataDir, 'agentid.db'), { logger });
  const issuances = new BatchedIssuances(sqlite, logger);
  const metrics = new ServerMetrics();
  const datastore = metrics.timeDatastore<Datastore>({
    entries: sqlite.entries,
    tasks: sqlite.tasks,
    revocations: sqlite.revocations,
    issuances,
    transaction: (fn) => sqlite.transaction(fn),
    close: () => {
      issuances.flush();
      sqlite.close();
    },
  });
  onFailure(() => datastore.close());
  const audit = AuditLog.open({ file: config.audit.file, clock, logger });
  onFailure(() => audit.close());
  audit.observe(metrics.auditObserver);
  const ca = await CertificateAuthority.open(caOptionsFrom(config, { clock, logger }));
  integrity.verify(ca, audit);

  const attestations = new AttestationCache(new Attestor({ logger, sha256MaxBytes: config.attest.sha256MaxBytes }));
  const index = new EntryIndex();
  // Every change re-enters at mint/push. `hub` and `scheduler` are built below; nothing calls this
  // before startup completes (admin calls, federation updates and timers all start afterwards).
  const changed = (change: StateChange) => {
    hub.changed(change);
    scheduler.poke();
  };

  // Foreign trust domains' bundles; a change re-renders the streams that federate with that domain.
  const federation = new Federation({
    relationships: config.federation,
    ownTrustDomain: trustDomain,
    clock,
    logger: logger.child({ module: 'federation' }),
    stateFile: join(config.dataDir, 'federation.json'),
    onChange: (trustDomain) => changed({ kind: 'federation', trustDomain }),
  });
  const trust: TrustState = new TrustState({
    ca,
    issuances: datastore.issuances,
    clock,
    federation,
    revokedAt: (id) => datastore.revocations.get(id)?.revokedAt,
  });
  // Room for revocations and task ends: new issuance pauses while the data volumes run short.
  const reserve = new DiskReserve({ files: [config.audit.file, join(config.dataDir, 'agentid.db')], reserveBytes: config.audit.reserveBytes, clock, logger });
  const refusals = new RefusalAggregator({ append: (e) => audit.append(e), clock, logger, intervalMs: config.audit.refusalIntervalMs });
  onFailure(() => refusals.close());
  const cache = new SvidCache({
    minter: {
      mintX509Svid: (req) => (reserve.assertRoom(), ca.mintX509Svid(req)),
      mintJwtSvid: (req) => (reserve.assertRoom(), ca.mintJwtSvid(req)),
    },
    recordIssuance: (r) => datastore.issuances.record(r),
    clock,
    logger,
    events: {
      x509Issued(identity, svid, cause, previous, reason) {
        const common = { outcome: 'ok' as const, spiffe_id: svid.spiffeId, serial: svid.serial, agent: identity.task?.agent, task: identity.task?.id, not_after: svid.notAfter };
        if (previous) audit.append({ ...common, type: 'svid.rotated', kind: 'x509', previous_serial: previous.serial, reason });
        else audit.append({ ...common, type: 'svid.issued', kind: 'x509', pid: cause.pid, uid: cause.uid, selectors: identity.matchedSelectors });
      },
      jwtIssued(identity, svid, audience, cause) {
        audit.append({
          type: 'svid.issued', outcome: 'ok', kind: 'jwt', spiffe_id: svid.spiffeId, jti: svid.jti, audience,
          agent: identity.task?.agent, task: identity.task?.id, pid: cause.pid, uid: cause.uid,
          selectors: identity.matchedSelectors, not_after: svid.expiresAt,
        });
      },
    },
  });
  const processes = systemProcessInspector();
  const holders = new TaskHolders({ processes });
  const revoker = new Revoker({
    datastore,
    maxSvidTtlMs: Math.max(config.svid.maxX509TtlMs, config.svid.maxJwtTtlMs, config.tasks.maxTtlMs),
    clock,
    audit,
    onRevoked(spiffeId) {
      cache.forgetSpiffeId(spiffeId);
      trust.revocationsChanged();
      hub.changed({ kind: 'revocation', spiffeId });
      hub.changed({ kind: 'trust' });
    },
  });
  const tasks = new TaskService({
    trustDomain,
    datastore,
    revoker,
    processes,
    policy: {
      defaultTtlMs: config.tasks.defaultTtlMs,
      maxTtlMs: config.tasks.maxTtlMs,
      x509TtlMs: config.svid.x509TtlMs,
      jwtTtlMs: config.svid.jwtTtlMs,
      cgroupRoot: config.tasks.cgroupRoot,
    },
    clock,
    audit,
    onChange: (change) => {
      // Tasks are resolved per stream refresh from this snapshot, re-read on every task change.
      boundTasks = holders.select(datastore.tasks.list());
      descendantsBound = anyBoundWithDescendants(boundTasks);
      changed({ kind: 'task', ...change });
    },
  });
  // Active tasks and finished ones whose processes may live on (these get nothing: least privilege).
  let boundTasks = holders.select(datastore.tasks.list());
  let descendantsBound = anyBoundWithDescendants(boundTasks);
  const entries = new EntryService({
    datastore,
    index,
    policy: {
      trustDomain,
      defaultX509TtlMs: config.svid.x509TtlMs,
      defaultJwtTtlMs: config.svid.jwtTtlMs,
      maxX509TtlMs: config.svid.maxX509TtlMs,
      maxJwtTtlMs: config.svid.maxJwtTtlMs,
    },
    clock,
    audit,
    isRevoked: (id) => revoker.isRevoked(id),
    revoke: (id, reason, actor) => revoker.revoke(id, reason, actor),
    onChange: (change) => changed({ kind: 'entry', ...change }),
  });

  const hub = new StreamHub({
    identitiesFor: (caller, now) =>
      resolveIdentities({
        caller,
        matchedEntries: index.match(caller.selectors, now),
        tasks: TasksByBinding.of(boundTasks).candidatesFor(caller),
        isRevoked: (id) => revoker.isRevoked(id),
        now,
        taskBufferMs: config.tasks.bufferMs,
      }),
    cache,
    trust,
    encoders: workloadStateEncoders(),
    clock,
    logger,
    around: (fn) => audit.batch(fn),
  });
  metrics.timeFanout(hub);

  // agentid's own SVID, for the TLS listeners it serves itself.
  const serverSvid = new ServerSvidSource({
    spiffeId: SpiffeId.fromSegments(trustDomain, 'agentid', 'server'),
    ttlMs: config.svid.x509TtlMs,
    minter: ca,
    trust,
    clock,
  });

  // The web console for security teams (off unless console.listen is set).
  const webConsole = await buildConsole(config, { trustDomain, tasks, entries, revoker, issuances: datastore.issuances, hub, ca, serverSvid, crls: () => trust.crls(), audit, clock, logger });
  if (webConsole) onFailure(() => webConsole.close());

  let nextCrlRefresh = clock.now() + CRL_REFRESH_MS;
  let lastEntryExpiryCheck = clock.now();
  const scheduler = new Scheduler(
    {
      async rotateCa() {
        const result = await ca.rotate();
        if (result.changed) {
          for (const e of result.events) {
            audit.append({ type: 'ca.rotated', outcome: 'ok', kind: e.kind, phase: e.phase, key_id: e.id, previous_key_id: e.previousId, not_after: e.notAfter });
          }
          integrity.anchor(ca, audit);
          cache.invalidateAll();
          trust.invalidate();
          serverSvid.renew(true);
          hub.refresh();
        }
        return ca.nextRotationAt();
      },
      expireTasks: () => tasks.expireDue(SYSTEM_ACTOR),
      expireEntries() {
        // Streams stop offering an entry once less than MIN_REMAINING_MS is left (identity.ts); refresh then.
        const now = clock.now();
        const ends = index.expiryTimes().map((t) => t - MIN_REMAINING_MS + 1);
        if (ends.some((t) => t <= now && t > lastEntryExpiryCheck)) hub.changed({ kind: 'expiry' });
        lastEntryExpiryCheck = now;
        const next = ends.filter((t) => t > now);
        return next.length > 0 ? Math.min(...next) : undefined;
      },
      async endOrphanedTasks() {
        await tasks.endOrphaned(SYSTEM_ACTOR);
        await holders.prune(datastore.tasks.list());
      },
      prune() {
        revoker.prune();
        // An outside reference point for the audit chain (truncation leaves a valid shorter chain).
        logger.info({ auditSeq: audit.head.seq, auditHash: audit.head.hash }, 'audit log head');
        integrity.anchor(ca, audit);
      },
      renew() {
        const own = serverSvid.renew();
        const due = cache.nextRenewalAt();
        if (due === undefined || due > clock.now()) return Math.min(own, due ?? own);
        // Re-minted by the hub's fan-out a moment later: look again after it, not in a busy loop.
        hub.changed({ kind: 'renewal' });
        return Math.min(own, clock.now() + RENEWAL_RECHECK_MS);
      },
      refreshCrls() {
        if (clock.now() >= nextCrlRefresh) {
          nextCrlRefresh = clock.now() + CRL_REFRESH_MS;
          trust.refreshCrls();
          serverSvid.trustChanged();
          hub.changed({ kind: 'trust' });
        }
        return nextCrlRefresh;
      },
    },
    { clock, logger, livenessIntervalMs: config.tasks.livenessIntervalMs },
  );

  // Parsed JWT bundles, rebuilt only when trust material changes (not per ValidateJWTSVID call).
  let jwtBundles: { version: number; set: BundleSet } | undefined;
  const currentJwtBundles = (): BundleSet => {
    if (jwtBundles?.version !== trust.version()) {
      const set = new BundleSet();
      set.add(JwtBundle.fromJwkSet(trustDomain, trust.ownJwtBundle()));
      // Tokens of federated trust domains validate against that domain's bundle only.
      for (const rel of config.federation) {
        const jwks = federation.jwt(rel.trustDomain);
        if (jwks) set.add(JwtBundle.fromJwkSet(rel.trustDomain, jwks));
      }
      jwtBundles = { version: trust.version(), set };
    }
    return jwtBundles.set;
  };
  const validateJwt = (token: string, audience: string) => {
    const bundles = currentJwtBundles();
    const result = verifyJwtSvid(token, bundles, {
      audience,
      now: clock.now(),
      revoked: (id: string) => revoker.isRevoked(id),
    });
    return { spiffeId: result.spiffeId.toString(), claims: result.claims as Record<string, unknown> };
  };

  // Workload API: any local user may connect; attestation decides what they get.
  const peers = new PeerRegistry();
  const descriptors = new DescriptorBudget(raiseOpenFileLimit(logger).soft, config.limits.descriptorReserve);
  const limiter = new WorkloadLimiter({ limits: config.limits, peers, descriptors, clock, logger: logger.child({ api: 'workload' }) });
  const workloadServer = new grpc.Server({ ...limiter.serverOptions(), interceptors: [limiter.interceptor(), refuseMalformedRequests] });
  workloadServer.addService(
    strictRequests(workloadServiceDefinition()),
    metrics.instrumentWorkload(workloadHandlers({
      peers,
      attest: metrics.timeAttestation((peer: PeerCredentialsLike, { streaming }: { streaming: boolean }) =>
        attestations.attest(peer, { withSha256: index.requiredSelectorTypes().has('sha256'), withAncestors: streaming || descendantsBound })),
      hub,
      cache,
      validateJwt,
      onRefused(peer, method, reason) {
        refusals.refused({ pid: peer?.pid ?? 0, uid: peer?.uid ?? -1, reason: `${method}: ${reason}` });
      },
      logger: logger.child({ api: 'workload' }),
    })),
  );
  addReflection(workloadServer, 'spiffe/workload/workload.proto');
  const workloadInjector = workloadServer.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  const workloadListener = await listenUnixWithPeerCreds(config.workloadSocket, {
    mode: 0o666,
    logger,
    onConnection(socket, creds) {
      limiter.accept(socket, creds, (s) => workloadInjector.injectConnection(s));
    },
  });
  onFailure(async () => {
    await workloadListener.close();
    workloadInjector.destroy();
    workloadServer.forceShutdown();
  });

  const adminServer = new grpc.Server();
  const adminProto = loadProto('agentid/admin/v1/admin.proto') as any;
  const adminDeps = {
    entries,
    tasks,
    revoker,
    issuanceSummary(spiffeId: string) {
      const now = clock.now();
      const records = datastore.issuances.listForSpiffeId(spiffeId);
      return {
        liveSerials: records.filter((r) => r.kind === 'x509' && r.notAfter > now).map((r) => r.serial),
        count: records.length,
      };
    },
    audit,
    logger: logger.child({ api: 'admin' }),
    authorities: new AuthorityService({
      ca,
      audit,
      countIssuedBy: (ids) => cache.countIssuedBy(ids),
      onChanged(condemned) {
        cache.forgetIssuers(condemned);
        trust.invalidate();
        serverSvid.renew(true);
        hub.refresh();
        scheduler.poke();
      },
    }),
    consoleLogin: webConsole?.createLogin,
  };
  adminServer.addService(
    adminProto.agentid.admin.v1.AgentIdAdmin.service,
    adminHandlers({
      ...adminDeps,
      peers,
      roles: { adminUids: [...config.admin.adminUids], orchestrators: config.admin.orchestrators.map((o) => ({ uid: o.uid, agents: [...o.agents] })) },
    }),
  );
  addReflection(adminServer, 'agentid/admin/v1/admin.proto');
  const adminInjector = adminServer.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  // Only admins can reach a 0600 socket; orchestrators with other uids need it open, and roles decide.
  const adminMode = config.admin.orchestrators.length > 0 ? 0o666 : 0o600;
  const adminListener = await listenUnixWithPeerCreds(config.adminSocket, {
    mode: adminMode,
    logger,
    onConnection(socket, creds) {
      descriptors.track(socket);
      peers.register(socket, creds);
      adminInjector.injectConnection(socket);
    },
  });
  onFailure(async () => {
    await adminListener.close();
    adminInjector.destroy();
    adminServer.forceShutdown();
  });

  const bundleEndpoint = config.bundleEndpoint.enabled
    ? await startBundleEndpoint({
        trustDomain,
        listen: config.bundleEndpoint.listen,
        profile: config.bundleEndpoint.profile,
        certFile: config.bundleEndpoint.certFile,
        keyFile: config.bundleEndpoint.keyFile,
        serverSvid,
        trust: {
          x509Authorities: () => ca.x509Bundle(),
          jwtKeys: () => ca.jwtKeys(),
          crls: () => trust.crls(),
          sequence: () => bundleSequence(ca),
        },
        refreshHintMs: config.bundleEndpoint.refreshHintMs,
        jwtIssuer: config.jwt.issuer,
        logger: logger.child({ api: 'bundle-endpoint' }),
        clock,
      })
    : undefined;
  if (bundleEndpoint) onFailure(() => bundleEndpoint.close());

  // Optional mTLS admin API: callers are mapped to roles by their SVID (never a per-task one).
  const adminTcp = config.admin.tcp
    ? await startAdminTcpListener({
        listen: config.admin.tcp.listen,
        source: serverSvid,
        trustDomain,
        roles: tcpRoles,
        handlers: (callerOf) => adminHandlers({ ...adminDeps, callerOf }),
        crls: () => trust.crls(),
        clock,
        logger: logger.child({ api: 'admin-tcp' }),
      })
    : undefined;
  if (adminTcp) onFailure(() => adminTcp.close());

  metrics.watch({ openConnections: () => peers.size, openStreams: () => hub.size, authorities: () => ca.authorities(), now: () => clock.now(), workloadLimits: () => limiter.stats() });
  const ops = await startOps({
    health: { listen: config.health.listen, probes: [caProbe(ca, () => clock.now()), datastoreProbe(datastore), socketProbe('workload_api', config.workloadSocket)] },
    metrics: { listen: config.metrics.listen, metrics },
    logger: logger.child({ api: 'ops' }),
  });
  onFailure(() => ops.close());

  // Written once the server is up (the live socket already keeps a second server out), so a
  // failed start leaves no lock behind; offline CLI commands read it to leave CA rotation alone.
  writeFileSync(join(config.dataDir, LOCK_FILE), `${process.pid}\n`, { mode: 0o600 });
  integrity.anchor(ca, audit);
  scheduler.start();
  federation.start();
  audit.append({ type: 'server.started', outcome: 'ok', version: SERVER_VERSION, trust_domain: trustDomain.name, pid: process.pid, db_id: integrity.dbId() });
  const auditStartSeq = audit.head.seq;
  logger.info({ trustDomain: trustDomain.name, workloadSocket: config.workloadSocket, adminSocket: config.adminSocket }, 'agentid server started');

  const reloader = new ConfigReloader(config, {
    logger,
    setLogLevel: (level) => setLogLevel(logger, level),
    updateLimits: (limits) => limiter.updateLimits(limits),
    refreshFederation: async () => {
      await federation.stop();
      federation.start();
    },
  });
  let stopped = false;
  return {
    workloadSocket: config.workloadSocket,
    adminSocket: config.adminSocket,
    bundleEndpointUrl: bundleEndpoint?.url,
    adminTcpPort: adminTcp?.port,
    consoleUrl: webConsole?.url,
    healthUrl: ops.healthUrl,
    metricsUrl: ops.metricsUrl,
    ca,
    reload: (next) => reloader.reload(next),
    workloadLimits: () => limiter.stats(),
    async stop() {
      if (stopped) return;
      stopped = true;
      await ops.close();
      await scheduler.stop();
      await federation.stop();
      await Promise.all([workloadListener.close(), adminListener.close(), bundleEndpoint?.close(), adminTcp?.close(), webConsole?.close()]);
      limiter.close();
      hub.closeAll(unavailable('server shutting down'));
      workloadInjector.destroy();
      adminInjector.destroy();
      workloadServer.forceShutdown();
      adminServer.forceShutdown();
      datastore.close();
      refusals.close();
      audit.append({ type: 'server.stopped', outcome: 'ok', pid: process.pid, records: audit.head.seq - auditStartSeq + 2 });
      // The chain cannot show a cut-off tail by itself; the operational log keeps the last head.
      logger.info({ auditSeq: audit.head.seq, auditHash: audit.head.hash }, 'audit log head');
      integrity.anchor(ca, audit);
      audit.close();
      rmSync(join(config.dataDir, LOCK_FILE), { force: true });
      logger.info('agentid server stopped');
    },
  };
}
