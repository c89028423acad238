import type { TaskBinding } from '../datastore/types.js';

/*
 * Audit events as written to the audit file. Field names are snake_case because they are the
 * on-disk format that operators grep and other tools parse; times inside events are milliseconds
 * in the input and ISO-8601 strings in the file (see AuditRecord).
 */

export type AuditRole = 'admin' | 'orchestrator' | 'workload' | 'server';
export type AuditOutcome = 'ok' | 'denied' | 'error';

export interface AuditActor {
  /** Peer uid from SO_PEERCRED (Unix socket callers). */
  uid?: number;
  /** Peer SPIFFE ID (mTLS callers on the TCP admin listener). */
  spiffe_id?: string;
  role: AuditRole;
}

interface Common {
  actor?: AuditActor;
  outcome?: AuditOutcome;
}

export interface AttestationRefusedEvent extends Common {
  type: 'attestation.refused';
  /** The (last) refused process; a summary names the latest one it counts. */
  pid: number;
  uid: number;
  reason: string;
  /**
   * Refusals this line stands for. Absent on the first refusal of a (uid, reason), which is
   * written at once; later ones are summed per interval (refusals.ts) so a flood cannot fill the disk.
   */
  count?: number;
  /** Start of the interval a summary covers. */
  since?: number;
}

/** The server removed a torn tail (a write cut short by a crash or a full disk) before continuing the chain. */
export interface AuditRepairedEvent extends Common {
  type: 'audit.repaired';
  reason: string;
  /** Length and SHA-256 of the bytes removed: never an acknowledged record (its write did not complete). */
  removed_bytes: number;
  removed_sha256: string;
}

interface SvidCommon extends Common {
  spiffe_id: string;
  /** Task ID (the last path segment of a task identity); absent for registration-entry identities. */
  task?: string;
  agent?: string;
  pid: number;
  uid: number;
  /** The selectors that made the entry or task match, formatted "type:value". */
  selectors: string[];
  /** Milliseconds since the epoch; written as an ISO-8601 string. */
  not_after: number;
  /** Minted for this node's agent (the pid and uid are then 0 and -1: the caller is on that host). */
  node?: string;
}

export type SvidIssuedEvent =
  | (SvidCommon & { type: 'svid.issued'; kind: 'x509'; /** lowercase hex */ serial: string })
  | (SvidCommon & { type: 'svid.issued'; kind: 'jwt'; jti: string; audience: string[] });

export interface SvidRotatedEvent extends Common {
  type: 'svid.rotated';
  kind: 'x509';
  spiffe_id: string;
  serial: string;
  previous_serial?: string;
  /** Why it was re-minted: half_life, entry_changed, ca_rotated, bundle_changed... */
  reason: string;
  task?: string;
  agent?: string;
  not_after: number;
}

export interface TaskStartedEvent extends Common {
  type: 'task.started';
  agent: string;
  task: string;
  spiffe_id: string;
  binding: TaskBinding;
  ttl_ms: number;
  /** Milliseconds since the epoch; written as an ISO-8601 string. */
  expires_at: number;
  /** Capped: see AUDIT_METADATA_LIMITS. */
  metadata: Record<string, string>;
  /** The node the task is bound on; absent: the server's host. */
  node?: string;
  /** "uid:1000 (orchestrator)" */
  by: string;
  role: AuditRole;
}

export interface TaskEndedEvent extends Common {
  type: 'task.ended';
  agent: string;
  task: string;
  spiffe_id: string;
  /** ended, expired, process_exited... */
  reason: string;
}

export interface TaskRevokedEvent extends Common {
  type: 'task.revoked';
  agent: string;
  task: string;
  spiffe_id: string;
  reason: string;
  by: string;
}

export interface RevocationAddedEvent extends Common {
  type: 'revocation.added';
  spiffe_id: string;
  reason: string;
  by: string;
  /** Milliseconds since the epoch; written as an ISO-8601 string. */
  keep_until: number;
}

export interface EntryEvent extends Common {
  type: 'entry.created' | 'entry.updated' | 'entry.deleted';
  entry_id: string;
  spiffe_id: string;
  /** Formatted "type:value"; absent for deletions. */
  selectors?: string[];
  revision?: number;
  by: string;
}

export interface AdminDeniedEvent extends Common {
  type: 'admin.denied';
  /** "uid:1000" or a SPIFFE ID. */
  who: string;
  /** The role the caller has, "none" when it has no role at all. */
  role: AuditRole | 'none';
  /** The admin method, e.g. "CreateEntry". */
  action: string;
  reason: string;
}

/** A web console session began. Never carries the sign-in token or the session. */
export interface ConsoleSignedInEvent extends Common {
  type: 'console.signed_in';
  /** "uid:0 (admin)" or "spiffe://td/ops (orchestrator)". */
  by: string;
  role: AuditRole;
  /** link: a one-time URL from `agentid console login`; certificate: a client X.509-SVID. */
  method: 'link' | 'certificate';
}

