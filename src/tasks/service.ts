import type { Clock } from '../common/clock.js';
import { assertAuditableInput, type AuditEventInput, type AuditSink } from '../audit/index.js';
import { auditActor, describeActor, type Actor } from '../common/actor.js';
import { ProblemList, alreadyExists, failedPrecondition, invalidArgument, notFound, permissionDenied } from '../common/errors.js';
import { isNodeName, taskSpiffeId, type TrustDomain } from '../spiffe/spiffe-id.js';
import type { Datastore, TaskBinding, TaskRecord, TaskState } from '../datastore/types.js';
import type { Revoker } from './revocations.js';
import type { ProcessInspector } from '../attest/processes.js';
import { goneBindings } from './liveness.js';

export interface TaskPolicy {
  defaultTtlMs: number;
  maxTtlMs: number;
  x509TtlMs: number;
  jwtTtlMs: number;
  /** cgroup v2 subtree that cgroup bindings must lie in (tasks.cgroup_root); "/" allows any. */
  cgroupRoot?: string;
}

export type { ProcessInspector } from '../attest/processes.js';

export interface StartTaskInput {
  agent: string;
  id: string;
  pid?: number;
  cgroup?: string;
  descendants?: boolean;
  ttlMs?: number;
  metadata?: Record<string, string>;
  /**
   * Binds the task on that node's host instead of the server's: the pid (or cgroup) is not looked
   * up here. Admins only, or the node's own agent forwarding a local orchestrator's start.
   */
  node?: string;
  /**
   * With node and pid: the process's /proc/<pid>/stat start time on that host. Omitted: "" (the
   * node's agent pins the start time it reads when it first sees the task; a process that
   * replaced the pid before then would get the identity; give it to close that window).
   */
  startTime?: string;
}

export interface TaskServiceDeps {
  trustDomain: TrustDomain;
  datastore: Pick<Datastore, 'tasks' | 'transaction'>;
  revoker: Pick<Revoker, 'isRevoked' | 'keepUntilFor' | 'addWithin'>;
  /** The read model: active tasks as streams see them, and a way to wait until a write is visible. */
  state: { activeTasks(): readonly TaskRecord[]; sync(): Promise<void> };
  processes: ProcessInspector;
  policy: TaskPolicy;
  clock: Clock;
  audit: AuditSink;
}

const taskNotFound = (ref: { agent?: string; id: string }) => notFound(`task "${ref.agent ? `${ref.agent}/` : ''}${ref.id}" not found`);

const isUnder = (path: string, root: string) => root === '/' || path === root || path.startsWith(`${root}/`);

const SEGMENT = /^[a-zA-Z0-9._-]+$/;
const META_KEY = /^[a-zA-Z0-9._-]{1,64}$/;
const MAX_META_PAIRS = 32;
const MAX_META_VALUE = 256;

/** Orchestrators act only inside their own agents' namespaces; admins anywhere. */
export function mayActOnAgent(actor: Actor, agent: string): boolean {
  return actor.role === 'admin' || actor.agents.includes(agent);
}

/**
 * Task lifecycle: start (bound to a process or a cgroup), end, revoke, expire. Every end puts the
 * task's SPIFFE ID on the deny list, so a task identity is never issued again once its task is over.
 */
export class TaskService {
  constructor(private readonly deps: TaskServiceDeps) {}

