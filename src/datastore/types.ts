import type { Selector } from '../spiffe/selector.js';

/*
 * Records as stored. Times are milliseconds since the epoch; durations are milliseconds.
 * SPIFFE IDs are stored as their canonical string form.
 */

export interface RegistrationEntry {
  /** Server-assigned UUID. */
  id: string;
  spiffeId: string;
  /** Canonical form: sorted, de-duplicated (see normalizeSelectors). All must match. */
  selectors: Selector[];
  x509TtlMs: number;
  jwtTtlMs: number;
  /** Operator hint delivered in X509SVID.hint / JWTSVID.hint; "" when unset. */
  hint: string;
  dnsNames: string[];
  /** Trust domain names whose bundles this entry's workloads receive. */
  federatesWith: string[];
  /**
   * Also serve processes bound to a task. Off by default: a task's process holds only its task's
   * identity (least privilege), never the entries its uid or binary would otherwise match.
   */
  includeTasks: boolean;
  /** The entry stops matching at this time; null for never. */
  expiresAt: number | null;
  /**
   * The node (per-host agent) this entry is limited to. null: every agent and the server's own
   * Workload API socket; a name: only that node's agent, never the server's socket.
   */
  node: string | null;
  createdAt: number;
  updatedAt: number;
  /** Incremented on every update; lets updates detect a concurrent change. */
  revision: number;
}

export type NewRegistrationEntry = Omit<RegistrationEntry, 'createdAt' | 'updatedAt' | 'revision'>;

/** What a task identity is bound to. */
export type TaskBinding =
  | {
      kind: 'process';
      pid: number;
      /** /proc/<pid>/stat start time (clock ticks since boot) of the bound process: PID reuse never matches. */
      startTime: string;
      /** Also issue to descendants of the bound process. */
      descendants: boolean;
    }
  | {
      kind: 'cgroup';
      /** cgroup v2 path as in /proc/<pid>/cgroup, e.g. /agents/a1/t42; members and sub-cgroups match. */
      path: string;
    };

export type TaskState = 'active' | 'ended' | 'revoked' | 'expired';

export interface TaskRecord {
  /** Task ID, a valid SPIFFE ID path segment; unique within its agent. */
  id: string;
  agent: string;
  spiffeId: string;
  binding: TaskBinding;
  /** Free-form audit metadata (repo, actor, approver, ticket...). */
  metadata: Record<string, string>;
  state: TaskState;
  x509TtlMs: number;
  jwtTtlMs: number;
  createdAt: number;
  /** The task's hard end; SVIDs never outlive it plus the configured buffer. */
  expiresAt: number;
  endedAt: number | null;
  endReason: string | null;
  /** Who started it: "uid:1000 (orchestrator)". */
  createdBy: string;
  /**
   * The host the binding refers to. null: the server's own host (its /proc decides liveness);
   * a node name: that node's host. The server never checks such a task against its own /proc and
   * never matches it to its own callers; only that node's agent serves it.
   */
  node: string | null;
}

export interface Revocation {
  spiffeId: string;
  reason: string;
  revokedAt: number;
  revokedBy: string;
  /** Kept on the deny list until the latest notAfter of anything issued for this ID (or longer). */
  keepUntil: number;
}

export interface IssuanceRecord {
  kind: 'x509' | 'jwt';
  /** Lowercase hex serial for X.509, jti for JWT. */
  serial: string;
  spiffeId: string;
  /** Signing CA ID (X.509) or JWT key ID. */
  issuerId: string;
  issuedAt: number;
  notAfter: number;
  /** "<agent>/<task>" for task identities, else null. */
  task: string | null;
}

/**
 * One signing server's public trust material, as published to the shared datastore so that every
 * server serving the trust domain publishes the same bundle (several servers on one database).
 * Never contains private keys.
 */
