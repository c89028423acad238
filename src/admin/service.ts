import type * as grpc from '@grpc/grpc-js';
import type { Logger } from '../common/logger.js';
import type { AuditSink } from '../audit/index.js';
import type { Actor } from '../common/actor.js';
import { describeActor, auditActor } from '../common/actor.js';
import { failedPrecondition, invalidArgument, permissionDenied } from '../common/errors.js';
import { toGrpcError } from '../common/grpc-errors.js';
import type { NodeRecord, RegistrationEntry, Revocation, TaskRecord, TaskState } from '../datastore/types.js';
import type { EntryService } from '../entries/service.js';
import type { EntryInput } from '../entries/validate.js';
import type { TaskService } from '../tasks/service.js';
import type { Revoker } from '../tasks/revocations.js';
import type { PeerRegistry } from '../workload/peers.js';
import { actorForUid, type RoleConfig } from './roles.js';
import { authorityHandlers, type AuthorityService } from './authorities.js';
import type { NodeService } from '../nodes/service.js';

/**
 * Who is calling: the role the caller holds, or, when it holds none, how to name it in the audit
 * trail and why it was refused. Each transport proves the caller its own way (Unix socket: kernel
 * uid; mTLS listener: verified client SVID) and maps it here.
 */
export type AdminCaller = { actor: Actor } | { actor?: undefined; who: string; reason: string };
export type CallerOf = (call: { getPeer(): string }) => AdminCaller;

/** The Unix admin socket's caller: the peer uid read at accept (PeerRegistry), mapped by RoleConfig. */
export function uidCallerOf(peers: PeerRegistry, roles: RoleConfig): CallerOf {
  return (call) => {
    const peer = peers.lookup(call.getPeer());
    if (!peer) return { who: 'unknown', reason: 'connection has no peer credentials' };
    const actor = actorForUid(peer.uid, roles);
    return actor ? { actor } : { who: `uid:${peer.uid}`, reason: 'caller has no admin role' };
  };
}

/** Either a caller function, or the Unix socket's peer registry and uid roles (the original form). */
export type AdminCallerDeps = { callerOf: CallerOf } | { peers: PeerRegistry; roles: RoleConfig };

export type AdminDeps = AdminCallerDeps & AdminServiceDeps;

export interface AdminServiceDeps {
  entries: EntryService;
  tasks: TaskService;
  revoker: Revoker;
  /** Live X.509 serials and issuance count of a SPIFFE ID, for `task show`. */
  issuanceSummary: (spiffeId: string) => Promise<{ liveSerials: string[]; count: number }>;
  audit: AuditSink;
  logger: Logger;
  /** CA and JWT key prepare/activate/taint/revoke (admin/authorities.ts); absent: not offered. */
  authorities?: AuthorityService;
  /** Per-host agents: join tokens, node list, eviction (src/nodes); absent: not offered. */
  nodes?: NodeService;
  /** Issues a one-time web console sign-in link for this actor; absent when the console is off. */
  consoleLogin?: (actor: Actor) => { url: string; expiresAt: number };
}

/**
 * Refuses (and audits) a caller without the admin role. Exported so every edge that offers
 * admin-only operations (the web console too) applies the very same rule.
 */
export function requireAdmin(actor: Actor, action: string, audit: AuditSink): void {
  if (actor.role !== 'admin') {
    audit.append({ type: 'admin.denied', outcome: 'denied', actor: auditActor(actor), who: describeActor(actor), role: actor.role, action, reason: 'admin role required' });
    throw permissionDenied(`${action}: requires the admin role (caller is ${describeActor(actor)})`);
  }
}

const seconds = (ms: number | null) => (ms === null ? 0 : Math.floor(ms / 1000));
const TASK_STATES: ReadonlySet<string> = new Set(['active', 'ended', 'revoked', 'expired']);

export function entryToWire(e: RegistrationEntry) {
  return {
    id: e.id,
    spiffe_id: e.spiffeId,
    selectors: e.selectors.map((s) => `${s.type}:${s.value}`),
    x509_ttl_seconds: seconds(e.x509TtlMs),
    jwt_ttl_seconds: seconds(e.jwtTtlMs),
    hint: e.hint,
    dns_names: e.dnsNames,
    federates_with: e.federatesWith,
    include_tasks: e.includeTasks,
    node: e.node ?? '',
    expires_at: seconds(e.expiresAt),
    created_at: seconds(e.createdAt),
    updated_at: seconds(e.updatedAt),
    revision: e.revision,
  };
}

