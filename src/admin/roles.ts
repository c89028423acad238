import type { Actor } from '../common/actor.js';

export interface RoleConfig {
  adminUids: number[];
  orchestrators: { uid: number; agents: string[] }[];
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