export interface CaRotatedEvent extends Common {
  type: 'ca.rotated';
  kind: 'root' | 'x509' | 'jwt';
  /** The state the key moved into; tainted and revoked are an operator's (`actor` says who). */
  phase: 'prepared' | 'active' | 'retired' | 'removed' | 'tainted' | 'revoked';
  /** CA or JWT key ID that entered `phase`. */
  key_id: string;
  previous_key_id?: string;
  not_after: number;
}

export interface ServerStartedEvent extends Common {
  type: 'server.started';
  version: string;
  trust_domain: string;
  pid: number;
  /** Identity of the database this run uses (src/integrity): the trail names the state it belongs to. */
  db_id?: string;
}

/** The operator accepted lost or replaced state at start (`agentid server --recover=<component>`). */
export interface IntegrityRecoveredEvent extends Common {
  type: 'integrity.recovered';
  component: 'database' | 'ca' | 'audit';
  reason: string;
}

/** A clean shutdown; with server.started it brackets a run, so a missing tail is visible. */
export interface ServerStoppedEvent extends Common {
  type: 'server.stopped';
  pid: number;
  /** Records this run appended, this one included. */
  records: number;
}

/**
 * Per-host agents (src/nodes): a join token issued (never the token itself), an attestation
 * (accepted or refused), a node SVID renewal, an eviction. `peer` is the agent's address.
 */
export interface NodeEvent extends Common {
  /**
   * node.attestation_refused is written at once but fsynced in batches, like attestation.refused:
   * any peer that reaches the agent listener can cause one.
   */
  type: 'node.join_token_created' | 'node.attested' | 'node.attestation_refused' | 'node.svid_renewed' | 'node.evicted' | 'node.task_agents_set';
  node: string;
  spiffe_id?: string;
  attestation?: 'join_token' | 'x509pop';
  /** Node SVID serial (lowercase hex). */
  serial?: string;
  /** Join token expiry, or the node SVID's notAfter; written as an ISO-8601 string. */
  expires_at?: number;
  task_agents?: string[];
  /** node.task_agents_set: the list it replaced. */
  previous_task_agents?: string[];
  /** Refusals: why. Evictions and grants: the operator's reason. */
  reason?: string;
  by?: string;
  peer?: string;
  /** Evictions: tasks bound on the node that were revoked. */
  tasks_revoked?: number;
}

/**
 * A per-host agent's own trail (`<agent data dir>/audit.log`): its runs and its eviction. Its
 * Workload API refusals are `attestation.refused` lines there; what it was minted is audited by the
 * server (`svid.issued` with `node`).
 */
export interface AgentEvent extends Common {
  type: 'agent.started' | 'agent.stopped' | 'agent.evicted';
  node: string;
  pid: number;
  /** agent.started: the server it follows (host:port). */
  upstream?: string;
  /** agent.evicted: what the server said. */
  reason?: string;
}

export type AuditEventInput =
  | AttestationRefusedEvent
  | AgentEvent
  | AuditRepairedEvent
  | SvidIssuedEvent
  | SvidRotatedEvent
  | TaskStartedEvent
  | TaskEndedEvent
  | TaskRevokedEvent
  | RevocationAddedEvent
  | EntryEvent
  | AdminDeniedEvent
  | ConsoleSignedInEvent
  | CaRotatedEvent
  | ServerStartedEvent
  | IntegrityRecoveredEvent
  | ServerStoppedEvent
  | NodeEvent;

export type AuditEventType = AuditEventInput['type'];

/** Event fields that hold a time: milliseconds on input, ISO-8601 strings in the file. */
export const AUDIT_TIME_FIELDS = ['not_after', 'expires_at', 'keep_until', 'since'] as const;
type TimeField = (typeof AUDIT_TIME_FIELDS)[number];

type Stored<E> = E extends unknown ? { [K in keyof E]: K extends TimeField ? string : E[K] } : never;

/** One line of the audit file, as written and as read back. */
export type AuditRecord = Stored<AuditEventInput> & {
  /** 1 for the first record of a file, then +1 per line. */
  seq: number;
  /** ISO-8601 time of the append, from the injected clock. */
  time: string;
  /** Hash of the previous record; GENESIS_HASH for the first. */
  prev: string;
  /** SHA-256 (hex) of prev + canonical JSON of this record without `hash`. */
  hash: string;
};

/**
 * Events that are fsynced before append() returns: an acknowledged revocation, task change,
 * entry change, CA rotation or refused admin call must survive a power loss. Issuance and
 * attestation refusals are high-volume (and the latter can be provoked by any local user), so
 * they are written at once but fsynced in batches; see AuditLog.
 */
export const DURABLE_EVENT_TYPES: ReadonlySet<AuditEventType> = new Set<AuditEventType>([
  'task.started',
  'task.ended',
  'task.revoked',
  'revocation.added',
  'entry.created',
  'entry.updated',
  'entry.deleted',
  'admin.denied',
  'console.signed_in',
  'ca.rotated',
  'audit.repaired',
  'integrity.recovered',
  'server.started',
  'server.stopped',
  'node.join_token_created',
  'node.attested',
  'node.svid_renewed',
  'node.evicted',
  'node.task_agents_set',
  'agent.started',
  'agent.stopped',
  'agent.evicted',
]);
