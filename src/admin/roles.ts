import type { Actor, Role } from '../common/actor.js';
import { invalidArgument } from '../common/errors.js';
import { SpiffeId, parseTaskSpiffeId, type TrustDomain } from '../spiffe/spiffe-id.js';

export interface RoleConfig {
  adminUids: number[];
  orchestrators: { uid: number; agents: string[] }[];
}

/** One `admin.tcp.spiffe_roles` item: an mTLS caller's SPIFFE ID and the role it holds. */
export interface SpiffeRole {
  readonly spiffeId: string;
  readonly role: Role;
  /** Agent namespaces of an orchestrator; empty for admins. */
  readonly agents: readonly string[];
}

/**
 * Maps an admin-socket caller's kernel uid to a role. Workloads have no role: a uid that is neither
 * admin nor orchestrator can do nothing here, whatever SVIDs it holds.
 */
export function actorForUid(uid: number, roles: RoleConfig): Actor | undefined {
  if (roles.adminUids.includes(uid)) return { role: 'admin', uid, agents: [] };
  const agents = roles.orchestrators.filter((o) => o.uid === uid).flatMap((o) => o.agents);
  if (agents.length > 0) return { role: 'orchestrator', uid, agents: [...new Set(agents)] };
  return undefined;
}

function parseOrUndefined(id: string): SpiffeId | undefined {
  try {
    return SpiffeId.parse(id);
  } catch {
    return undefined;
  }
}

/**
 * A per-task identity (spiffe://<td>/agent/<a>/task/<t>) is what agentid hands to the workload
 * itself. If it could hold a role, a task could start, end or revoke tasks (its own included)
 * with nothing but the SVID it was issued, which breaks "workloads never grant themselves anything".
 */
function isTaskIdentity(id: SpiffeId): boolean {
  return parseTaskSpiffeId(id) !== undefined;
}

/**
 * Maps a verified mTLS caller's SPIFFE ID to a role by exact match. Per-task identities and IDs
 * that do not parse never map, whatever the configuration says (validateSpiffeRoles rejects such
 * configuration at startup; this refuses them again in case it was skipped).
 */
export function actorForSpiffeId(id: string, roles: readonly SpiffeRole[]): Actor | undefined {
  const parsed = parseOrUndefined(id);
  if (!parsed || isTaskIdentity(parsed)) return undefined;
  const canonical = parsed.toString();
  const matches = roles.filter((r) => r.spiffeId === canonical);
  if (matches.length === 0) return undefined;
  if (matches.some((r) => r.role === 'admin')) return { role: 'admin', spiffeId: canonical, agents: [] };
  return { role: 'orchestrator', spiffeId: canonical, agents: [...new Set(matches.flatMap((r) => r.agents))] };
}

/**
 * Startup check of `admin.tcp.spiffe_roles`: every ID parses, is in our trust domain (only our
 * bundle verifies mTLS callers, so a foreign ID could never authenticate and is a typo), is not a
 * per-task identity, is listed once, and orchestrators name at least one agent. Throws
 * invalid_argument naming every broken item.
 */
export function validateSpiffeRoles(roles: readonly SpiffeRole[], trustDomain: TrustDomain): void {
  const problems: string[] = [];
  const seen = new Set<string>();
  roles.forEach((r, i) => {
    const where = `admin.tcp.spiffe_roles[${i}]`;
    const id = parseOrUndefined(r.spiffeId);
    if (!id) {
      problems.push(`${where}: "${r.spiffeId.slice(0, 200)}" is not a valid SPIFFE ID`);
      return;
    }
    if (id.trustDomain.name !== trustDomain.name) {
      problems.push(`${where}: ${id} is not in trust domain ${trustDomain.name}; only its SVIDs are accepted on the admin listener`);
    }
    if (isTaskIdentity(id)) {
      problems.push(`${where}: ${id} is a per-task identity; a workload's own SVID can never hold an admin role`);
    }
    if (seen.has(id.toString())) problems.push(`${where}: ${id} is listed twice; merge its agents into one item`);
    seen.add(id.toString());
    if (r.role === 'orchestrator' && r.agents.length === 0) problems.push(`${where}: an orchestrator needs at least one agent`);
    if (r.role === 'admin' && r.agents.length > 0) problems.push(`${where}: agents only apply to role orchestrator`);
  });
  if (problems.length > 0) throw invalidArgument(`admin.tcp.spiffe_roles: ${problems.join('; ')}`);
}
