import type { Clock } from '../common/clock.js';
import type { Logger } from '../common/logger.js';
import type { Config } from '../config/index.js';
import type { AuditSink } from '../audit/index.js';
import type { AuditObserver } from '../audit/audit-log.js';
import type { IssuanceRecord } from '../datastore/types.js';
import type { TrustDomain } from '../spiffe/spiffe-id.js';
import type { X509SvidSource } from '../verify/tls.js';
import { clientSvidVerifier } from '../admin/client-verify.js';
import type { ConsoleServices } from './api.js';
import { startConsole, type RunningConsole } from './server.js';

export { startConsole, type RunningConsole, type ConsoleOptions } from './server.js';
export { ConsoleSessions, LOGIN_TOKEN_TTL_MS } from './sessions.js';

/** What the composition root hands over; each part keeps its own type (sync or async methods). */
export interface ConsoleParts {
  trustDomain: TrustDomain;
  tasks: ConsoleServices['tasks'];
  entries: ConsoleServices['entries'];
  revoker: ConsoleServices['revocations'];
  issuances: { listForSpiffeId(spiffeId: string): IssuanceRecord[] | Promise<IssuanceRecord[]> };
  hub: { readonly size: number };
  ca: { describe(): object };
  /** agentid's own SVID: served unless console.cert_file is set, and the trust for client certificates. */
  serverSvid: X509SvidSource;
  crls: () => readonly Buffer[];
  audit: AuditSink & { observe(observer: AuditObserver): void };
  clock: Clock;
  logger: Logger;
}

/** Starts the web console when console.listen is set; undefined otherwise. */
export async function buildConsole(config: Config, parts: ConsoleParts): Promise<RunningConsole | undefined> {
  const c = config.console;
  if (!c.listen) return undefined;
  // Browsers sign in with a client SVID only when the mTLS admin mapping gives SPIFFE IDs a role.
  const spiffeRoles = config.admin.tcp?.spiffeRoles.map((r) => ({ spiffeId: r.spiffeId, role: r.role, agents: [...r.agents] })) ?? [];
  return startConsole({
    listen: c.listen,
    certFiles: c.certFile && c.keyFile ? { certFile: c.certFile, keyFile: c.keyFile } : null,
    serverSvid: parts.serverSvid,
    clientCertificates:
      spiffeRoles.length > 0
        ? clientSvidVerifier({ source: parts.serverSvid, trustDomain: parts.trustDomain, roles: spiffeRoles, crls: parts.crls, clock: parts.clock })
        : undefined,
    sessionTtlMs: c.sessionTtlMs,
    services: {
      tasks: parts.tasks,
      entries: parts.entries,
      revocations: parts.revoker,
      issuances: (spiffeId) => parts.issuances.listForSpiffeId(spiffeId),
      openStreams: () => parts.hub.size,
      keySlots: () => parts.ca.describe(),
      audit: parts.audit,
      auditTap: (observer) => parts.audit.observe(observer),
      auditFile: config.audit.file,
    },
    clock: parts.clock,
    logger: parts.logger,
  });
}
