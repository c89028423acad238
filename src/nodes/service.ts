import { createHash, randomBytes } from 'node:crypto';
import type { Clock } from '../common/clock.js';
import { auditActor, describeActor, type Actor } from '../common/actor.js';
import { AgentIdError, ProblemList, failedPrecondition, invalidArgument, isAgentIdError, notFound, permissionDenied } from '../common/errors.js';
import type { AuditSink } from '../audit/index.js';
import type { MintedJwtSvid, MintedX509Svid } from '../ca/authority.js';
import type { Datastore, IssuanceRecord, NodeAttestation, NodeRecord, TaskRecord } from '../datastore/types.js';
import type { ReadModel } from '../state/read-model.js';
import type { Revoker } from '../tasks/revocations.js';
import type { TaskService } from '../tasks/service.js';
import { isNodeName, nodeSpiffeId, SpiffeId, type TrustDomain } from '../spiffe/spiffe-id.js';
import { entryGrant, mayForwardTask, taskGrant, type MintGrant } from './authorize.js';
import { verifyHostChain } from './x509pop.js';

export interface NodePolicy {
  /** Lifetime of node SVIDs (agents.node_svid_ttl). */
  nodeSvidTtlMs: number;
  /** Task SVIDs never outlive the task's end plus this (tasks.buffer). */
  taskBufferMs: number;
  /** DER CA certificates trusted for x509pop (agents.x509pop.ca_bundle); empty: x509pop is refused. */
  x509popRoots: readonly Buffer[];
}

/** The CA operations nodes need: SVIDs for public keys the agents generated, and JWT-SVIDs. */
export interface NodeMinter {
  mintX509SvidForKey(req: { spiffeId: SpiffeId; ttlMs: number; dnsNames?: string[]; spki: Buffer }): Omit<MintedX509Svid, 'privateKeyPkcs8'>;
  mintJwtSvid(req: { spiffeId: SpiffeId; audience: string[]; ttlMs: number }): MintedJwtSvid;
}

export interface NodeServiceDeps {
  trustDomain: TrustDomain;
  datastore: Pick<Datastore, 'nodes' | 'joinTokens' | 'tasks' | 'transaction'>;
  state: Pick<ReadModel, 'node' | 'entries' | 'activeTask' | 'isRevoked' | 'sync'>;
  minter: NodeMinter;
  /** Issuance records (batched, as for the server's own SVIDs). */
  /**
   * Records issuances; a Promise settles once they are durable (server/storage.ts's journal): the
   * X.509-SVIDs of MintX509Svids are answered only then, so a CRL can list them after any crash.
   */
  recordIssuances: (records: IssuanceRecord[]) => void | Promise<void>;
  revoker: Pick<Revoker, 'keepUntilFor' | 'addWithin'>;
  tasks: Pick<TaskService, 'start' | 'end' | 'revoke'>;
  policy: NodePolicy;
  clock: Clock;
  audit: AuditSink;
}

export interface IssuedNodeSvid {
  node: NodeRecord;
  svid: Omit<MintedX509Svid, 'privateKeyPkcs8'>;
}

export type MintResult = { ok: Omit<MintedX509Svid, 'privateKeyPkcs8'> } | { error: AgentIdError };

/** Join tokens: 32 random bytes, base64url; the server keeps only their SHA-256. */
const hashToken = (token: string) => createHash('sha256').update(token, 'utf8').digest('hex');
const TOKEN_PATTERN = /^[A-Za-z0-9_-]{43}$/;
export const DEFAULT_JOIN_TOKEN_TTL_MS = 3_600_000;
export const MAX_JOIN_TOKEN_TTL_MS = 7 * 86_400_000;
const SEGMENT = /^[a-zA-Z0-9._-]+$/;

/** Agent namespaces a node may start tasks for, without repeats; each must be a SPIFFE ID path segment. */
function taskAgentList(agents: readonly string[], problems: ProblemList): string[] {
  const unique = [...new Set(agents)];
  for (const a of unique) if (!SEGMENT.test(a) || a === '.' || a === '..') problems.add(`task agent "${a.slice(0, 70)}" must be a SPIFFE ID path segment`);
  return unique;
}
const YIELD_EVERY = 64;

/**
 * Per-host agents on the server: join tokens, node attestation and SVIDs, eviction, and what an
 * attested node may mint and forward. Authorization rules are the pure functions of authorize.ts;
 * this class gathers the records, writes, and audits.
 */