export interface AuthorityRecord {
  /** Stable name of the server (its data directory's server ID). */
  serverId: string;
  /** DER X.509 root (or upstream) certificates, base64. */
  x509Authorities: string[];
  /** JWT signing public keys as JWKs (with kid). */
  jwtKeys: object[];
  /** DER CRLs the server signs (its signing CAs' and the root-signed one), base64. */
  crls: string[];
  updatedAt: number;
  /** Set when the server left: its material stays published until then (its SVIDs may still be presented). */
  retireAt: number | null;
}

export type NodeAttestation = 'join_token' | 'x509pop';
export type NodeState = 'active' | 'evicted';

/** A host running `agentid agent`, known once it attested. */
export interface NodeRecord {
  /** A SPIFFE ID path segment; the node's SPIFFE ID is spiffe://<td>/agentid/node/<name>. */
  name: string;
  spiffeId: string;
  /** How it last attested. */
  attestation: NodeAttestation;
  state: NodeState;
  /** Agent namespaces whose tasks the node's agent may start for local orchestrators ([]: none). */
  taskAgents: string[];
  createdAt: number;
  /** Last attestation or node SVID renewal. */
  lastSeenAt: number;
  /** notAfter of the node SVID issued last. */
  svidExpiresAt: number;
  evictedAt: number | null;
}

/** A one-time join token, stored by its SHA-256 only: the token itself is never kept. */
export interface JoinTokenRecord {
  /** Lowercase hex SHA-256 of the token. */
  hash: string;
  node: string;
  /** Granted to the node when it attests with this token. */
  taskAgents: string[];
  createdAt: number;
  expiresAt: number;
  usedAt: number | null;
  /** "uid:0 (admin)" */
  createdBy: string;
}

/** What a change-feed row names; the reader re-reads the current record for it. */
export type ChangeResource = 'entry' | 'task' | 'revocation' | 'authority' | 'node';

export interface Change {
  /** Strictly increasing across the whole store (every writer, every server). */
  revision: number;
  resource: ChangeResource;
  /** entry: id; task: "<agent>/<id>"; revocation: SPIFFE ID; authority: server ID; node: node name. */
  key: string;
}

/*
 * Every store method is asynchronous: a network database (PostgreSQL) sits behind the same
 * interface as SQLite and memory. Writes to entries, tasks, revocations and authorities append a
 * row to the change feed in the same transaction, so readers (the in-memory read model, other
 * servers) see every committed change exactly once, in commit order.
 */

export interface EntryStore {
  create(entry: NewRegistrationEntry, now: number): Promise<RegistrationEntry>;
  /** Replaces the entry; fails with not_found, or failed_precondition when expectedRevision is stale. */
  update(entry: NewRegistrationEntry, now: number, expectedRevision?: number): Promise<RegistrationEntry>;
  delete(id: string): Promise<RegistrationEntry>;
  get(id: string): Promise<RegistrationEntry | undefined>;
  list(): Promise<RegistrationEntry[]>;
}

export interface TaskStore {
  create(task: TaskRecord): Promise<TaskRecord>;
  get(agent: string, id: string): Promise<TaskRecord | undefined>;
  /** Tasks with this ID in any agent (task IDs are unique per agent only), by the tasks_id index. */
  findById(id: string): Promise<TaskRecord[]>;
  /** node: only tasks bound on that node (by the tasks_node index). */
  list(filter?: { agent?: string; state?: TaskState; node?: string }): Promise<TaskRecord[]>;
  /** Moves an active task to a final state; returns the updated record. Fails unless the task is active. */
  finish(agent: string, id: string, state: Exclude<TaskState, 'active'>, at: number, reason: string): Promise<TaskRecord>;
}

export interface RevocationStore {
  /** Adds or extends (keeps the later keepUntil) a revocation. */
  add(revocation: Revocation): Promise<Revocation>;
  get(spiffeId: string): Promise<Revocation | undefined>;
  list(): Promise<Revocation[]>;
  /** Drops revocations whose keepUntil has passed; returns how many. */
  prune(now: number): Promise<number>;
}

