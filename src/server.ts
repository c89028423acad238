import type { Clock } from './common/clock.js';
import { setLogLevel, type Logger } from './common/logger.js';
import { failedPrecondition } from './common/errors.js';
import { SYSTEM_ACTOR } from './common/actor.js';
import { TrustDomain } from './spiffe/spiffe-id.js';
import type { Config } from './config/index.js';
import { CertificateAuthority, type CaOptions } from './ca/authority.js';
import { Revoker } from './tasks/revocations.js';
import { TaskService } from './tasks/service.js';
import { EntryService } from './entries/service.js';
import { PeerRegistry } from './workload/peers.js';
import { validateSpiffeRoles } from './admin/roles.js';
import { systemProcessInspector } from './attest/processes.js';
import { TaskHolders } from './tasks/holders.js';
import { AuthorityService } from './admin/authorities.js';
import { Lifecycle } from './server/lifecycle.js';
import { ensureDataDir, runningServerPid, serverId as readServerId, writeLock } from './server/data-dir.js';
import { buildReadModel, buildStorage } from './server/storage.js';
import { buildIssuer } from './server/issuer.js';
import { buildAdminApi, buildBundleEndpoint, buildWorkloadApi } from './server/apis.js';
import { buildScheduler } from './server/scheduled-work.js';
import { buildAgentListener, buildNodeService } from './server/nodes.js';
import { buildConsole } from './console/index.js';
import { buildIntegrity, type Component } from './integrity/index.js';
import { DescriptorBudget, raiseOpenFileLimit } from './workload/descriptors.js';
import type { LimitCounters } from './workload/limits.js';
import { ConfigReloader, type ReloadResult } from './ops/reload.js';
import { caProbe, datastoreProbe, ServerMetrics, socketProbe, startOps } from './ops/index.js';
import { openAuditSession } from './server/audit-session.js';

export { runningServerPid } from './server/data-dir.js';

export interface RunningServer {
  workloadSocket: string;
  adminSocket: string;
  /** https://host:port of the bundle endpoint, when enabled. */
  bundleEndpointUrl: string | undefined;
  /** Port of the mTLS admin listener, when enabled. */
  adminTcpPort: number | undefined;
  /** Port of the listener for per-host agents (agents.listen), when enabled. */
  agentPort: number | undefined;
  /** https://host:port of the web console, when enabled. */
  consoleUrl: string | undefined;
  /** http://host:port of the health (/live, /ready) and metrics (/metrics) endpoints, when enabled. */
  healthUrl: string | undefined;
  metricsUrl: string | undefined;
  /** This server's name among the servers sharing its datastore. */
  serverId: string;
  ca: CertificateAuthority;
  /** SIGHUP: applies what can change while running (ops/reload.ts). */
  reload(next: Config): Promise<ReloadResult>;
  /** Workload API limit counters (refusals, timer closes, open connections and streams), for metrics. */
  workloadLimits(): LimitCounters;
  stop(): Promise<void>;
}

export interface ServerDeps {
  clock: Clock;
  logger: Logger;
  /** Parts whose loss or replacement the operator accepts for this start (--recover); audited. */
  recover?: ReadonlySet<Component>;
}

const SERVER_VERSION = '0.1.0';

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
 * The composition root: builds each part in order and wires them; nothing else. Data flows one
 * way: socket -> attest -> match (read model) -> mint -> push. A failed step closes everything
 * built before it; stop() closes in reverse order.
 */