export class NodeService {
  constructor(private readonly deps: NodeServiceDeps) {}

  // -- admin ---------------------------------------------------------------------------------

  async generateJoinToken(input: { node: string; ttlMs?: number; taskAgents?: string[] }, actor: Actor): Promise<{ token: string; node: string; expiresAt: number }> {
    const problems = new ProblemList();
    if (!isNodeName(input.node)) problems.add(`node "${input.node.slice(0, 140)}" must be a SPIFFE ID path segment (letters, digits, ".", "_", "-")`);
    const ttlMs = input.ttlMs ?? DEFAULT_JOIN_TOKEN_TTL_MS;
    if (!Number.isSafeInteger(ttlMs) || ttlMs < 1000) problems.add('ttl must be at least one second');
    if (ttlMs > MAX_JOIN_TOKEN_TTL_MS) problems.add(`ttl must be at most ${MAX_JOIN_TOKEN_TTL_MS / 86_400_000} days`);
    const taskAgents = taskAgentList(input.taskAgents ?? [], problems);
    problems.throwIfAny('join token');
    const existing = await this.deps.datastore.nodes.get(input.node);
    if (existing?.state === 'evicted') throw failedPrecondition(`node ${input.node} was evicted; attest the host under another name`);
    const token = randomBytes(32).toString('base64url');
    const now = this.deps.clock.now();
    const expiresAt = now + ttlMs;
    await this.deps.datastore.transaction(async (tx) => {
      await tx.joinTokens.create({ hash: hashToken(token), node: input.node, taskAgents, createdAt: now, expiresAt, usedAt: null, createdBy: describeActor(actor) });
      // Inside the transaction: a token that cannot be audited is not issued. Never the token itself.
      this.deps.audit.append({
        type: 'node.join_token_created', outcome: 'ok', actor: auditActor(actor), node: input.node,
        expires_at: expiresAt, task_agents: taskAgents, by: describeActor(actor),
      });
    });
    return { token, node: input.node, expiresAt };
  }

  async list(): Promise<NodeRecord[]> {
    return this.deps.datastore.nodes.list();
  }

  async get(name: string): Promise<NodeRecord> {
    const node = await this.deps.datastore.nodes.get(name);
    if (!node) throw notFound(`node ${name} not found`);
    return node;
  }

  /**
   * Replaces the agent namespaces whose tasks a node may forward (join tokens set them at
   * attestation; this is how an x509pop node gets any, and how a grant is widened or narrowed).
   * Tasks already started keep running; the list is checked at each forwarded start.
   */
  async setTaskAgents(name: string, taskAgents: readonly string[], reason: string, actor: Actor): Promise<NodeRecord> {
    if (actor.role !== 'admin') throw permissionDenied('node task-agents: requires the admin role');
    const problems = new ProblemList();
    const agents = taskAgentList(taskAgents, problems);
    problems.throwIfAny('node task-agents');
    const why = reason.trim();
    const updated = await this.deps.datastore.transaction(async (tx) => {
      const fresh = await tx.nodes.get(name);
      if (!fresh) throw notFound(`node ${name} not found`);
      if (fresh.state === 'evicted') throw failedPrecondition(`node ${name} is evicted`);
      const record = await tx.nodes.put({ ...fresh, taskAgents: agents });
      this.deps.audit.append({
        type: 'node.task_agents_set', outcome: 'ok', actor: auditActor(actor), node: name, spiffe_id: fresh.spiffeId,
        task_agents: agents, previous_task_agents: fresh.taskAgents, ...(why ? { reason: why } : {}), by: describeActor(actor),
      });
      return record;
    });
    await this.deps.state.sync();
    return updated;
  }