export interface IssuanceStore {
  /** Records SVIDs minted (one batch, one commit). */
  record(issuances: readonly IssuanceRecord[]): Promise<void>;
  listForSpiffeId(spiffeId: string): Promise<IssuanceRecord[]>;
  /** Latest notAfter of anything issued for this ID, or undefined. */
  latestNotAfter(spiffeId: string): Promise<number | undefined>;
  /** X.509 issuances whose SPIFFE ID is revoked and that have not yet expired at `now`. */
  listRevokedUnexpired(now: number): Promise<IssuanceRecord[]>;
  countForSpiffeId(spiffeId: string): Promise<number>;
  prune(now: number): Promise<number>;
}

export interface AuthorityStore {
  /** Publishes (replaces) one server's trust material. */
  put(record: AuthorityRecord): Promise<void>;
  get(serverId: string): Promise<AuthorityRecord | undefined>;
  list(): Promise<AuthorityRecord[]>;
  /** Removes records whose retireAt has passed; returns how many. */
  prune(now: number): Promise<number>;
}

export interface NodeStore {
  /** Creates or replaces the node's record (attestation, renewal, eviction). */
  put(node: NodeRecord): Promise<NodeRecord>;
  get(name: string): Promise<NodeRecord | undefined>;
  /** By name. */
  list(): Promise<NodeRecord[]>;
}

export interface JoinTokenStore {
  /** Fails with already_exists when a token with this hash exists. */
  create(token: JoinTokenRecord): Promise<JoinTokenRecord>;
  /**
   * Marks the token used, once: a conditional update (unused and unexpired at `now`) in one
   * transaction. not_found for an unknown hash; failed_precondition when used or expired.
   */
  consume(hash: string, now: number): Promise<JoinTokenRecord>;
  /** Drops tokens that expired before `now` (used or not); returns how many. */
  prune(now: number): Promise<number>;
}

/**
 * Small named values that tie the datastore to the rest of the server's state (for example the CA
 * root fingerprint and the audit chain head), so a replaced or rolled-back database is noticed.
 */
export interface AnchorStore {
  get(name: string): Promise<string | undefined>;
  put(name: string, value: string): Promise<void>;
}

export interface ChangeFeed {
  /** Changes with revision > after, oldest first, at most `limit` (default 1000). */
  since(after: number, limit?: number): Promise<Change[]>;
  /** Latest revision (0 when nothing was ever written). */
  head(): Promise<number>;
  /**
   * Calls `listener` (without payload) whenever new changes may be readable: at once after a local
   * commit, and for other writers by the database's notification (PostgreSQL LISTEN) where it has
   * one. Readers also poll, so a lost notification only delays. Returns the unsubscribe function.
   */
  watch(listener: () => void): () => void;
  /** Drops change rows older than `before` (by revision) that every reader has seen. */
  prune(beforeRevision: number): Promise<number>;
}

/** The stores of one datastore (or of one open transaction). */
export interface Stores {
  readonly entries: EntryStore;
  readonly tasks: TaskStore;
  readonly revocations: RevocationStore;
  readonly issuances: IssuanceStore;
  readonly authorities: AuthorityStore;
  readonly anchors: AnchorStore;
  readonly nodes: NodeStore;
  readonly joinTokens: JoinTokenStore;
}

export interface Datastore extends Stores {
  readonly kind: 'memory' | 'sqlite' | 'postgresql';
  readonly changes: ChangeFeed;
  /**
   * Runs fn atomically: every write made through the `tx` stores commits together or not at all
   * (a thrown error or rejected promise rolls back and is rethrown). Transactions are serialized
   * within one process; across servers the database's own locking applies. Do not use the outer
   * stores inside fn (with SQLite they would wait for the transaction to end: a deadlock).
   */
  transaction<T>(fn: (tx: Stores) => Promise<T>): Promise<T>;
  /** Resolves when the database answers a trivial query (readiness). */
  ping(): Promise<void>;
  close(): Promise<void>;
}
