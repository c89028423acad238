import { statSync } from 'node:fs';
import type { Actor } from '../common/actor.js';
import { describeActor } from '../common/actor.js';
import { invalidArgument } from '../common/errors.js';
import { auditLines, verifyAuditFile, type AuditVerification } from '../audit/read.js';
import type { AuditSink } from '../audit/index.js';
import type { AuditObserver } from '../audit/audit-log.js';
import type { IssuanceRecord, RegistrationEntry, Revocation, TaskRecord, TaskState } from '../datastore/types.js';
import type { EntryInput } from '../entries/validate.js';
import { requireAdmin } from '../admin/service.js';
import { mayActOnAgent } from '../tasks/service.js';
import { parseTaskSpiffeId, SpiffeId } from '../spiffe/spiffe-id.js';
import type { AuditFollower, AuditSummary } from './audit-follower.js';

/*
 * What the console's JSON API does for a signed-in actor. Authorization is never decided here:
 * task calls go through TaskService (which scopes orchestrators to their agents and audits every
 * refusal), admin-only calls through requireAdmin, exactly as the admin API does. The only
 * scoping added here is for data the admin API does not serve at all (the audit trail, activity
 * counters): orchestrators see records about their own agents' tasks only.
 */

type Awaitable<T> = T | Promise<T>;

/** The services the console calls; the methods may be synchronous or return promises. */
export interface ConsoleServices {
  tasks: {
    list(filter: { agent?: string; state?: TaskState }, actor: Actor): Awaitable<TaskRecord[]>;
    get(ref: { agent?: string; id: string }, actor: Actor): Awaitable<TaskRecord>;
    revoke(ref: { agent?: string; id: string }, reason: string, actor: Actor): Awaitable<TaskRecord>;
  };
  entries: {
    list(): Awaitable<RegistrationEntry[]>;
    create(input: EntryInput, actor: Actor): Awaitable<RegistrationEntry>;
    delete(id: string, actor: Actor): Awaitable<RegistrationEntry>;
  };
  revocations: { list(): Awaitable<Revocation[]> };
  /** Everything issued for a SPIFFE ID (X.509 serials, JWT IDs). */
  issuances(spiffeId: string): Awaitable<IssuanceRecord[]>;
  /** Workload API streams open right now. */
  openStreams(): number;
  /** The CA's own description (ca.describe()): signing CAs and JWT keys with their slots. */
  keySlots(): object;
  audit: AuditSink;
  /** Adds a tap on the audit trail's typed event stream (AuditLog.observe). */
  auditTap(observer: AuditObserver): void;
  auditFile: string;
}

const TASK_STATES: ReadonlySet<string> = new Set(['active', 'ended', 'revoked', 'expired']);
const MAX_AUDIT_RESULTS = 500;
const MAX_TIMELINE = 500;
const CHAIN_CHECK_INTERVAL_MS = 10_000;

export function bindingText(t: TaskRecord): string {
  const b = t.binding;
  return b.kind === 'process' ? `pid ${b.pid}${b.descendants ? ' and descendants' : ''}` : `cgroup ${b.path}`;
}

function lastIssuance(records: IssuanceRecord[]): IssuanceRecord | undefined {
  let last: IssuanceRecord | undefined;
  for (const r of records) if (!last || r.issuedAt >= last.issuedAt) last = r;
  return last;
}

const issuanceToWire = (r: IssuanceRecord, now: number) => ({ kind: r.kind, serial: r.serial, issuedAt: r.issuedAt, notAfter: r.notAfter, live: r.notAfter > now });

function taskToWire(t: TaskRecord, issuances: IssuanceRecord[], now: number) {
  const last = lastIssuance(issuances);
  return {
    agent: t.agent,
    id: t.id,
    spiffeId: t.spiffeId,
    state: t.state,
    binding: bindingText(t),
    createdAt: t.createdAt,
    expiresAt: t.expiresAt,
    endedAt: t.endedAt,
    endReason: t.endReason,
    createdBy: t.createdBy,
    metadata: t.metadata,
    lastSvid: last ? issuanceToWire(last, now) : null,
  };
}

function entryToWire(e: RegistrationEntry) {
  return {
    id: e.id,
    spiffeId: e.spiffeId,
    selectors: e.selectors.map((s) => `${s.type}:${s.value}`),
    x509TtlMs: e.x509TtlMs,
    jwtTtlMs: e.jwtTtlMs,
    hint: e.hint,
    expiresAt: e.expiresAt,
    revision: e.revision,
  };
}

