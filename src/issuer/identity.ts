import { SpiffeId } from '../spiffe/spiffe-id.js';
import { formatSelector, type Selector } from '../spiffe/selector.js';
import type { RegistrationEntry, TaskRecord } from '../datastore/types.js';

/**
 * What a caller is entitled to: one identity per registration entry or task that matches it.
 * Pure data; the issuer turns identities into SVIDs.
 */
export interface Identity {
  /** Cache key: "entry:<id>" or "task:<agent>/<task>". One SVID per key is shared by every matching caller. */
  key: string;
  spiffeId: SpiffeId;
  x509TtlMs: number;
  jwtTtlMs: number;
  hint: string;
  dnsNames: string[];
  federatesWith: string[];
  /** SVIDs for this identity never outlive this time (task end plus buffer). */
  notAfterCap: number | null;
  task: { agent: string; id: string } | null;
  entryId: string | null;
  /** The caller's selectors that made the match, for the audit trail. */
  matchedSelectors: string[];
}

/** The kernel facts about a caller that identity resolution uses (a subset of the attestation). */
export interface CallerFacts {
  pid: number;
  startTime: string;
  ancestors: { pid: number; startTime: string }[];
  /**
   * false when the parent chain was not read (no task covered descendants when the caller was
   * attested): `ancestors` is then empty for want of asking. Absent means it was read.
   */
  ancestorsKnown?: boolean;
  cgroup: string | null;
  selectors: Selector[];
}

/**
 * An identity whose end (entry expiry, task end plus buffer) is closer than this is no longer
 * offered: an SVID of less than a second, in whole seconds, would already be expired.
 */
export const MIN_REMAINING_MS = 1000;

export function taskKey(agent: string, id: string): string {
  return `task:${agent}/${id}`;
}

/** True when the task's binding covers the caller: the exact process, a descendant (if allowed), or its cgroup subtree. */
export function taskBindingMatches(task: TaskRecord, caller: CallerFacts): boolean {
  const b = task.binding;
  if (b.kind === 'process') {
    if (caller.pid === b.pid && caller.startTime === b.startTime) return true;
    return b.descendants && caller.ancestors.some((a) => a.pid === b.pid && a.startTime === b.startTime);
  }
  if (caller.cgroup === null) return false;
  return caller.cgroup === b.path || caller.cgroup.startsWith(b.path === '/' ? '/' : `${b.path}/`);
}

/** True when some task also covers its process's descendants: only then do callers' parent chains matter. */
export function anyBoundWithDescendants(tasks: readonly TaskRecord[]): boolean {
  return tasks.some((t) => t.binding.kind === 'process' && t.binding.descendants);
}

export function taskIsLive(task: TaskRecord, now: number): boolean {
  return task.state === 'active' && now < task.expiresAt;
}

export interface ResolveInput {
  caller: CallerFacts;
  /** Entries already matched against the caller's selectors, in their stable order. */
  matchedEntries: RegistrationEntry[];
  /**
   * Tasks (any agent) that may still hold processes: active ones, and finished ones whose bound
   * process or cgroup may still be alive. Live tasks bound to the caller become identities; a
   * caller bound to any of them (live or finished) is a task process and gets nothing else
   * but entries that opt in with includeTasks.
   */
  tasks: readonly TaskRecord[];
  isRevoked: (spiffeId: string) => boolean;
  now: number;
  taskBufferMs: number;
}

/**
 * Orders identities so that svids[0] (the default identity) is stable and meaningful:
 * task identities first (oldest task first) because a process bound to a task acts as that task,
 * then registration entries in the entry index's order (oldest first). Revoked IDs and
 * duplicates of an ID already listed are dropped.
 *
 * Least privilege: a process bound to a task (by pid, as a descendant when the binding says so,
 * or by cgroup) acts as that task only. Its uid or binary may match entries meant for other
 * services; those are withheld unless the entry opts in (includeTasks). Once the task ends or is
 * revoked its process still counts as a task process, so it receives nothing instead of falling
 * back to what its uid matches.
 */
