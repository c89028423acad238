import * as grpc from '@grpc/grpc-js';
import type { Clock } from '../common/clock.js';
import type { Logger } from '../common/logger.js';
import type { Config } from '../config/index.js';
import { loadProto } from '../common/proto.js';
import type { TrustDomain } from '../spiffe/spiffe-id.js';
import type { CertificateAuthority } from '../ca/authority.js';
import type { ReadModel } from '../state/read-model.js';
import type { IssuanceStore } from '../datastore/types.js';
import type { RefusalAggregator } from '../audit/refusals.js';
import type { TaskHolders } from '../tasks/holders.js';
import { addReflection } from '../ops/reflection.js';
import type { PeerRegistry } from '../workload/peers.js';
import { attestationNeeds, startWorkloadEdge } from '../workload/edge.js';
import type { DescriptorBudget } from '../workload/descriptors.js';
import type { ServerMetrics } from '../ops/index.js';
import { listenUnixWithPeerCreds } from '../workload/listener.js';
import { adminHandlers, type AdminServiceDeps } from '../admin/service.js';
import { startAdminTcpListener } from '../admin/tcp.js';
import type { SpiffeRole } from '../admin/roles.js';
import { bundleSequence, startBundleEndpoint } from '../bundle-endpoint/index.js';
import type { Issuer } from './issuer.js';

/** The Workload API on its Unix socket: any local user may connect; attestation decides what they get. */
export async function buildWorkloadApi(deps: {
  config: Config;
  logger: Logger;
  refusals: Pick<RefusalAggregator, 'refused'>;
  state: ReadModel;
  holders: Pick<TaskHolders, 'select'>;
  issuer: Issuer;
  peers: PeerRegistry;
  descriptors: DescriptorBudget;
  metrics: ServerMetrics;
  clock: Clock;
}) {
  const { config, refusals, state, holders, issuer } = deps;
  return startWorkloadEdge({
    socketPath: config.workloadSocket,
    limits: config.limits,
    sha256MaxBytes: config.attest.sha256MaxBytes,
    logger: deps.logger,
    clock: deps.clock,
    peers: deps.peers,
    descriptors: deps.descriptors,
    metrics: deps.metrics,
    attestOptions: attestationNeeds(state.entries, holders),
    hub: issuer.hub,
    identities: (connection, caller) => issuer.identities.identitiesFor(connection, caller, deps.clock.now()),
    cache: issuer.cache,
    validateJwt: (token, audience) => issuer.jwtValidator.validate(token, audience),
    onRefused(peer, method, reason) {
      refusals.refused({ pid: peer?.pid ?? 0, uid: peer?.uid ?? -1, reason: `${method}: ${reason}` });
    },
    closingMessage: 'server shutting down',
  });
}

/** The admin API: on its Unix socket (roles by uid), and optionally over mTLS (roles by SVID). */
export async function buildAdminApi(deps: {
  config: Config;
  trustDomain: TrustDomain;
  tcpRoles: SpiffeRole[];
  clock: Clock;
  logger: Logger;
  peers: PeerRegistry;
  descriptors: DescriptorBudget;
  issuer: Issuer;
  services: Omit<AdminServiceDeps, 'issuanceSummary' | 'logger'>;
  issuances: Pick<IssuanceStore, 'listForSpiffeId'>;
}) {
  const { config, clock, logger, peers, issuer } = deps;
  const adminDeps: AdminServiceDeps = {
    ...deps.services,
    async issuanceSummary(spiffeId: string) {
      const now = clock.now();
      const records = await deps.issuances.listForSpiffeId(spiffeId);
      return {
        liveSerials: records.filter((r) => r.kind === 'x509' && r.notAfter > now).map((r) => r.serial),
        count: records.length,
      };
    },
    logger: logger.child({ api: 'admin' }),
  };
  const server = new grpc.Server();
  const adminProto = loadProto('agentid/admin/v1/admin.proto') as any;
  server.addService(
    adminProto.agentid.admin.v1.AgentIdAdmin.service,
    adminHandlers({
      ...adminDeps,
      peers,
      roles: { adminUids: [...config.admin.adminUids], orchestrators: config.admin.orchestrators.map((o) => ({ uid: o.uid, agents: [...o.agents] })) },
    }),
  );
  addReflection(server, 'agentid/admin/v1/admin.proto');
  const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  // Only admins can reach a 0600 socket; orchestrators with other uids need it open, and roles decide.
  const listener = await listenUnixWithPeerCreds(config.adminSocket, {
    mode: config.admin.orchestrators.length > 0 ? 0o666 : 0o600,
    logger,
    onConnection(socket, creds) {
      deps.descriptors.track(socket);
      peers.register(socket, creds);
      injector.injectConnection(socket);
    },
  });
  // Optional mTLS admin API: callers are mapped to roles by their SVID (never a per-task one).
  let tcp: Awaited<ReturnType<typeof startAdminTcpListener>> | undefined;
  try {
    tcp = config.admin.tcp
      ? await startAdminTcpListener({
          listen: config.admin.tcp.listen,
          source: issuer.serverSvid,
          trustDomain: deps.trustDomain,
          roles: deps.tcpRoles,
          handlers: (callerOf) => adminHandlers({ ...adminDeps, callerOf }),
          crls: () => issuer.trust.crls(),
          clock,
          logger: logger.child({ api: 'admin-tcp' }),
        })
      : undefined;
  } catch (err) {
    await listener.close();
    injector.destroy();
    server.forceShutdown();
    throw err;
  }
  return {
    socket: config.adminSocket,
    tcpPort: tcp?.port,
    async close() {
      await Promise.all([listener.close(), tcp?.close()]);
      injector.destroy();
      server.forceShutdown();
    },
  };
}

/** The SPIFFE bundle endpoint (and OIDC discovery), when enabled. */
export async function buildBundleEndpoint(deps: { config: Config; trustDomain: TrustDomain; clock: Clock; logger: Logger; ca: CertificateAuthority; issuer: Issuer }) {
  const { config, ca, issuer } = deps;
  if (!config.bundleEndpoint.enabled) return { url: undefined, close: () => undefined };
  const endpoint = await startBundleEndpoint({
    trustDomain: deps.trustDomain,
    listen: config.bundleEndpoint.listen,
    profile: config.bundleEndpoint.profile,
    certFile: config.bundleEndpoint.certFile,
    keyFile: config.bundleEndpoint.keyFile,
    serverSvid: issuer.serverSvid,
    trust: {
      x509Authorities: () => issuer.trust.ownX509Bundle(),
      jwtKeys: () => (JSON.parse(issuer.trust.ownJwtBundle().toString()) as { keys: object[] }).keys as ReturnType<CertificateAuthority['jwtKeys']>,
      crls: () => issuer.trust.crls(),
      sequence: () => bundleSequence(ca),
    },
    refreshHintMs: config.bundleEndpoint.refreshHintMs,
    jwtIssuer: config.jwt.issuer,
    logger: deps.logger.child({ api: 'bundle-endpoint' }),
    clock: deps.clock,
  });
  return { url: endpoint.url as string | undefined, close: () => endpoint.close() };
}
