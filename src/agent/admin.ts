import type * as grpc from '@grpc/grpc-js';
import type { Actor } from '../common/actor.js';
import { describeActor } from '../common/actor.js';
import { AgentIdError, failedPrecondition, invalidArgument, notFound, permissionDenied } from '../common/errors.js';
import { toGrpcError } from '../common/grpc-errors.js';
import type { Logger } from '../common/logger.js';
import type { TaskRecord } from '../datastore/types.js';
import type { ProcessInspector } from '../attest/processes.js';
import { actorForUid, type RoleConfig } from '../admin/roles.js';
import { taskRecordToWire } from '../admin/service.js';
import { mayActOnAgent } from '../tasks/service.js';
import type { PeerRegistry } from '../workload/peers.js';
import type { WireForwardedStartTask, WireForwardedTaskRef } from './node-client.js';

export interface AgentAdminDeps {
  peers: PeerRegistry;
  roles: RoleConfig;
  processes: Pick<ProcessInspector, 'inspect' | 'cgroupProcessOwners'>;
  /** The server's StartTask/EndTask for this node; throws unavailable while disconnected. */
  forward: {
    startTask(req: WireForwardedStartTask): Promise<{ task: string }>;
    endTask(req: WireForwardedTaskRef): Promise<{ task: string }>;
  };
  /** The task as the local replica holds it. */
  localTask(agent: string, id: string): Promise<TaskRecord | undefined>;
  /** Resolves once the replica holds the task started (and its first SVID is fetched), so `agentid run`'s command finds its identity at once. */
  started(task: TaskRecord): Promise<void>;
  logger: Logger;
}

const NO_SUMMARY = { liveSerials: [] as string[], count: 0 };

function parseTask(json: string): TaskRecord {
  try {
    return JSON.parse(json) as TaskRecord;
  } catch (err) {
    throw new AgentIdError('internal', 'the agentid server answered with a task that does not parse', { cause: err });
  }
}

/**
 * The agent's admin socket: what `agentid run` needs on this host (StartTask, EndTask, GetTask,
 * WhoAmI), for local uids mapped to roles by the agent's config. Starts and ends are forwarded to
 * the server, which decides (the node must be granted the namespace); the agent adds what only
 * it can see: the caller's uid and the bound process's start time from this host's /proc. Every
 * other admin method is answered UNIMPLEMENTED (no handler).
 */
export function agentAdminHandlers(deps: AgentAdminDeps): grpc.UntypedServiceImplementation {
  const actorOf = (call: { getPeer(): string }, method: string): Actor & { uid: number } => {
    const peer = deps.peers.lookup(call.getPeer());
    const actor = peer ? actorForUid(peer.uid, deps.roles) : undefined;
    if (!peer || !actor) {
      deps.logger.warn({ uid: peer?.uid, method }, 'agent admin: caller has no role');
      throw permissionDenied(`${method}: caller has no role on this agent's admin socket`);
    }
    return { ...actor, uid: peer.uid };
  };
  const checkAgent = (actor: Actor, agent: string, method: string) => {
    if (!agent) throw invalidArgument(`${method}: agent must be given`);
    if (!mayActOnAgent(actor, agent)) throw permissionDenied(`${method}: ${describeActor(actor)} may not act on agent "${agent}"`);
  };
  type Handler = (req: any, actor: Actor & { uid: number }) => unknown | Promise<unknown>;
  const unary = (method: string, handler: Handler): grpc.handleUnaryCall<unknown, unknown> =>
    (call, callback) => {
      (async () => handler(call.request, actorOf(call, method)))().then(
        (res) => callback(null, res),
        (err) => callback(toGrpcError(err, deps.logger, { method })),
      );
    };

  return {
    StartTask: unary('StartTask', async (req, actor) => {
      checkAgent(actor, req.agent, 'StartTask');
      let startTime = '';
      if (req.pid > 0) {
        // The server cannot see this host's processes: the agent reads the start time (PID reuse
        // never matches) and checks ownership as the server does for local callers.
        const proc = await deps.processes.inspect(req.pid);
        if (!proc) throw failedPrecondition(`task: process ${req.pid} does not exist`);
        if (actor.role !== 'admin' && proc.uid !== actor.uid) throw permissionDenied(`task: process ${req.pid} belongs to uid ${proc.uid}, not to the caller`);
        startTime = proc.startTime;
      } else if (req.cgroup) {
        const owners = await deps.processes.cgroupProcessOwners(req.cgroup);
        if (!owners) throw failedPrecondition(`task: cgroup ${req.cgroup} does not exist`);
        if (actor.role !== 'admin' && [...owners].some((uid) => uid !== actor.uid)) throw permissionDenied(`task: cgroup ${req.cgroup} holds processes of other users`);
      } else {
        throw invalidArgument('task: give a pid or a cgroup to bind the task to');
      }
      const { task } = await deps.forward.startTask({
        agent: req.agent,
        id: req.id,
        pid: req.pid,
        start_time: startTime,
        descendants: req.descendants,
        cgroup: req.cgroup,
        ttl_seconds: req.ttl_seconds,
        metadata: req.metadata,
        caller_uid: actor.uid,
      });
      const record = parseTask(task);
      await deps.started(record);
      return taskRecordToWire(record, NO_SUMMARY);
    }),
    EndTask: unary('EndTask', async (req, actor) => {
      checkAgent(actor, req.agent, 'EndTask');
      const { task } = await deps.forward.endTask({ agent: req.agent, id: req.id, reason: req.reason, caller_uid: actor.uid });
      return taskRecordToWire(parseTask(task), NO_SUMMARY);
    }),
    GetTask: unary('GetTask', async (req, actor) => {
      checkAgent(actor, req.agent, 'GetTask');
      const task = await deps.localTask(req.agent, req.id);
      if (!task) throw notFound(`task "${req.agent}/${req.id}" is not bound on this node`);
      return taskRecordToWire(task, NO_SUMMARY);
    }),
    WhoAmI: unary('WhoAmI', (_req, actor) => ({ role: actor.role, agents: actor.agents, caller: describeActor(actor) })),
  };
}