export function resolveIdentities(input: ResolveInput): Identity[] {
  const out: Identity[] = [];
  const seen = new Set<string>();
  const add = (identity: Identity) => {
    const id = identity.spiffeId.toString();
    if (seen.has(id) || input.isRevoked(id)) return;
    if (identity.notAfterCap !== null && identity.notAfterCap - input.now < MIN_REMAINING_MS) return;
    seen.add(id);
    out.push(identity);
  };

  const holding = input.tasks.filter((t) => taskBindingMatches(t, input.caller));
  const boundTasks = holding
    .filter((t) => taskIsLive(t, input.now))
    .sort((a, b) => a.createdAt - b.createdAt || a.agent.localeCompare(b.agent) || a.id.localeCompare(b.id));
  for (const task of boundTasks) add(taskIdentity(task, input.taskBufferMs));

  const isTaskProcess = holding.length > 0;
  for (const entry of input.matchedEntries) {
    if (isTaskProcess && !entry.includeTasks) continue;
    add(entryIdentity(entry));
  }
  return out;
}

/**
 * The first time at which resolveIdentities, given the same caller and the same entries, tasks and
 * revocations, may stop returning these identities. Time alone only takes identities away: an
 * entry or task comes within MIN_REMAINING_MS of its end (entry expiry; task end plus buffer), or
 * a task stops being live (its expiresAt, taskBufferMs before its cap). An identity it does not return can appear later
 * only when one it returns, with the same SPIFFE ID, goes; a task process stays one whatever the
 * time. So the earliest of those ends among the returned identities bounds the answer.
 */
export function identitiesUnchangedUntil(identities: readonly Identity[], taskBufferMs: number): number {
  let until = Infinity;
  for (const identity of identities) {
    if (identity.notAfterCap === null) continue;
    until = Math.min(until, identity.notAfterCap - MIN_REMAINING_MS + 1);
    if (identity.task) until = Math.min(until, identity.notAfterCap - taskBufferMs);
  }
  return until;
}

/**
 * Identities made per record, once: a record is replaced, never changed, when its entry or task
 * changes, and every stream and call of the same task or entry resolves to the same identity (a
 * reconnect storm resolves thousands of callers to a few hundred of them). Identities are never
 * changed after they are made.
 */
const taskIdentities = new WeakMap<TaskRecord, Identity>();
const entryIdentities = new WeakMap<RegistrationEntry, Identity>();

/** A task's identity (its SVIDs end at the task's end plus the buffer). */
export function taskIdentity(task: TaskRecord, taskBufferMs: number): Identity {
  const known = taskIdentities.get(task);
  if (known && known.notAfterCap === task.expiresAt + taskBufferMs) return known;
  const identity = makeTaskIdentity(task, taskBufferMs);
  taskIdentities.set(task, identity);
  return identity;
}

/** A registration entry's identity. */
export function entryIdentity(entry: RegistrationEntry): Identity {
  let identity = entryIdentities.get(entry);
  if (!identity) entryIdentities.set(entry, (identity = makeEntryIdentity(entry)));
  return identity;
}

function makeTaskIdentity(task: TaskRecord, taskBufferMs: number): Identity {
  return {
    key: taskKey(task.agent, task.id),
    spiffeId: SpiffeId.parse(task.spiffeId),
    x509TtlMs: task.x509TtlMs,
    jwtTtlMs: task.jwtTtlMs,
    hint: `task:${task.agent}/${task.id}`,
    dnsNames: [],
    federatesWith: [],
    notAfterCap: task.expiresAt + taskBufferMs,
    task: { agent: task.agent, id: task.id },
    entryId: null,
    matchedSelectors: task.binding.kind === 'process' ? [`task:pid:${task.binding.pid}`] : [`task:cgroup:${task.binding.path}`],
  };
}

function makeEntryIdentity(entry: RegistrationEntry): Identity {
  return {
    key: `entry:${entry.id}`,
    spiffeId: SpiffeId.parse(entry.spiffeId),
    x509TtlMs: entry.x509TtlMs,
    jwtTtlMs: entry.jwtTtlMs,
    hint: entry.hint,
    dnsNames: entry.dnsNames,
    federatesWith: entry.federatesWith,
    notAfterCap: entry.expiresAt,
    task: null,
    entryId: entry.id,
    matchedSelectors: entry.selectors.map(formatSelector),
  };
}