  /**
   * Evicts a node: its record says evicted, its SPIFFE ID goes on the deny list (its node SVID is
   * refused at once, on every call and by every CRL consumer), and every active task bound on it
   * is revoked. The agent's Sync stream is told and closed by the listener (it follows the node
   * change). Returns the evicted record and how many tasks were revoked.
   */
  async evict(name: string, reason: string, actor: Actor): Promise<{ node: NodeRecord; tasksRevoked: number }> {
    if (actor.role !== 'admin') throw permissionDenied('node evict: requires the admin role');
    const why = reason.trim() || 'evicted by an operator';
    const current = await this.get(name);
    if (current.state === 'evicted') throw failedPrecondition(`node ${name} is already evicted`);
    const keepUntil = Math.max(await this.deps.revoker.keepUntilFor(current.spiffeId), current.svidExpiresAt);
    const now = this.deps.clock.now();
    const evicted = await this.deps.datastore.transaction(async (tx) => {
      const fresh = await tx.nodes.get(name);
      if (!fresh) throw notFound(`node ${name} not found`);
      if (fresh.state === 'evicted') throw failedPrecondition(`node ${name} is already evicted`);
      const record = await tx.nodes.put({ ...fresh, state: 'evicted', evictedAt: now });
      await this.deps.revoker.addWithin(tx, fresh.spiffeId, `node evicted: ${why}`, actor, keepUntil);
      this.deps.audit.append({ type: 'node.evicted', outcome: 'ok', actor: auditActor(actor), node: name, spiffe_id: fresh.spiffeId, reason: why, by: describeActor(actor) });
      return record;
    });
    let tasksRevoked = 0;
    for (const task of await this.deps.datastore.tasks.list({ state: 'active', node: name })) {
      try {
        await this.deps.tasks.revoke({ agent: task.agent, id: task.id }, `node ${name} evicted: ${why}`, actor);
        tasksRevoked++;
      } catch (err) {
        // Ended concurrently: nothing left to revoke.
        if (!isAgentIdError(err, 'failed_precondition')) throw err;
      }
    }
    await this.deps.state.sync();
    return { node: evicted, tasksRevoked };
  }

  // -- attestation ---------------------------------------------------------------------------

  /** Join token attestation: the token is consumed (once, ever) in the transaction that writes the node. */
  async attestWithJoinToken(token: string, spki: Buffer, peer: string): Promise<IssuedNodeSvid> {
    if (!TOKEN_PATTERN.test(token)) return this.refuseAttestation('join_token', '(unknown)', 'malformed join token', peer);
    const now = this.deps.clock.now();
    try {
      return await this.deps.datastore.transaction(async (tx) => {
        const used = await tx.joinTokens.consume(hashToken(token), now);
        const issued = await this.issue(tx, used.node, 'join_token', used.taskAgents, spki, now);
        this.auditAttested(issued, 'join_token', peer);
        return issued;
      });
    } catch (err) {
      if (isAgentIdError(err, 'not_found') || isAgentIdError(err, 'failed_precondition')) {
        return this.refuseAttestation('join_token', '(unknown)', err.message, peer);
      }
      throw err;
    }
  }

  /** x509pop: the TLS client certificate chain the agent proved it holds the key of. */
  async attestWithHostCertificate(chainDer: readonly Buffer[], spki: Buffer, peer: string): Promise<IssuedNodeSvid> {
    let name: string;
    try {
      name = verifyHostChain(chainDer, this.deps.policy.x509popRoots, this.deps.clock.now());
    } catch (err) {
      return this.refuseAttestation('x509pop', '(unknown)', (err as Error).message, peer);
    }
    const now = this.deps.clock.now();
    try {
      return await this.deps.datastore.transaction(async (tx) => {
        const existing = await tx.nodes.get(name);
        const issued = await this.issue(tx, name, 'x509pop', existing?.taskAgents ?? [], spki, now);
        this.auditAttested(issued, 'x509pop', peer);
        return issued;
      });
    } catch (err) {
      if (isAgentIdError(err, 'failed_precondition')) return this.refuseAttestation('x509pop', name, err.message, peer);
      throw err;
    }
  }

  /** A fresh node SVID for a fresh key; the node must still be active. */
  async renew(node: string, spki: Buffer, peer: string): Promise<IssuedNodeSvid> {
    const now = this.deps.clock.now();
    return this.deps.datastore.transaction(async (tx) => {
      const current = await tx.nodes.get(node);
      if (!current || current.state !== 'active') throw permissionDenied('node is not active');
      const issued = await this.issue(tx, node, current.attestation, current.taskAgents, spki, now);
      this.deps.audit.append({
        type: 'node.svid_renewed', outcome: 'ok', node, spiffe_id: issued.svid.spiffeId, serial: issued.svid.serial,
        expires_at: issued.svid.notAfter, peer,
      });
      return issued;
    });
  }

