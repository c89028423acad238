import { notFound, permissionDenied, type AgentIdError } from '../common/errors.js';
import type { NodeRecord, RegistrationEntry, Revocation, TaskRecord } from '../datastore/types.js';
import { taskIsLive } from '../issuer/identity.js';
import { cappedTtl } from '../issuer/renewal.js';

/*
 * What a node (per-host agent) may see and do: pure functions of the records involved, so every
 * rule is tested without a server and the agent listener only gathers the records and applies them.
 *
 * A node sees and mints for: registration entries without a node (they apply everywhere) and
 * entries limited to it; tasks bound on its host (node = its name). It never learns of other
 * nodes' entries or tasks: refusals for them read "not found", exactly as for missing ones.
 */

/** An entry applies on node N when it names no node or names N. */
export function entryAppliesToNode(entry: Pick<RegistrationEntry, 'node'>, node: string): boolean {
  return entry.node === null || entry.node === node;
}

/** A task is served by node N's agent only when it is bound on N's host. */
export function taskBoundOnNode(task: Pick<TaskRecord, 'node'>, node: string): boolean {
  return task.node === node;
}

/** What one SyncUpdate carries, before JSON encoding. */
export interface NodeView {
  entries: RegistrationEntry[];
  deletedEntries: string[];
  tasks: TaskRecord[];
  revocations: Revocation[];
  removedRevocations: string[];
}

/** An identity a node may mint for, with the lifetime computed exactly as for a local caller. */
export interface MintGrant {
  spiffeId: string;
  /** The X.509 or JWT TTL of the entry or task, cut to the entry's expiry or the task's end plus buffer. */
  ttlMs: number;
  dnsNames: string[];
  task: { agent: string; id: string } | null;
  entryId: string | null;
}

const hidden = (what: string) => notFound(`${what} not found`);

/**
 * May node `node` mint for this entry now? The entry must exist, apply on the node, not have
 * expired, and its SPIFFE ID must not be on the deny list.
 */
export function entryGrant(
  entry: RegistrationEntry | undefined,
  node: string,
  kind: 'x509' | 'jwt',
  now: number,
  isRevoked: (spiffeId: string) => boolean,
): MintGrant | AgentIdError {
  if (!entry || !entryAppliesToNode(entry, node)) return hidden(`entry ${entry?.id ?? ''}`.trim());
  if (entry.expiresAt !== null && now >= entry.expiresAt) return permissionDenied(`entry ${entry.id} has expired`);
  if (isRevoked(entry.spiffeId)) return permissionDenied(`${entry.spiffeId} is revoked`);
  const ttlMs = cappedTtl(now, kind === 'x509' ? entry.x509TtlMs : entry.jwtTtlMs, entry.expiresAt);
  return { spiffeId: entry.spiffeId, ttlMs, dnsNames: kind === 'x509' ? [...entry.dnsNames] : [], task: null, entryId: entry.id };
}

/**
 * May node `node` mint for this task now? It must be active (not ended, revoked or past its
 * expiry), bound on the node, and not on the deny list. SVIDs never outlive the task's end plus
 * the buffer (tasks.buffer), as on the server's own socket.
 */
export function taskGrant(
  task: TaskRecord | undefined,
  node: string,
  kind: 'x509' | 'jwt',
  now: number,
  taskBufferMs: number,
  isRevoked: (spiffeId: string) => boolean,
): MintGrant | AgentIdError {
  if (!task || !taskBoundOnNode(task, node)) return hidden('task');
  if (!taskIsLive(task, now)) return permissionDenied(`task ${task.agent}/${task.id} is ${task.state === 'active' ? 'past its expiry' : task.state}`);
  if (isRevoked(task.spiffeId)) return permissionDenied(`${task.spiffeId} is revoked`);
  const ttlMs = cappedTtl(now, kind === 'x509' ? task.x509TtlMs : task.jwtTtlMs, task.expiresAt + taskBufferMs);
  return { spiffeId: task.spiffeId, ttlMs, dnsNames: [], task: { agent: task.agent, id: task.id }, entryId: null };
}

/**
 * May node N forward a task start (or end) for agent namespace `agent`? Only an active node, and
 * only for the namespaces granted to it (its join token's --task-agents).
 */
export function mayForwardTask(node: NodeRecord, agent: string): boolean {
  return node.state === 'active' && node.taskAgents.includes(agent);
}

/** The node's share of the full state: the Sync snapshot. */
export function snapshotForNode(
  node: string,
  state: { entries: readonly RegistrationEntry[]; tasks: readonly TaskRecord[]; revocations: readonly Revocation[] },
): NodeView {
  return {
    entries: state.entries.filter((e) => entryAppliesToNode(e, node)),
    deletedEntries: [],
    tasks: state.tasks.filter((t) => taskBoundOnNode(t, node)),
    revocations: [...state.revocations],
    removedRevocations: [],
  };
}

export type ViewChange =
  | { kind: 'entry'; before?: RegistrationEntry; after?: RegistrationEntry }
  | { kind: 'task'; before?: TaskRecord; after?: TaskRecord }
  | { kind: 'revocation'; spiffeId: string; before?: Revocation; after?: Revocation };

/**
 * The node's share of a batch of changes. An entry that stops applying on the node (deleted, or
 * moved to another node) is a deletion for it; a task is sent in every state, so the agent sees it
 * end; tasks of other hosts never appear.
 */
export function changesForNode(node: string, changes: readonly ViewChange[]): NodeView {
  return viewOf((name) => name === node, changes);
}

/**
 * Every node's share of a batch at once, for the fan-out to many nodes: the nodes the batch names
 * (an entry or task bound on them, before or after the change) get a view of their own; every
 * other node's share is the same view, `others`. For every node N,
 * `byNode.get(N) ?? others` equals `changesForNode(N, changes)`.
 */
export function changesByNode(changes: readonly ViewChange[]): { byNode: Map<string, NodeView>; others: NodeView } {
  const named = new Set<string>();
  for (const c of changes) {
    if (c.kind === 'revocation') continue;
    if (c.before?.node) named.add(c.before.node);
    if (c.after?.node) named.add(c.after.node);
  }
  const byNode = new Map<string, NodeView>();
  for (const node of named) byNode.set(node, changesForNode(node, changes));
  // A node no change names: only node-less entries and the deny list concern it.
  return { byNode, others: viewOf(() => false, changes) };
}

/** The share of a batch for the node `isThisNode` recognises (by the node a record is bound on). */
function viewOf(isThisNode: (name: string) => boolean, changes: readonly ViewChange[]): NodeView {
  const applies = (e: Pick<RegistrationEntry, 'node'>) => e.node === null || isThisNode(e.node);
  const view: NodeView = { entries: [], deletedEntries: [], tasks: [], revocations: [], removedRevocations: [] };
  for (const c of changes) {
    if (c.kind === 'entry') {
      if (c.after && applies(c.after)) view.entries.push(c.after);
      else if (c.before && applies(c.before)) view.deletedEntries.push(c.before.id);
    } else if (c.kind === 'task') {
      const t = c.after ?? c.before;
      if (t && t.node !== null && isThisNode(t.node)) view.tasks.push(t);
    } else if (c.after) {
      view.revocations.push(c.after);
    } else {
      view.removedRevocations.push(c.spiffeId);
    }
  }
  return view;
}
