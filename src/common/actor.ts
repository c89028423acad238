/** Who performs an action, as recorded in the audit trail and task records. */
export type Role = 'admin' | 'orchestrator';

export interface Actor {
  role: Role;
  /** Peer uid on the admin socket, or undefined for mTLS callers. */
  uid?: number;
  /** SPIFFE ID of an mTLS caller. */
  spiffeId?: string;
  /** Agent namespaces an orchestrator may act in. */
  agents: string[];
  /** Set when a node's agent acts for a local orchestrator on that node (uid is then the node's uid). */
  node?: string;
}

export function describeActor(actor: Actor): string {
  if (actor.node !== undefined) return `uid:${actor.uid ?? '?'} on node ${actor.node} (${actor.role})`;
  const who = actor.uid !== undefined ? `uid:${actor.uid}` : (actor.spiffeId ?? 'unknown');
  return `${who} (${actor.role})`;
}

/** The local server itself (maintenance: expiry, liveness). */
export const SYSTEM_ACTOR: Actor = { role: 'admin', agents: [], spiffeId: 'agentid:system' };

/** The audit trail's view of an actor. */
export function auditActor(actor: Actor): { uid?: number; spiffe_id?: string; role: Role } {
  return { uid: actor.uid, spiffe_id: actor.spiffeId, role: actor.role };
}
