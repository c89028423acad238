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

export interface EntryStore {
  create(entry: NewRegistrationEntry, now: number): RegistrationEntry;
  /** Replaces the entry; fails with not_found, or failed_precondition when expectedRevision is stale. */
  update(entry: NewRegistrationEntry, now: number, expectedRevision?: number): RegistrationEntry;
  delete(id: string): RegistrationEntry;
  get(id: string): RegistrationEntry | undefined;
  list(): RegistrationEntry[];
}

export interface TaskStore {
  create(task: TaskRecord): TaskRecord;
  get(agent: string, id: string): TaskRecord | undefined;
  list(filter?: { agent?: string; state?: TaskState }): TaskRecord[];
  /** Moves an active task to a final state; returns the updated record. Fails unless the task is active. */
  finish(agent: string, id: string, state: Exclude<TaskState, 'active'>, at: number, reason: string): TaskRecord;
}

export interface RevocationStore {
  /** Adds or extends (keeps the later keepUntil) a revocation. */
  add(revocation: Revocation): Revocation;
  get(spiffeId: string): Revocation | undefined;
  list(): Revocation[];
  /** Drops revocations whose keepUntil has passed; returns how many. */
  prune(now: number): number;
}

export interface IssuanceStore {
  record(issuance: IssuanceRecord): void;
  listForSpiffeId(spiffeId: string): IssuanceRecord[];
  /** Latest notAfter of anything issued for this ID, or undefined. */
  latestNotAfter(spiffeId: string): number | undefined;
  /** X.509 issuances whose SPIFFE ID is revoked and that have not yet expired at `now`. */
  listRevokedUnexpired(now: number): IssuanceRecord[];
  countForSpiffeId(spiffeId: string): number;
  prune(now: number): number;
}

export interface Datastore {
  readonly entries: EntryStore;
  readonly tasks: TaskStore;
  readonly revocations: RevocationStore;
  readonly issuances: IssuanceStore;
  /** Runs fn atomically (all or nothing). Implementations without transactions run it as is. */
  transaction<T>(fn: () => T): T;
  close(): void;
}