interface WireEntryInput {
  spiffe_id: string;
  selectors: string[];
  x509_ttl_seconds: number;
  jwt_ttl_seconds: number;
  hint: string;
  dns_names: string[];
  federates_with: string[];
  include_tasks: boolean;
  expires_at: number;
  node?: string;
}

function entryFromWire(w: WireEntryInput | null | undefined): EntryInput {
  if (!w) throw invalidArgument('entry: missing');
  return {
    spiffeId: w.spiffe_id,
    selectors: w.selectors,
    x509TtlMs: w.x509_ttl_seconds > 0 ? w.x509_ttl_seconds * 1000 : undefined,
    jwtTtlMs: w.jwt_ttl_seconds > 0 ? w.jwt_ttl_seconds * 1000 : undefined,
    hint: w.hint,
    dnsNames: w.dns_names,
    federatesWith: w.federates_with,
    includeTasks: w.include_tasks === true,
    expiresAt: w.expires_at > 0 ? w.expires_at * 1000 : null,
    node: w.node ? w.node : null,
  };
}

export function nodeToWire(n: NodeRecord) {
  return {
    name: n.name,
    spiffe_id: n.spiffeId,
    attestation: n.attestation,
    state: n.state,
    task_agents: n.taskAgents,
    created_at: seconds(n.createdAt),
    last_seen_at: seconds(n.lastSeenAt),
    svid_expires_at: seconds(n.svidExpiresAt),
    evicted_at: seconds(n.evictedAt),
  };
}

export function revocationToWire(r: Revocation) {
  return { spiffe_id: r.spiffeId, reason: r.reason, revoked_at: seconds(r.revokedAt), revoked_by: r.revokedBy, keep_until: seconds(r.keepUntil) };
}

/** A task as the admin API returns it (agentid.admin.v1.Task). */
export function taskRecordToWire(t: TaskRecord, summary: { liveSerials: string[]; count: number }) {
  return {
    agent: t.agent,
    id: t.id,
    spiffe_id: t.spiffeId,
    state: t.state,
    binding_kind: t.binding.kind,
    pid: t.binding.kind === 'process' ? t.binding.pid : 0,
    start_time: t.binding.kind === 'process' ? t.binding.startTime : '',
    descendants: t.binding.kind === 'process' ? t.binding.descendants : false,
    cgroup: t.binding.kind === 'cgroup' ? t.binding.path : '',
    metadata: t.metadata,
    created_at: seconds(t.createdAt),
    expires_at: seconds(t.expiresAt),
    ended_at: seconds(t.endedAt),
    end_reason: t.endReason ?? '',
    created_by: t.createdBy,
    live_serials: summary.liveSerials,
    issuance_count: summary.count,
    node: t.node ?? '',
  };
}

