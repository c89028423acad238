import { readFileSync } from 'node:fs';
import type { Clock } from '../common/clock.js';
import { failedPrecondition } from '../common/errors.js';
import type { Config } from '../config/index.js';
import type { AuditSink } from '../audit/index.js';
import { pemCertificates, type CertificateAuthority } from '../ca/authority.js';
import type { Datastore } from '../datastore/types.js';
import type { BatchedIssuances } from '../datastore/batched-issuances.js';
import type { ReadModel } from '../state/read-model.js';
import type { Revoker } from '../tasks/revocations.js';
import type { TaskService } from '../tasks/service.js';
import type { TrustDomain } from '../spiffe/spiffe-id.js';
import { NodeService } from '../nodes/service.js';
import { startAgentListener } from '../nodes/listener.js';
import type { AttestRefusals } from '../nodes/attest-limiter.js';
import type { Logger } from '../common/logger.js';
import type { Issuer } from './issuer.js';

/** The DER CA certificates of agents.x509pop.ca_bundle (none: x509pop is refused). */
function x509popRoots(file: string | null): Buffer[] {
  if (file === null) return [];
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw failedPrecondition(`agents.x509pop.ca_bundle: cannot read ${file}`, err);
  }
  return pemCertificates(text, 'agents.x509pop.ca_bundle');
}

/** Per-host agents' server side: join tokens, nodes, eviction, and what attested nodes may do. */
export function buildNodeService(deps: {
  config: Config;
  trustDomain: TrustDomain;
  datastore: Datastore;
  state: ReadModel;
  ca: CertificateAuthority;
  issuances: BatchedIssuances;
  revoker: Revoker;
  tasks: TaskService;
  clock: Clock;
  audit: AuditSink;
}): NodeService {
  const { config } = deps;
  return new NodeService({
    trustDomain: deps.trustDomain,
    datastore: deps.datastore,
    state: deps.state,
    minter: deps.ca,
    recordIssuances: (records) => deps.issuances.queue(records),
    revoker: deps.revoker,
    tasks: deps.tasks,
    policy: {
      nodeSvidTtlMs: config.agents.nodeSvidTtlMs,
      taskBufferMs: config.tasks.bufferMs,
      x509popRoots: x509popRoots(config.agents.x509pop.caBundle),
    },
    clock: deps.clock,
    audit: deps.audit,
  });
}

/** The listener for per-host agents (agents.listen / --agent-listen), when configured. */
export async function buildAgentListener(deps: {
  config: Config;
  trustDomain: TrustDomain;
  nodes: NodeService;
  state: ReadModel;
  datastore: Datastore;
  issuer: Issuer;
  clock: Clock;
  logger: Logger;
}): Promise<{ port: number | undefined; attestRefusals?(): AttestRefusals; close(): Promise<void> | void }> {
  const listen = deps.config.agents.listen;
  if (listen === null) return { port: undefined, close: () => undefined };
  const listener = await startAgentListener({
    listen,
    source: deps.issuer.serverSvid,
    trustDomain: deps.trustDomain,
    crls: () => deps.issuer.trust.crls(),
    nodes: deps.nodes,
    state: deps.state,
    datastore: deps.datastore,
    attestPerMinute: deps.config.agents.attestPerMinutePerAddress,
    clock: deps.clock,
    logger: deps.logger,
  });
  return { port: listener.port, attestRefusals: () => listener.attestRefusals(), close: () => listener.close() };
}
