import { normalizeSelectors, type Selector } from '../spiffe/selector.js';
import { selectorSetHash } from './rules.js';
import type {
  AuthorityRecord,
  IssuanceRecord,
  JoinTokenRecord,
  NodeAttestation,
  NodeRecord,
  NodeState,
  RegistrationEntry,
  Revocation,
  TaskBinding,
  TaskRecord,
  TaskState,
} from './types.js';

/*
 * Rows as the SQL stores (SQLite, PostgreSQL) keep them: one schema (migrations.ts), so one set of
 * column lists and record <-> row conversions. Numbers are JS numbers on both (the PostgreSQL store
 * parses BIGINT into numbers); JSON lives in TEXT columns.
 */

export interface EntryRow {
  id: string;
  spiffe_id: string;
  selectors: string;
  selectors_hash: string;
  x509_ttl_ms: number;
  jwt_ttl_ms: number;
  hint: string;
  dns_names: string;
  federates_with: string;
  /** 0/1 in SQLite, a boolean in PostgreSQL. */
  include_tasks: number | boolean;
  expires_at: number | null;
  node: string | null;
  created_at: number;
  updated_at: number;
  revision: number;
}

export interface TaskRow {
  agent: string;
  id: string;
  spiffe_id: string;
  binding: string;
  metadata: string;
  state: TaskState;
  x509_ttl_ms: number;
  jwt_ttl_ms: number;
  created_at: number;
  expires_at: number;
  ended_at: number | null;
  end_reason: string | null;
  created_by: string;
  node: string | null;
}

export interface RevocationRow {
  spiffe_id: string;
  reason: string;
  revoked_at: number;
  revoked_by: string;
  keep_until: number;
}

export interface IssuanceRow {
  kind: 'x509' | 'jwt';
  serial: string;
  spiffe_id: string;
  issuer_id: string;
  issued_at: number;
  not_after: number;
  task: string | null;
}

export interface AuthorityRow {
  server_id: string;
  x509_authorities: string;
  jwt_keys: string;
  crls: string;
  updated_at: number;
  retire_at: number | null;
}

export interface NodeRow {
  name: string;
  spiffe_id: string;
  attestation: NodeAttestation;
  state: NodeState;
  task_agents: string;
  created_at: number;
  last_seen_at: number;
  svid_expires_at: number;
  evicted_at: number | null;
}

export interface JoinTokenRow {
  hash: string;
  node: string;
  task_agents: string;
  created_at: number;
  expires_at: number;
  used_at: number | null;
  created_by: string;
}

/** Column order of each table's INSERT (and of its SELECT lists). */
export const ENTRY_COLUMNS = [
  'id', 'spiffe_id', 'selectors', 'selectors_hash', 'x509_ttl_ms', 'jwt_ttl_ms', 'hint', 'dns_names',
  'federates_with', 'include_tasks', 'expires_at', 'node', 'created_at', 'updated_at', 'revision',
] as const satisfies readonly (keyof EntryRow)[];
export const TASK_COLUMNS = [
  'agent', 'id', 'spiffe_id', 'binding', 'metadata', 'state', 'x509_ttl_ms', 'jwt_ttl_ms', 'created_at',
  'expires_at', 'ended_at', 'end_reason', 'created_by', 'node',
] as const satisfies readonly (keyof TaskRow)[];
export const REVOCATION_COLUMNS = [
  'spiffe_id', 'reason', 'revoked_at', 'revoked_by', 'keep_until',
] as const satisfies readonly (keyof RevocationRow)[];
export const ISSUANCE_COLUMNS = [
  'kind', 'serial', 'spiffe_id', 'issuer_id', 'issued_at', 'not_after', 'task',
] as const satisfies readonly (keyof IssuanceRow)[];
export const AUTHORITY_COLUMNS = [
  'server_id', 'x509_authorities', 'jwt_keys', 'crls', 'updated_at', 'retire_at',
] as const satisfies readonly (keyof AuthorityRow)[];

export const NODE_COLUMNS = [
  'name', 'spiffe_id', 'attestation', 'state', 'task_agents', 'created_at', 'last_seen_at', 'svid_expires_at', 'evicted_at',
] as const satisfies readonly (keyof NodeRow)[];
export const JOIN_TOKEN_COLUMNS = [
  'hash', 'node', 'task_agents', 'created_at', 'expires_at', 'used_at', 'created_by',
] as const satisfies readonly (keyof JoinTokenRow)[];

/** A column list for SQL text, optionally qualified ("i." for a join). */
export const columns = (cols: readonly string[], prefix = ''): string => cols.map((c) => `${prefix}${c}`).join(', ');

export function entryFromRow(r: EntryRow): RegistrationEntry {
  return {
    id: r.id,
    spiffeId: r.spiffe_id,
    selectors: JSON.parse(r.selectors) as Selector[],
    x509TtlMs: r.x509_ttl_ms,
    jwtTtlMs: r.jwt_ttl_ms,
    hint: r.hint,
    dnsNames: JSON.parse(r.dns_names) as string[],
    federatesWith: JSON.parse(r.federates_with) as string[],
    includeTasks: r.include_tasks === true || r.include_tasks === 1,
    expiresAt: r.expires_at,
    node: r.node,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    revision: r.revision,
  };
}