/** gRPC handlers of agentid.admin.v1.AgentIdAdmin. Every call is authorized by the role `callerOf` maps its caller to. */
export function adminHandlers(deps: AdminDeps): grpc.UntypedServiceImplementation {
  const callerOf = 'callerOf' in deps ? deps.callerOf : uidCallerOf(deps.peers, deps.roles);
  const taskToWire = async (t: TaskRecord) => taskRecordToWire(t, await deps.issuanceSummary(t.spiffeId));

  function actorOf(call: { getPeer(): string }, method: string): Actor {
    const caller = callerOf(call);
    if (!caller.actor) {
      try {
        deps.audit.append({ type: 'admin.denied', outcome: 'denied', who: caller.who, role: 'none', action: method, reason: caller.reason });
      } catch {
        // The caller's identity (a SPIFFE ID path) looks like a secret to the audit log: record the refusal without it.
        deps.audit.append({ type: 'admin.denied', outcome: 'denied', who: '(withheld)', role: 'none', action: method, reason: 'caller refused; its identity looked like key material or a token' });
      }
      throw permissionDenied(`${method}: caller has no role on the admin API`);
    }
    return caller.actor;
  }

  const adminOnly = (actor: Actor, method: string) => requireAdmin(actor, method, deps.audit);

  type Handler = (req: any, actor: Actor) => unknown | Promise<unknown>;
  const unary = (method: string, handler: Handler): grpc.handleUnaryCall<unknown, unknown> =>
    (call, callback) => {
      (async () => handler(call.request, actorOf(call, method)))().then(
        (res) => callback(null, res),
        (err) => callback(toGrpcError(err, deps.logger, { method })),
      );
    };
  const admin = (method: string, handler: Handler) =>
    unary(method, (req, actor) => {
      adminOnly(actor, method);
      return handler(req, actor);
    });

  const taskRef = (req: { agent: string; id: string }) => ({ agent: req.agent || undefined, id: req.id });

  return {
    CreateEntry: admin('CreateEntry', async (req, actor) => entryToWire(await deps.entries.create(entryFromWire(req.entry), actor))),
    UpdateEntry: admin('UpdateEntry', async (req, actor) =>
      entryToWire(await deps.entries.update(req.id, entryFromWire(req.entry), actor, req.expected_revision > 0 ? req.expected_revision : undefined))),
    DeleteEntry: admin('DeleteEntry', async (req, actor) => entryToWire(await deps.entries.delete(req.id, actor))),
    GetEntry: admin('GetEntry', async (req) => entryToWire(await deps.entries.get(req.id))),
    ListEntries: admin('ListEntries', async () => ({ entries: (await deps.entries.list()).map(entryToWire) })),

    StartTask: unary('StartTask', async (req, actor) =>
      await taskToWire(
        await deps.tasks.start(
          {
            agent: req.agent,
            id: req.id,
            pid: req.pid > 0 ? req.pid : undefined,
            cgroup: req.cgroup || undefined,
            descendants: req.descendants,
            ttlMs: req.ttl_seconds > 0 ? req.ttl_seconds * 1000 : undefined,
            metadata: req.metadata,
            node: req.node || undefined,
            startTime: req.start_time || undefined,
          },
          actor,
        ),
      )),
    EndTask: unary('EndTask', async (req, actor) => taskToWire(await deps.tasks.end(taskRef(req), req.reason, actor))),
    RevokeTask: unary('RevokeTask', async (req, actor) => taskToWire(await deps.tasks.revoke(taskRef(req), req.reason, actor))),
    GetTask: unary('GetTask', async (req, actor) => taskToWire(await deps.tasks.get(taskRef(req), actor))),
    ListTasks: unary('ListTasks', async (req, actor) => {
      if (req.state && !TASK_STATES.has(req.state)) throw invalidArgument(`task list: state must be one of ${[...TASK_STATES].join(', ')}`);
      const tasks = await deps.tasks.list({ agent: req.agent || undefined, state: (req.state || undefined) as TaskState | undefined }, actor);
      return { tasks: await Promise.all(tasks.map(taskToWire)) };
    }),

    ListRevocations: admin('ListRevocations', async () => ({ revocations: (await deps.revoker.list()).map(revocationToWire) })),
    WhoAmI: unary('WhoAmI', (_req, actor) => ({ role: actor.role, agents: actor.agents, caller: describeActor(actor) })),
    ...(deps.authorities ? authorityHandlers(deps.authorities, admin) : {}),
    ...(deps.nodes ? nodeHandlers(deps.nodes, admin) : {}),
    CreateConsoleLogin: unary('CreateConsoleLogin', (_req, actor) => {
      if (!deps.consoleLogin) throw failedPrecondition('the web console is not enabled (set console.listen or --console-listen)');
      const login = deps.consoleLogin(actor);
      return { url: login.url, expires_at: seconds(login.expiresAt) };
    }),
  };
}

type AdminHandler = (method: string, handler: (req: any, actor: Actor) => unknown | Promise<unknown>) => grpc.handleUnaryCall<unknown, unknown>;

/** Join tokens and nodes (admin only). The token is in the response and nowhere else: not logged, not audited. */
function nodeHandlers(nodes: NodeService, admin: AdminHandler): grpc.UntypedServiceImplementation {
  return {
    GenerateJoinToken: admin('GenerateJoinToken', async (req, actor) => {
      const t = await nodes.generateJoinToken(
        { node: req.node, ttlMs: req.ttl_seconds > 0 ? req.ttl_seconds * 1000 : undefined, taskAgents: req.task_agents },
        actor,
      );
      return { token: t.token, node: t.node, expires_at: seconds(t.expiresAt) };
    }),
    ListNodes: admin('ListNodes', async () => ({ nodes: (await nodes.list()).map(nodeToWire) })),
    GetNode: admin('GetNode', async (req) => nodeToWire(await nodes.get(req.name))),
    EvictNode: admin('EvictNode', async (req, actor) => nodeToWire((await nodes.evict(req.name, req.reason, actor)).node)),
    SetNodeTaskAgents: admin('SetNodeTaskAgents', async (req, actor) => nodeToWire(await nodes.setTaskAgents(req.name, req.task_agents ?? [], req.reason ?? '', actor))),
  };
}