function namedTask(r: { spiffe_id?: unknown }): { agent: string; task: string } | undefined {
  if (typeof r.spiffe_id !== 'string') return undefined;
  try {
    return parseTaskSpiffeId(SpiffeId.parse(r.spiffe_id));
  } catch {
    return undefined;
  }
}

/** The agent a record is about: its `agent` field, or the agent of the task identity it names. */
export function recordAgent(r: { agent?: unknown; spiffe_id?: unknown }): string | undefined {
  return typeof r.agent === 'string' ? r.agent : namedTask(r)?.agent;
}

/** The task a record is about: its `task` field, or the task identity it names (revocations carry only that). */
function recordTask(r: { task?: unknown; spiffe_id?: unknown }): string | undefined {
  return typeof r.task === 'string' ? r.task : namedTask(r)?.task;
}

export interface AuditQuery {
  task?: string;
  spiffeId?: string;
  type?: string;
  /** Milliseconds since the epoch, inclusive. */
  since?: number;
  until?: number;
}

export class ConsoleApi {
  private chainCache: { signature: string; checkedAt: number; result: AuditVerification } | undefined;

  constructor(
    private readonly services: ConsoleServices,
    private readonly deps: { follower: AuditFollower; now: () => number },
  ) {}

  whoAmI(actor: Actor) {
    return { user: describeActor(actor), role: actor.role, agents: actor.agents };
  }

  async overview(actor: Actor) {
    const active = await this.services.tasks.list({ state: 'active' }, actor);
    const mine = (r: AuditSummary) => actor.role === 'admin' || mayActOnAgentOpt(actor, recordAgent(r));
    const activity = this.deps.follower.activity(mine);
    const ca = this.services.keySlots() as { signingCas?: KeyItem[]; jwtKeys?: KeyItem[]; roots?: KeyItem[] };
    const now = this.deps.now();
    const slot = (kind: string) => (k: KeyItem) => ({ kind, id: k.id, slot: k.slot, notAfter: Date.parse(k.notAfter), secondsLeft: Math.max(0, Math.floor((Date.parse(k.notAfter) - now) / 1000)) });
    return {
      activeTasks: active.length,
      // Stream and refusal counts span every agent: only admins see them.
      openStreams: actor.role === 'admin' ? this.services.openStreams() : null,
      lastHour: { issued: activity.issued, refused: actor.role === 'admin' ? activity.refused : null },
      keys: [...(ca.roots ?? []).map(slot('Root CA')), ...(ca.signingCas ?? []).map(slot('X.509 signing CA')), ...(ca.jwtKeys ?? []).map(slot('JWT signing key'))],
      auditChain: this.chainStatus(),
    };
  }

  async listTasks(actor: Actor, state: string | undefined) {
    if (state !== undefined && !TASK_STATES.has(state)) throw invalidArgument(`tasks: state must be one of ${[...TASK_STATES].join(', ')}`);
    const tasks = await this.services.tasks.list(state ? { state: state as TaskState } : {}, actor);
    const now = this.deps.now();
    const out = [];
    for (const t of tasks) out.push(taskToWire(t, await this.services.issuances(t.spiffeId), now));
    return { tasks: out.sort((a, b) => b.createdAt - a.createdAt) };
  }

  async task(actor: Actor, agent: string, id: string) {
    const t = await this.services.tasks.get({ agent, id }, actor);
    const issuances = await this.services.issuances(t.spiffeId);
    const now = this.deps.now();
    const timeline = this.scan((r) => (r.agent === t.agent && r.task === t.id) || r.spiffe_id === t.spiffeId, MAX_TIMELINE);
    return {
      task: taskToWire(t, issuances, now),
      svids: issuances.sort((a, b) => b.issuedAt - a.issuedAt).map((r) => issuanceToWire(r, now)),
      timeline,
    };
  }

  async revokeTask(actor: Actor, agent: string, id: string, body: unknown) {
    const reason = typeof (body as { reason?: unknown })?.reason === 'string' ? (body as { reason: string }).reason : '';
    const t = await this.services.tasks.revoke({ agent, id }, reason, actor);
    return { task: taskToWire(t, await this.services.issuances(t.spiffeId), this.deps.now()) };
  }

  async revocations(actor: Actor) {
    requireAdmin(actor, 'console.revocations', this.services.audit);
    const list = await this.services.revocations.list();
    return { revocations: list.map((r) => ({ spiffeId: r.spiffeId, reason: r.reason, revokedAt: r.revokedAt, revokedBy: r.revokedBy, keepUntil: r.keepUntil })) };
  }