  async start(input: StartTaskInput, actor: Actor): Promise<TaskRecord> {
    const { policy, clock } = this.deps;
    const problems = new ProblemList();
    if (!SEGMENT.test(input.agent) || input.agent === '.' || input.agent === '..') problems.add(`agent "${input.agent}" must be a SPIFFE ID path segment (letters, digits, ".", "_", "-")`);
    if (!SEGMENT.test(input.id) || input.id === '.' || input.id === '..') problems.add(`task "${input.id}" must be a SPIFFE ID path segment (letters, digits, ".", "_", "-")`);
    if ((input.pid === undefined) === (input.cgroup === undefined)) problems.add('exactly one of pid or cgroup is required');
    if (input.pid !== undefined && (!Number.isInteger(input.pid) || input.pid <= 1)) problems.add(`pid ${input.pid} is not a valid process ID`);
    if (input.cgroup !== undefined && (!input.cgroup.startsWith('/') || input.cgroup.split('/').some((s) => s === '.' || s === '..') || input.cgroup === '/')) {
      problems.add(`cgroup "${input.cgroup}" must be an absolute cgroup v2 path below the root, without "." or ".."`);
    }
    if (input.node !== undefined && !isNodeName(input.node)) problems.add(`node "${input.node.slice(0, 140)}" must be a SPIFFE ID path segment (letters, digits, ".", "_", "-")`);
    if (input.startTime !== undefined && (input.node === undefined || input.pid === undefined)) problems.add('start_time applies to pid bindings on a node only');
    if (input.startTime !== undefined && !/^[0-9]{1,20}$/.test(input.startTime)) problems.add('start_time must be the decimal start time from /proc/<pid>/stat');
    if (input.cgroup !== undefined && !isUnder(input.cgroup, policy.cgroupRoot ?? '/')) problems.add(`cgroup "${input.cgroup}" is not below the configured cgroup root ${policy.cgroupRoot}`);
    if (input.cgroup !== undefined && input.descendants) problems.add('descendants applies to pid bindings only (a cgroup binding covers its members)');
    const ttlMs = input.ttlMs ?? policy.defaultTtlMs;
    if (!(ttlMs > 0)) problems.add('ttl must be greater than zero');
    if (ttlMs > policy.maxTtlMs) problems.add(`ttl ${Math.round(ttlMs / 1000)}s exceeds the task policy cap of ${Math.round(policy.maxTtlMs / 1000)}s`);
    const metadata = input.metadata ?? {};
    const pairs = Object.entries(metadata);
    if (pairs.length > MAX_META_PAIRS) problems.add(`at most ${MAX_META_PAIRS} metadata pairs`);
    for (const [k, v] of pairs) {
      if (!META_KEY.test(k)) problems.add(`metadata key "${k.slice(0, 70)}" must be 1-64 of letters, digits, ".", "_", "-"`);
      if (v.length > MAX_META_VALUE) problems.add(`metadata "${k}" is longer than ${MAX_META_VALUE} characters`);
      if (/[\u0000-\u001f\u007f]/.test(v)) problems.add(`metadata "${k}" contains a control character`);
    }
    try {
      problems.throwIfAny('task');
      // Everything below is audited with these values: refuse input the audit log would refuse.
      assertAuditableInput({ type: 'task.started', agent: input.agent, task: input.id, cgroup: input.cgroup, metadata }, 'task');
    } catch (err) {
      // A refused start is a refusal like any other: it lands in the audit trail (who, what, why).
      this.auditDenied(actor, 'task.start', (err as Error).message.slice(0, 1000));
      throw err;
    }

    if (!mayActOnAgent(actor, input.agent)) {
      this.deny(actor, 'task.start', `not allowed to start tasks for agent "${input.agent}"`, input.agent, input.id);
    }
    const spiffeId = taskSpiffeId(this.deps.trustDomain, input.agent, input.id).toString();
    // Task IDs are scoped per agent: another agent's task of the same ID is neither a conflict nor visible.
    if (await this.deps.datastore.tasks.get(input.agent, input.id)) {
      throw alreadyExists(`task "${input.agent}/${input.id}" already exists (task IDs are never reused within an agent)`);
    }
    if (this.deps.revoker.isRevoked(spiffeId)) throw failedPrecondition(`task: ${spiffeId} is revoked and cannot be issued again`);

    let binding: TaskBinding;
    if (input.node !== undefined) {
      // Another host: this /proc says nothing about it. An admin vouches for the binding, or the
      // node's agent does, having checked its local orchestrator's uid against the process.
      if (actor.role !== 'admin' && actor.node !== input.node) {
        this.deny(actor, 'task.start', `binding a task on node "${input.node}" requires the admin role or that node's agent`, input.agent, input.id);
      }
      binding = input.pid !== undefined
        ? { kind: 'process', pid: input.pid, startTime: input.startTime ?? '', descendants: input.descendants ?? false }
        : { kind: 'cgroup', path: input.cgroup! };
    } else if (input.pid !== undefined) {
      const proc = await this.deps.processes.inspect(input.pid);
      if (!proc) throw failedPrecondition(`task: process ${input.pid} does not exist`);
      // An orchestrator may hand its agent's identity only to its own processes. One calling over
      // mTLS has no uid to compare, so it may bind cgroups (which its runtime created) only.
      if (actor.role !== 'admin' && actor.uid === undefined) {
        this.deny(actor, 'task.start', 'a caller without a Unix uid may bind tasks to cgroups only', input.agent, input.id);
      }
      if (actor.role !== 'admin' && proc.uid !== actor.uid) {
        this.deny(actor, 'task.start', `process ${input.pid} belongs to uid ${proc.uid}, not to the caller`, input.agent, input.id);
      }
      binding = { kind: 'process', pid: proc.pid, startTime: proc.startTime, descendants: input.descendants ?? false };
    } else {
      const owners = await this.deps.processes.cgroupProcessOwners(input.cgroup!);
      if (!owners) throw failedPrecondition(`task: cgroup ${input.cgroup} does not exist`);
      // Every process in the subtree gets the task identity: an orchestrator may bind only its own
      // (one without a uid, over mTLS, only a cgroup that is still empty).
      if (actor.role !== 'admin' && [...owners].some((uid) => uid !== actor.uid)) {
        this.deny(actor, 'task.start', `cgroup ${input.cgroup} holds processes of other users`, input.agent, input.id);
      }
      binding = { kind: 'cgroup', path: input.cgroup! };
    }

    const now = clock.now();
    const task = await this.deps.datastore.transaction(async (tx) => {
      const created = await tx.tasks.create({
        id: input.id,
        agent: input.agent,
        spiffeId,
        binding,
        metadata: { ...metadata },
        state: 'active',
        x509TtlMs: Math.min(policy.x509TtlMs, ttlMs),
        jwtTtlMs: Math.min(policy.jwtTtlMs, ttlMs),
        createdAt: now,
        expiresAt: now + ttlMs,
        endedAt: null,
        endReason: null,
        createdBy: describeActor(actor),
        node: input.node ?? null,
      });
      // Inside the transaction: a task that cannot be audited is not started.
      this.deps.audit.append({
        type: 'task.started',
        outcome: 'ok',
        actor: auditActor(actor),
        agent: created.agent,
        task: created.id,
        spiffe_id: spiffeId,
        binding,
        ttl_ms: ttlMs,
        expires_at: created.expiresAt,
        metadata: created.metadata,
        node: created.node ?? undefined,
        by: describeActor(actor),
        role: actor.role,
      });
      return created;
    });
    await this.deps.state.sync();
    return task;
  }