export async function startServer(config: Config, deps: ServerDeps): Promise<RunningServer> {
  const { clock, logger } = deps;
  const trustDomain = TrustDomain.parse(config.trustDomain);
  // Per-task identities can never hold an admin role, whatever the config says.
  const tcpRoles = config.admin.tcp?.spiffeRoles.map((r) => ({ spiffeId: r.spiffeId, role: r.role, agents: [...r.agents] })) ?? [];
  if (config.admin.tcp) validateSpiffeRoles(tcpRoles, trustDomain);
  ensureDataDir(config.dataDir, config.workloadSocket);
  const other = runningServerPid(config.dataDir);
  if (other !== undefined) throw failedPrecondition(`another agentid server (pid ${other}) is using ${config.dataDir}`);
  const serverId = readServerId(config.dataDir);

  const parts = new Lifecycle(logger);
  try {
    // Refuses a missing, replaced or rolled-back database, CA or audit trail (unless --recover names it).
    const dbFile = config.datastore.kind === 'sqlite' ? config.datastore.file : null;
    const integrity = buildIntegrity({ dataDir: config.dataDir, dbFile, auditFile: config.audit.file, recover: deps.recover ?? new Set(), logger });
    const metrics = new ServerMetrics();
    const { datastore, issuances } = parts.add('datastore', await buildStorage(config, { logger, metrics }));
    const ca = await CertificateAuthority.open(caOptionsFrom(config, { clock, logger }));
    const auditSession = openAuditSession(config, { clock, logger, serverId });
    parts.add('audit log', { close: () => auditSession.close((log) => integrity.anchor(ca, log)) });
    const { audit, reserve, refusals } = auditSession;
    audit.observe(metrics.auditObserver);
    integrity.verify(ca, audit);
    const state = parts.add('read model', await buildReadModel(datastore, { logger }));
    const processes = systemProcessInspector();
    const holders = new TaskHolders({ processes, active: () => state.activeTasks() });
    holders.load(await datastore.tasks.list());
    const issuer = parts.add('issuer', await buildIssuer({ config, trustDomain, serverId, clock, logger, ca, audit, reserve, holders, datastore, issuances, state }));

    const revoker = new Revoker({
      datastore,
      issuances,
      state,
      clock,
      audit,
      maxSvidTtlMs: Math.max(config.svid.maxX509TtlMs, config.svid.maxJwtTtlMs, config.tasks.maxTtlMs),
    });
    const tasks = new TaskService({
      trustDomain,
      datastore,
      revoker,
      state,
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
    });
    const entries = new EntryService({
      datastore,
      state,
      policy: {
        trustDomain,
        defaultX509TtlMs: config.svid.x509TtlMs,
        defaultJwtTtlMs: config.svid.jwtTtlMs,
        maxX509TtlMs: config.svid.maxX509TtlMs,
        maxJwtTtlMs: config.svid.maxJwtTtlMs,
      },
      clock,
      audit,
      revoker,
    });

    metrics.timeFanout(issuer.hub);
    const peers = new PeerRegistry();
    const descriptors = new DescriptorBudget(raiseOpenFileLimit(logger).soft, config.limits.descriptorReserve);
    // Before the Workload API socket appears (a restart's reconnect storm starts with it): tasks
    // whose process died while the server was down end now (one transaction, one CRL change),
    // finished tasks whose process is gone stop counting, and the database, CA and audit trail are
    // anchored (synchronous writes and fsyncs that would otherwise stall the storm's first second).
    await tasks.endOrphaned(SYSTEM_ACTOR);
    const livenessRanAt = clock.now();
    await holders.prune();
    integrity.anchor(ca, audit);
    const authorities = new AuthorityService({
      ca,
      audit,
      countIssuedBy: (ids) => issuer.cache.countIssuedBy(ids),
      onChanged: (condemned) => void issuer.authorityChanged(condemned).catch((err) => logger.error({ err }, 'could not apply a CA change')),
    });
    // The web console for security teams (off unless console.listen is set).
    const webConsole = await buildConsole(config, { trustDomain, tasks, entries, revoker, issuances, hub: issuer.hub, ca, serverSvid: issuer.serverSvid, crls: () => issuer.trust.crls(), audit, clock, logger });
    if (webConsole) parts.add('web console', webConsole);
    const nodes = buildNodeService({ config, trustDomain, datastore, state, ca, issuances, revoker, tasks, clock, audit });
    const services = { entries, tasks, revoker, audit, authorities, nodes, consoleLogin: webConsole?.createLogin };
    const admin = parts.add('admin API', await buildAdminApi({ config, trustDomain, tcpRoles, clock, logger, peers, descriptors, issuer, services, issuances }));
    const agents = parts.add('agent listener', await buildAgentListener({ config, trustDomain, nodes, state, datastore, issuer, clock, logger }));
    const bundleEndpoint = parts.add('bundle endpoint', await buildBundleEndpoint({ config, trustDomain, clock, logger, ca, issuer }));
    // Last of the listeners: the other parts' start-up (the admin API's reflection, the console)
    // would otherwise run while the reconnect storm that the new socket starts is being served.
    const workload = parts.add('workload API', await buildWorkloadApi({ config, logger, refusals, state, holders, issuer, peers, descriptors, metrics, clock }));
    metrics.watch({ openConnections: () => peers.size, openStreams: () => issuer.hub.size, authorities: () => ca.authorities(), now: () => clock.now(), workloadLimits: workload.limits, attestRefusals: agents.attestRefusals });
    const ops = parts.add('health and metrics', await startOps({
      health: { listen: config.health.listen, probes: [caProbe(ca, () => clock.now()), datastoreProbe(datastore), socketProbe('workload_api', config.workloadSocket)] },
      metrics: { listen: config.metrics.listen, metrics },
      logger: logger.child({ api: 'ops' }),
    }));
    parts.add('scheduler', buildScheduler({ clock, logger, ca, audit, datastore, state, issuer, tasks, holders, revoker, integrity, livenessIntervalMs: config.tasks.livenessIntervalMs, livenessRanAt }));
    issuer.federation.start();
    parts.add('federation', { close: () => issuer.federation.stop() });
    // Written once the server is up (the live socket already keeps a second server out), so a
    // failed start leaves no lock behind.
    parts.add('lock', writeLock(config.dataDir));

    auditSession.started({ version: SERVER_VERSION, trustDomain: trustDomain.name, dbId: integrity.dbId() });
    logger.info({ trustDomain: trustDomain.name, serverId, workloadSocket: workload.socket, adminSocket: admin.socket }, 'agentid server started');

    const reloader = new ConfigReloader(config, {
      logger,
      setLogLevel: (level) => setLogLevel(logger, level),
      updateLimits: (limits) => workload.updateLimits(limits),
      refreshFederation: async () => {
        await issuer.federation.stop();
        issuer.federation.start();
      },
    });
    let stopping: Promise<void> | undefined;
    return {
      workloadSocket: workload.socket,
      adminSocket: admin.socket,
      bundleEndpointUrl: bundleEndpoint.url,
      adminTcpPort: admin.tcpPort,
      agentPort: agents.port,
      consoleUrl: webConsole?.url,
      healthUrl: ops.healthUrl,
      metricsUrl: ops.metricsUrl,
      serverId,
      ca,
      reload: (next) => reloader.reload(next),
      workloadLimits: workload.limits,
      stop() {
        stopping ??= (async () => {
          await parts.closeAll();
          logger.info('agentid server stopped');
        })();
        return stopping;
      },
    };
  } catch (err) {
    await parts.closeAll();
    throw err;
  }
}
