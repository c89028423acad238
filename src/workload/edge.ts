import * as grpc from '@grpc/grpc-js';
import type { Clock } from '../common/clock.js';
import type { Logger } from '../common/logger.js';
import type { WorkloadLimits } from '../config/types.js';
import { unavailable } from '../common/errors.js';
import { AttestationCache, Attestor, recheckNeeds, type AttestOptions, type RecheckNeeds } from '../attest/index.js';
import { parentChains } from '../attest/ancestry.js';
import { TasksByBinding } from '../issuer/task-candidates.js';
import type { Ancestry } from '../issuer/late-ancestors.js';
import type { TaskRecord } from '../datastore/types.js';
import type { Selector } from '../spiffe/selector.js';
import { addReflection } from '../ops/reflection.js';
import type { ServerMetrics } from '../ops/index.js';
import { workloadServiceDefinition } from './encode.js';
import { strictRequests } from './strict-input.js';
import type { PeerCredentialsLike, PeerRegistry } from './peers.js';
import type { DescriptorBudget } from './descriptors.js';
import { WorkloadLimiter } from './limits.js';
import { listenUnixWithPeerCreds } from './listener.js';
import { SELF_LIMITED_METHODS, workloadHandlers, type AttestationResult, type WorkloadDeps } from './service.js';

/**
 * The Workload API edge, shared by the server's own socket and by `agentid agent` (design.md:
 * "Server and agent share the edges"): the Unix listener with peer credentials, the limits, strict
 * input, attestation and the handlers. Only where identities come from differs, and that arrives
 * here already built (hub, cache, JWT validation).
 */
export interface WorkloadEdgeDeps {
  socketPath: string;
  limits: WorkloadLimits;
  sha256MaxBytes: number;
  logger: Logger;
  clock: Clock;
  peers: PeerRegistry;
  descriptors: DescriptorBudget;
  metrics: Pick<ServerMetrics, 'instrumentWorkload' | 'timeAttestation'>;
  /** What attestation must read for this call (see attestationNeeds). */
  attestOptions: () => AttestOptions & { recheck?: RecheckNeeds };
  hub: WorkloadDeps['hub'];
  identities: WorkloadDeps['identities'];
  cache: WorkloadDeps['cache'];
  validateJwt: WorkloadDeps['validateJwt'];
  onRefused: WorkloadDeps['onRefused'];
  /**
   * Runs after a caller is attested, before its identities are read (the agent fetches SVIDs the
   * caller is about to need from its server here). Absent on the server: it mints in place.
   */
  afterAttest?: (caller: { pid: number; startTime: string; ancestors: { pid: number; startTime: string }[]; cgroup: string | null; selectors: Selector[] }) => Promise<void>;
  /** Said to open streams when the edge closes. */
  closingMessage: string;
}

export interface WorkloadEdge {
  socket: string;
  limits: () => ReturnType<WorkloadLimiter['stats']>;
  updateLimits: (limits: WorkloadLimits) => void;
  close(): Promise<void>;
}

/**
 * What attestation must read, from what entries and tasks depend on now: the binary's hash only
 * when some entry uses sha256 selectors, the parent chain only while some task covers descendants
 * (streams opened before such a task appears have their chains read then: the hub's
 * late-ancestors.ts), and on a reused connection only the facts something depends on. Both answer
 * from indexes kept per entry or task change: nothing here scans per call.
 */
export function attestationNeeds(entries: { usesSelectorKind(kind: string): boolean }, holders: { select(): readonly TaskRecord[] }) {
  return (): AttestOptions & { recheck: RecheckNeeds } => {
    const entriesUse = (kind: string) => entries.usesSelectorKind(kind);
    const tasks = TasksByBinding.of(holders.select());
    return { withSha256: entriesUse('sha256'), withAncestors: tasks.anyWithDescendants, recheck: recheckNeeds(entriesUse, tasks.anyCgroupBinding) };
  };
}

/**
 * Parent chains for the stream hub (issuer/late-ancestors.ts): needed while some task covers
 * descendants, read from /proc. Server and agent alike: attestationNeeds leaves them out until then.
 */
export function taskAncestry(holders: { select(): readonly TaskRecord[] }, logger: Logger): Ancestry {
  return { needed: () => TasksByBinding.of(holders.select()).anyWithDescendants, walk: parentChains({ logger }) };
}

export async function startWorkloadEdge(deps: WorkloadEdgeDeps): Promise<WorkloadEdge> {
  const { logger, metrics } = deps;
  const attestations = new AttestationCache(new Attestor({ logger, sha256MaxBytes: deps.sha256MaxBytes }));
  const limiter = new WorkloadLimiter({ limits: deps.limits, peers: deps.peers, descriptors: deps.descriptors, clock: deps.clock, logger: logger.child({ api: 'workload' }) });
  const service = strictRequests(workloadServiceDefinition());
  const selfLimited = new Set(SELF_LIMITED_METHODS.map((name) => service[name]!.path));
  const server = new grpc.Server({ ...limiter.serverOptions(), interceptors: [limiter.interceptor(selfLimited)] });
  const attestOnly = metrics.timeAttestation((peer: PeerCredentialsLike) => attestations.attest(peer, deps.attestOptions()));
  const attest = async (peer: PeerCredentialsLike): Promise<AttestationResult> => {
    const result = await attestOnly(peer);
    if (deps.afterAttest) {
      await deps.afterAttest({ pid: result.process.pid, startTime: result.process.startTime, ancestors: result.ancestors, cgroup: result.cgroup, selectors: result.selectors });
    }
    return result;
  };
  // A reused attestation answered without waiting: a stat or two, not worth a histogram sample
  // (the attestation histogram times the attestations that read /proc). Not on the agent, whose
  // afterAttest may have to fetch the caller's SVIDs first.
  const attestNow = deps.afterAttest
    ? undefined
    : (peer: PeerCredentialsLike) => attestations.reuse(peer, deps.attestOptions());
  server.addService(
    service,
    metrics.instrumentWorkload(workloadHandlers({
      peers: deps.peers,
      attest,
      attestNow,
      hub: deps.hub,
      identities: deps.identities,
      cache: deps.cache,
      validateJwt: deps.validateJwt,
      onRefused: deps.onRefused,
      logger: logger.child({ api: 'workload' }),
      callLimits: limiter,
    })),
  );
  addReflection(server, 'spiffe/workload/workload.proto');
  const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  const listener = await listenUnixWithPeerCreds(deps.socketPath, {
    mode: 0o666,
    logger,
    onConnection(socket, creds) {
      limiter.accept(socket, creds, (s) => injector.injectConnection(s));
    },
  });
  return {
    socket: deps.socketPath,
    limits: () => limiter.stats(),
    updateLimits: (limits) => limiter.updateLimits(limits),
    async close() {
      await listener.close();
      limiter.close();
      deps.hub.closeAll(unavailable(deps.closingMessage));
      injector.destroy();
      server.forceShutdown();
    },
  };
}