  end(ref: { agent?: string; id: string }, reason: string, actor: Actor): Promise<TaskRecord> {
    assertAuditableInput({ type: 'task.ended', reason }, 'task end');
    return this.finish(ref, 'ended', reason || 'ended', actor);
  }

  async revoke(ref: { agent?: string; id: string }, reason: string, actor: Actor): Promise<TaskRecord> {
    if (actor.role !== 'admin') {
      this.deny(actor, 'task.revoke', 'only admins may revoke', ref.agent ?? '', ref.id);
    }
    if (!reason.trim()) throw invalidArgument('task revoke: a reason is required');
    assertAuditableInput({ type: 'task.revoked', reason }, 'task revoke');
    return this.finish(ref, 'revoked', reason, actor);
  }

  get(ref: { agent?: string; id: string }, actor: Actor): Promise<TaskRecord> {
    return this.resolve(ref, actor, 'task.show');
  }

  async list(filter: { agent?: string; state?: TaskState }, actor: Actor): Promise<TaskRecord[]> {
    if (filter.agent !== undefined && !mayActOnAgent(actor, filter.agent)) {
      this.deny(actor, 'task.list', `not allowed to list tasks of agent "${filter.agent}"`, filter.agent, '');
    }
    return (await this.deps.datastore.tasks.list(filter)).filter((t) => mayActOnAgent(actor, t.agent));
  }