  async entries(actor: Actor) {
    requireAdmin(actor, 'console.entries', this.services.audit);
    return { entries: (await this.services.entries.list()).map(entryToWire) };
  }

  async createEntry(actor: Actor, body: unknown) {
    requireAdmin(actor, 'console.entry.create', this.services.audit);
    const b = (body ?? {}) as Record<string, unknown>;
    const strings = (v: unknown, what: string): string[] => {
      if (v === undefined) return [];
      if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) throw invalidArgument(`entry: ${what} must be a list of strings`);
      return v as string[];
    };
    const ttl = (v: unknown, what: string): number | undefined => {
      if (v === undefined || v === null || v === 0) return undefined;
      if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) throw invalidArgument(`entry: ${what} must be a whole number of seconds`);
      return v * 1000;
    };
    if (typeof b.spiffeId !== 'string') throw invalidArgument('entry: spiffeId is required');
    const input: EntryInput = {
      spiffeId: b.spiffeId,
      selectors: strings(b.selectors, 'selectors'),
      x509TtlMs: ttl(b.x509TtlSeconds, 'x509TtlSeconds'),
      jwtTtlMs: ttl(b.jwtTtlSeconds, 'jwtTtlSeconds'),
      hint: typeof b.hint === 'string' ? b.hint : '',
      dnsNames: strings(b.dnsNames, 'dnsNames'),
      federatesWith: strings(b.federatesWith, 'federatesWith'),
      expiresAt: null,
    };
    return { entry: entryToWire(await this.services.entries.create(input, actor)) };
  }

  async deleteEntry(actor: Actor, id: string) {
    requireAdmin(actor, 'console.entry.delete', this.services.audit);
    return { entry: entryToWire(await this.services.entries.delete(id, actor)) };
  }

  /** Audit records matching every given filter, newest first, with the chain's verification status. */
  auditTrail(actor: Actor, q: AuditQuery) {
    const records = this.scan((r) => {
      if (q.task !== undefined && recordTask(r) !== q.task) return false;
      if (q.spiffeId !== undefined && r.spiffe_id !== q.spiffeId) return false;
      if (q.type !== undefined && r.type !== q.type) return false;
      if (q.since !== undefined || q.until !== undefined) {
        const at = Date.parse(String(r.time));
        if (q.since !== undefined && !(at >= q.since)) return false;
        if (q.until !== undefined && !(at <= q.until)) return false;
      }
      return actor.role === 'admin' || mayActOnAgentOpt(actor, recordAgent(r));
    }, MAX_AUDIT_RESULTS);
    return { records, chain: this.chainStatus(), limit: MAX_AUDIT_RESULTS };
  }

  /** The last `limit` records that match, newest first. A line that is not JSON is skipped here. */
  private scan(match: (r: Record<string, unknown>) => boolean, limit: number): Record<string, unknown>[] {
    const hits: Record<string, unknown>[] = [];
    for (const line of auditLines(this.services.auditFile)) {
      let r: unknown;
      try {
        r = JSON.parse(line.text);
      } catch {
        continue;
      }
      if (r === null || typeof r !== 'object' || Array.isArray(r)) continue;
      if (match(r as Record<string, unknown>)) {
        hits.push(r as Record<string, unknown>);
        if (hits.length > limit) hits.shift();
      }
    }
    return hits.reverse();
  }

  /**
   * Verifies the whole hash chain: again when the file changed, but at most once per
   * CHAIN_CHECK_INTERVAL_MS, so a busy trail and many open browsers cost one full read per interval.
   */
  private chainStatus(): AuditVerification & { checkedAt: number } {
    const now = this.deps.now();
    const fresh = this.chainCache && now - this.chainCache.checkedAt < CHAIN_CHECK_INTERVAL_MS;
    if (!fresh) {
      const st = statSync(this.services.auditFile);
      const signature = `${st.ino}:${st.size}:${st.mtimeMs}`;
      if (this.chainCache?.signature !== signature) this.chainCache = { signature, checkedAt: now, result: verifyAuditFile(this.services.auditFile) };
      else this.chainCache.checkedAt = now;
    }
    return { ...this.chainCache!.result, checkedAt: this.chainCache!.checkedAt };
  }
}

interface KeyItem {
  id: string;
  slot: string;
  notAfter: string;
}

const mayActOnAgentOpt = (actor: Actor, agent: string | undefined) => agent !== undefined && mayActOnAgent(actor, agent);