  private async issue(
    tx: Parameters<Parameters<Datastore['transaction']>[0]>[0],
    name: string,
    attestation: NodeAttestation,
    taskAgents: string[],
    spki: Buffer,
    now: number,
  ): Promise<IssuedNodeSvid> {
    const existing = await tx.nodes.get(name);
    if (existing?.state === 'evicted') throw failedPrecondition(`node ${name} was evicted`);
    const spiffeId = nodeSpiffeId(this.deps.trustDomain, name);
    if (this.deps.state.isRevoked(spiffeId.toString())) throw failedPrecondition(`node ${name} is on the deny list`);
    const svid = this.deps.minter.mintX509SvidForKey({ spiffeId, ttlMs: this.deps.policy.nodeSvidTtlMs, spki });
    const node = await tx.nodes.put({
      name,
      spiffeId: spiffeId.toString(),
      attestation,
      state: 'active',
      taskAgents,
      createdAt: existing?.createdAt ?? now,
      lastSeenAt: now,
      svidExpiresAt: svid.notAfter,
      evictedAt: null,
    });
    // Not waited for (inside the node's transaction): a node SVID is refused by the node's own
    // record (evicted) on every call, not only by the CRL.
    void this.deps.recordIssuances([{ kind: 'x509', serial: svid.serial, spiffeId: svid.spiffeId, issuerId: svid.issuerId, issuedAt: now, notAfter: svid.notAfter, task: null }])?.catch(() => undefined);
    return { node, svid };
  }

  private auditAttested(issued: IssuedNodeSvid, attestation: NodeAttestation, peer: string): void {
    this.deps.audit.append({
      type: 'node.attested', outcome: 'ok', node: issued.node.name, spiffe_id: issued.svid.spiffeId, attestation,
      serial: issued.svid.serial, expires_at: issued.svid.notAfter, task_agents: issued.node.taskAgents, peer,
    });
  }

  private refuseAttestation(attestation: NodeAttestation, node: string, reason: string, peer: string): never {
    this.deps.audit.append({ type: 'node.attestation_refused', outcome: 'denied', node, attestation, reason, peer });
    throw permissionDenied(`attestation refused: ${reason}`);
  }

  // -- what an attested node may do -----------------------------------------------------------

  /** The node's record if it may act now (active); the listener has verified its SVID. */
  activeNode(name: string): NodeRecord {
    const node = this.deps.state.node(name);
    if (!node || node.state !== 'active') throw permissionDenied('node is not active');
    return node;
  }

  private grant(node: string, kind: 'x509' | 'jwt', req: { entryId: string; taskAgent: string; taskId: string }): MintGrant | AgentIdError {
    const { state, clock, policy } = this.deps;
    const now = clock.now();
    const isRevoked = (id: string) => state.isRevoked(id);
    if (req.entryId !== '' && (req.taskAgent !== '' || req.taskId !== '')) return invalidArgument('name either entry_id or task_agent and task_id');
    if (req.entryId !== '') return entryGrant(state.entries.get(req.entryId), node, kind, now, isRevoked);
    if (req.taskAgent === '' || req.taskId === '') return invalidArgument('name either entry_id or task_agent and task_id');
    return taskGrant(state.activeTask(req.taskAgent, req.taskId), node, kind, now, policy.taskBufferMs, isRevoked);
  }

  /**
   * One X.509-SVID per request, for public keys the agent generated; refusals per request. A big
   * batch gives the event loop a turn every YIELD_EVERY mints, so the server's own Workload API
   * callers are not held up while an agent fills its cache.
   */
  async mintX509Svids(node: string, requests: readonly { entryId: string; taskAgent: string; taskId: string; spki: Buffer }[]): Promise<MintResult[]> {
    const records: IssuanceRecord[] = [];
    const results: MintResult[] = [];
    for (let i = 0; i < requests.length; i++) {
      if (i > 0 && i % YIELD_EVERY === 0) await new Promise<void>((resolve) => setImmediate(resolve));
      results.push(this.mintOne(node, requests[i]!, records));
    }
    if (records.length > 0) await this.deps.recordIssuances(records);
    return results;
  }