  activeTasks(): readonly TaskRecord[] {
    return this.deps.state.activeTasks();
  }

  /** Ends tasks past their expiry (in one transaction). Returns the earliest expiry still ahead, for the scheduler. */
  async expireDue(actor: Actor): Promise<number | undefined> {
    const now = this.deps.clock.now();
    let next: number | undefined;
    const due: TaskRecord[] = [];
    for (const t of this.activeTasks()) {
      if (t.expiresAt <= now) due.push(t);
      else if (next === undefined || t.expiresAt < next) next = t.expiresAt;
    }
    await this.finishAll(due.map((task) => ({ task, reason: 'task lifetime reached' })), 'expired', actor);
    return next;
  }

  /**
   * Ends tasks whose bound process is gone (a PID that was reused by another process counts as
   * gone). All of a pass's ends go in one transaction: the read model then reports them together
   * and the CRLs are re-signed once, where one transaction each (after a restart, or when many
   * agents exit at once) re-signed and re-sent the CRLs to every stream once per task. Only tasks
   * bound on this host: a task bound on a node lives in that host's /proc, which this one cannot
   * see (its agent reports the end).
   */
  async endOrphaned(actor: Actor): Promise<void> {
    const gone = await goneBindings(this.activeTasks().filter((t) => t.node === null), this.deps.processes);
    await this.finishAll(gone.map((task) => ({ task, reason: task.binding.kind === 'process' ? 'bound process exited' : 'bound cgroup removed' })), 'ended', actor);
  }

  /**
   * For the scheduler: ends tasks in one transaction, each with its audit line and deny-list row
   * (as finishTask). A task ended concurrently (by an admin, or another server) needs nothing more.
   */
  private async finishAll(items: readonly { task: TaskRecord; reason: string }[], state: 'ended' | 'expired', actor: Actor): Promise<void> {
    if (items.length === 0) return;
    const keepUntil = new Map<string, number>();
    for (const { task } of items) keepUntil.set(task.spiffeId, await this.deps.revoker.keepUntilFor(task.spiffeId));
    await this.deps.datastore.transaction(async (tx) => {
      for (const { task, reason } of items) {
        const current = await tx.tasks.get(task.agent, task.id);
        if (current?.state !== 'active') continue;
        await tx.tasks.finish(task.agent, task.id, state, this.deps.clock.now(), reason);
        const audited = state === 'expired' ? `expired: ${reason}` : reason;
        const ended: AuditEventInput = { type: 'task.ended', outcome: 'ok', actor: auditActor(actor), agent: task.agent, task: task.id, spiffe_id: task.spiffeId, reason: audited };
        await this.deps.revoker.addWithin(tx, task.spiffeId, `task ${state}: ${reason}`, actor, keepUntil.get(task.spiffeId)!, [ended]);
      }
    });
    await this.deps.state.sync();
  }

  private async finish(ref: { agent?: string; id: string }, state: Exclude<TaskState, 'active'>, reason: string, actor: Actor): Promise<TaskRecord> {
    const task = await this.resolve(ref, actor, `task.${state === 'revoked' ? 'revoke' : 'end'}`);
    return this.finishTask(task, state, reason, actor);
  }