export function entryToRow(e: RegistrationEntry): EntryRow {
  // Only {type, value} is stored, whatever extra properties a caller's selector objects carry.
  const selectors = normalizeSelectors(e.selectors).map((s) => ({ type: s.type, value: s.value }));
  return {
    id: e.id,
    spiffe_id: e.spiffeId,
    selectors: JSON.stringify(selectors),
    selectors_hash: selectorSetHash(selectors, e.node),
    x509_ttl_ms: e.x509TtlMs,
    jwt_ttl_ms: e.jwtTtlMs,
    hint: e.hint,
    dns_names: JSON.stringify(e.dnsNames),
    federates_with: JSON.stringify(e.federatesWith),
    // better-sqlite3 binds no booleans; PostgreSQL reads '1'/'0' as a boolean.
    include_tasks: e.includeTasks ? 1 : 0,
    expires_at: e.expiresAt,
    node: e.node,
    created_at: e.createdAt,
    updated_at: e.updatedAt,
    revision: e.revision,
  };
}

export function taskFromRow(r: TaskRow): TaskRecord {
  return {
    id: r.id,
    agent: r.agent,
    spiffeId: r.spiffe_id,
    binding: JSON.parse(r.binding) as TaskBinding,
    metadata: JSON.parse(r.metadata) as Record<string, string>,
    state: r.state,
    x509TtlMs: r.x509_ttl_ms,
    jwtTtlMs: r.jwt_ttl_ms,
    createdAt: r.created_at,
    expiresAt: r.expires_at,
    endedAt: r.ended_at,
    endReason: r.end_reason,
    createdBy: r.created_by,
    node: r.node,
  };
}

export function taskToRow(t: TaskRecord): TaskRow {
  return {
    agent: t.agent,
    id: t.id,
    spiffe_id: t.spiffeId,
    binding: JSON.stringify(t.binding),
    metadata: JSON.stringify(t.metadata),
    state: t.state,
    x509_ttl_ms: t.x509TtlMs,
    jwt_ttl_ms: t.jwtTtlMs,
    created_at: t.createdAt,
    expires_at: t.expiresAt,
    ended_at: t.endedAt,
    end_reason: t.endReason,
    created_by: t.createdBy,
    node: t.node,
  };
}

export const revocationFromRow = (r: RevocationRow): Revocation => ({
  spiffeId: r.spiffe_id,
  reason: r.reason,
  revokedAt: r.revoked_at,
  revokedBy: r.revoked_by,
  keepUntil: r.keep_until,
});

export const revocationToRow = (r: Revocation): RevocationRow => ({
  spiffe_id: r.spiffeId,
  reason: r.reason,
  revoked_at: r.revokedAt,
  revoked_by: r.revokedBy,
  keep_until: r.keepUntil,
});

export const issuanceFromRow = (r: IssuanceRow): IssuanceRecord => ({
  kind: r.kind,
  serial: r.serial,
  spiffeId: r.spiffe_id,
  issuerId: r.issuer_id,
  issuedAt: r.issued_at,
  notAfter: r.not_after,
  task: r.task,
});

export const issuanceToRow = (i: IssuanceRecord): IssuanceRow => ({
  kind: i.kind,
  serial: i.serial,
  spiffe_id: i.spiffeId,
  issuer_id: i.issuerId,
  issued_at: i.issuedAt,
  not_after: i.notAfter,
  task: i.task,
});

export const authorityFromRow = (r: AuthorityRow): AuthorityRecord => ({
  serverId: r.server_id,
  x509Authorities: JSON.parse(r.x509_authorities) as string[],
  jwtKeys: JSON.parse(r.jwt_keys) as object[],
  crls: JSON.parse(r.crls) as string[],
  updatedAt: r.updated_at,
  retireAt: r.retire_at,
});

export const authorityToRow = (a: AuthorityRecord): AuthorityRow => ({
  server_id: a.serverId,
  x509_authorities: JSON.stringify(a.x509Authorities),
  jwt_keys: JSON.stringify(a.jwtKeys),
  crls: JSON.stringify(a.crls),
  updated_at: a.updatedAt,
  retire_at: a.retireAt,
});

export const nodeFromRow = (r: NodeRow): NodeRecord => ({
  name: r.name,
  spiffeId: r.spiffe_id,
  attestation: r.attestation,
  state: r.state,
  taskAgents: JSON.parse(r.task_agents) as string[],
  createdAt: r.created_at,
  lastSeenAt: r.last_seen_at,
  svidExpiresAt: r.svid_expires_at,
  evictedAt: r.evicted_at,
});

export const nodeToRow = (n: NodeRecord): NodeRow => ({
  name: n.name,
  spiffe_id: n.spiffeId,
  attestation: n.attestation,
  state: n.state,
  task_agents: JSON.stringify(n.taskAgents),
  created_at: n.createdAt,
  last_seen_at: n.lastSeenAt,
  svid_expires_at: n.svidExpiresAt,
  evicted_at: n.evictedAt,
});

export const joinTokenFromRow = (r: JoinTokenRow): JoinTokenRecord => ({
  hash: r.hash,
  node: r.node,
  taskAgents: JSON.parse(r.task_agents) as string[],
  createdAt: r.created_at,
  expiresAt: r.expires_at,
  usedAt: r.used_at,
  createdBy: r.created_by,
});

export const joinTokenToRow = (t: JoinTokenRecord): JoinTokenRow => ({
  hash: t.hash,
  node: t.node,
  task_agents: JSON.stringify(t.taskAgents),
  created_at: t.createdAt,
  expires_at: t.expiresAt,
  used_at: t.usedAt,
  created_by: t.createdBy,
});

/** The message both SQL stores give for an entry that duplicates another's identity. */
export function duplicateIdentityMessage(spiffeId: string, otherId: string | undefined): string {
  return `entry: an entry with spiffe_id ${spiffeId} and the same selectors already exists (${otherId ?? 'unknown'})`;
}