  private mintOne(node: string, req: { entryId: string; taskAgent: string; taskId: string; spki: Buffer }, records: IssuanceRecord[]): MintResult {
    const now = this.deps.clock.now();
    // Checked per request: a batch yields between mints, and the node may be evicted meanwhile.
    if (this.deps.state.node(node)?.state !== 'active') return { error: permissionDenied('node is not active') };
    const grant = this.grant(node, 'x509', req);
    if (grant instanceof AgentIdError) return { error: grant };
    try {
      const svid = this.deps.minter.mintX509SvidForKey({ spiffeId: SpiffeId.parse(grant.spiffeId), ttlMs: grant.ttlMs, dnsNames: grant.dnsNames, spki: req.spki });
      records.push({ kind: 'x509', serial: svid.serial, spiffeId: svid.spiffeId, issuerId: svid.issuerId, issuedAt: now, notAfter: svid.notAfter, task: taskRef(grant) });
      this.deps.audit.append({
        type: 'svid.issued', outcome: 'ok', kind: 'x509', spiffe_id: svid.spiffeId, serial: svid.serial, agent: grant.task?.agent, task: grant.task?.id,
        pid: 0, uid: -1, selectors: [], not_after: svid.notAfter, node,
      });
      return { ok: svid };
    } catch (err) {
      if (err instanceof AgentIdError) return { error: err };
      throw err;
    }
  }

  mintJwtSvid(node: string, req: { entryId: string; taskAgent: string; taskId: string; audience: string[] }): MintedJwtSvid {
    if (req.audience.length === 0 || req.audience.some((a) => a === '')) throw invalidArgument('audience: at least one non-empty audience is required');
    const grant = this.grant(node, 'jwt', req);
    if (grant instanceof AgentIdError) throw grant;
    const now = this.deps.clock.now();
    const svid = this.deps.minter.mintJwtSvid({ spiffeId: SpiffeId.parse(grant.spiffeId), audience: req.audience, ttlMs: grant.ttlMs });
    this.deps.recordIssuances([{ kind: 'jwt', serial: svid.jti, spiffeId: svid.spiffeId, issuerId: svid.kid, issuedAt: now, notAfter: svid.expiresAt, task: taskRef(grant) }]);
    this.deps.audit.append({
      type: 'svid.issued', outcome: 'ok', kind: 'jwt', spiffe_id: svid.spiffeId, jti: svid.jti, audience: req.audience,
      agent: grant.task?.agent, task: grant.task?.id, pid: 0, uid: -1, selectors: [], not_after: svid.expiresAt, node,
    });
    return svid;
  }

  /** The actor a node's agent acts as for a local orchestrator of uid `callerUid` on that host. */
  private forwardingActor(node: NodeRecord, callerUid: number): Actor {
    if (!Number.isInteger(callerUid) || callerUid < 0) throw invalidArgument('caller_uid must be the local orchestrator\'s uid');
    return { role: 'orchestrator', uid: callerUid, spiffeId: node.spiffeId, agents: [...node.taskAgents], node: node.name };
  }

  async forwardStartTask(
    nodeName: string,
    req: { agent: string; id: string; pid: number; startTime: string; descendants: boolean; cgroup: string; ttlMs?: number; metadata: Record<string, string>; callerUid: number },
  ): Promise<TaskRecord> {
    const node = this.activeNode(nodeName);
    if (!mayForwardTask(node, req.agent)) throw permissionDenied(`node ${nodeName} may not start tasks for agent "${req.agent}"`);
    if (req.pid > 0 && req.startTime === '') throw invalidArgument('start_time is required with pid (read from /proc/<pid>/stat on the node)');
    return this.deps.tasks.start(
      {
        agent: req.agent,
        id: req.id,
        pid: req.pid > 0 ? req.pid : undefined,
        cgroup: req.cgroup || undefined,
        descendants: req.descendants,
        ttlMs: req.ttlMs,
        metadata: req.metadata,
        node: nodeName,
        startTime: req.pid > 0 ? req.startTime : undefined,
      },
      this.forwardingActor(node, req.callerUid),
    );
  }

  async forwardEndTask(nodeName: string, req: { agent: string; id: string; reason: string; callerUid: number }): Promise<TaskRecord> {
    const node = this.activeNode(nodeName);
    const task = await this.deps.datastore.tasks.get(req.agent, req.id);
    // Another host's task, or a namespace not granted to the node: as if it did not exist.
    if (!task || task.node !== nodeName || !mayForwardTask(node, req.agent)) throw notFound(`task "${req.agent}/${req.id}" not found`);
    return this.deps.tasks.end({ agent: req.agent, id: req.id }, req.reason, this.forwardingActor(node, req.callerUid));
  }
}

const taskRef = (grant: MintGrant) => (grant.task ? `${grant.task.agent}/${grant.task.id}` : null);