  /**
   * One transaction: the task's final state, its audit line and its deny-list row (with its audit
   * line) are all written or none is; the caller is told the truth either way.
   */
  private async finishTask(task: TaskRecord, state: Exclude<TaskState, 'active'>, reason: string, actor: Actor): Promise<TaskRecord> {
    const keepUntil = await this.deps.revoker.keepUntilFor(task.spiffeId);
    const finished = await this.deps.datastore.transaction(async (tx) => {
      const current = await tx.tasks.get(task.agent, task.id);
      if (!current) throw notFound(`task "${task.agent}/${task.id}" not found`);
      let result = current;
      const taskAudit: AuditEventInput[] = [];
      if (current.state === 'active') {
        result = await tx.tasks.finish(task.agent, task.id, state, this.deps.clock.now(), reason);
        const common = { outcome: 'ok' as const, actor: auditActor(actor), agent: task.agent, task: task.id, spiffe_id: task.spiffeId };
        taskAudit.push(
          state === 'revoked'
            ? { ...common, type: 'task.revoked', reason, by: describeActor(actor) }
            : { ...common, type: 'task.ended', reason: state === 'expired' ? `expired: ${reason}` : reason },
        );
      } else if (state !== 'revoked') {
        throw failedPrecondition(`task "${task.id}" is already ${current.state}`);
      }
      // Revoking an ended task still matters: its SVIDs may not have expired yet. The task's audit
      // line is written with the revocation's (one fsync for the call, not two).
      await this.deps.revoker.addWithin(tx, task.spiffeId, `task ${state}: ${reason}`, actor, keepUntil, taskAudit);
      return result;
    });
    await this.deps.state.sync();
    return finished;
  }

  /**
   * Finds a task by agent and ID, or by ID alone among the agents the caller may act on. An
   * orchestrator learns nothing about other agents' tasks: their IDs are simply not found.
   */
  private async resolve(ref: { agent?: string; id: string }, actor: Actor, action: string): Promise<TaskRecord> {
    if (ref.agent !== undefined && ref.agent !== '') {
      if (!mayActOnAgent(actor, ref.agent)) this.hide(actor, action, ref);
      const task = await this.deps.datastore.tasks.get(ref.agent, ref.id);
      if (!task) throw taskNotFound(ref);
      return task;
    }
    const all = await this.deps.datastore.tasks.findById(ref.id);
    const visible = all.filter((t) => mayActOnAgent(actor, t.agent));
    if (visible.length === 0) {
      if (all.length > 0) this.hide(actor, action, ref, all[0]!.agent);
      throw taskNotFound(ref);
    }
    if (visible.length > 1) {
      throw invalidArgument(`task "${ref.id}" exists in several agents (${visible.map((t) => t.agent).join(', ')}): name the agent (--agent)`);
    }
    return visible[0]!;
  }

  /**
   * Refuses a task of an agent the caller may not act on exactly as a missing one: an orchestrator
   * learns neither that the task exists nor which agent holds it. The audit trail has the truth.
   */
  private hide(actor: Actor, action: string, ref: { agent?: string; id: string }, agent = ref.agent): never {
    this.auditDenied(actor, action, `not allowed to act on tasks of agent "${agent}" (task ${agent}/${ref.id})`);
    throw taskNotFound(ref);
  }

  private deny(actor: Actor, action: string, reason: string, agent: string, task: string): never {
    const target = agent ? ` (task ${agent}/${task})` : '';
    this.auditDenied(actor, action, `${reason}${target}`);
    throw permissionDenied(`${action}: ${reason}`);
  }

  /** Audits a refusal; a reason quoting caller input the audit log refuses is recorded without it. */
  private auditDenied(actor: Actor, action: string, reason: string): void {
    const append = (r: string) =>
      this.deps.audit.append({ type: 'admin.denied', outcome: 'denied', actor: auditActor(actor), who: describeActor(actor), role: actor.role, action, reason: r });
    try {
      append(reason);
    } catch {
      append(`${action} refused (details withheld: the request quoted something that looks like key material or a token)`);
    }
  }
}
