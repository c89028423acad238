import { createHash } from 'node:crypto';
import { normalizeSelectors, selectorKey, type Selector } from '../spiffe/selector.js';
import type { IssuanceRecord, NodeRecord, RegistrationEntry, Revocation, TaskRecord } from './types.js';

/*
 * Semantics shared by every Datastore implementation, so that memory, SQLite (and later
 * PostgreSQL) agree on ordering, merging and uniqueness without each re-deriving them.
 */

/** Binary string order, the same as SQL's default collation for ASCII/UTF-8 TEXT. */
export function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Entries list oldest first, then by id: the order matching relies on for a stable default SVID. */
export function compareEntries(a: RegistrationEntry, b: RegistrationEntry): number {
  return a.createdAt - b.createdAt || compareText(a.id, b.id);
}

export function compareTasks(a: TaskRecord, b: TaskRecord): number {
  return a.createdAt - b.createdAt || compareText(a.agent, b.agent) || compareText(a.id, b.id);
}

export function compareRevocations(a: Revocation, b: Revocation): number {
  return a.revokedAt - b.revokedAt || compareText(a.spiffeId, b.spiffeId);
}

export function compareIssuances(a: IssuanceRecord, b: IssuanceRecord): number {
  return a.issuedAt - b.issuedAt || compareText(a.serial, b.serial) || compareText(a.kind, b.kind);
}

/**
 * Identity of an entry's selector set for the uniqueness rule (same SPIFFE ID + same selectors
 * + same node is a duplicate, as in SPIRE, where the parent counts too). Hashed so a unique index
 * stays small whatever the selector count (PostgreSQL limits btree keys to about 2.7 kB). An entry
 * without a node hashes its selectors alone, so rows written before nodes existed keep their hash;
 * a node-scoped entry adds a line no selector can produce ("type:value" always has a colon).
 */
export function selectorSetHash(selectors: readonly Selector[], node: string | null = null): string {
  const canonical = normalizeSelectors(selectors).map(selectorKey).join('\n');
  return createHash('sha256').update(node === null ? canonical : `${canonical}\n@node ${node}`).digest('hex');
}

export function compareNodes(a: NodeRecord, b: NodeRecord): number {
  return compareText(a.name, b.name);
}

/**
 * Adding a revocation for an ID that is already revoked:
 *  - revokedAt and revokedBy: the earliest revocation wins, because "revoked since" must not move
 *    later (that would hide the window in which the ID was already untrusted);
 *  - keepUntil: the later one wins, because the deny list must outlive every SVID issued for the
 *    ID, including ones issued after the first revocation was recorded;
 *  - reason: a new non-empty reason replaces the old one (operators refine it); an empty reason
 *    never erases one.
 */
export function mergeRevocation(existing: Revocation | undefined, incoming: Revocation): Revocation {
  if (!existing) return { ...incoming };
  const incomingFirst = incoming.revokedAt < existing.revokedAt;
  return {
    spiffeId: existing.spiffeId,
    reason: incoming.reason !== '' ? incoming.reason : existing.reason,
    revokedAt: incomingFirst ? incoming.revokedAt : existing.revokedAt,
    revokedBy: incomingFirst ? incoming.revokedBy : existing.revokedBy,
    keepUntil: Math.max(existing.keepUntil, incoming.keepUntil),
  };
}

/*
 * Expiry is inclusive of the instant itself, as X.509 notAfter is: something whose notAfter
 * (or keepUntil) equals `now` is still valid at `now` and is kept.
 */
export function isExpiredAt(notAfter: number, now: number): boolean {
  return notAfter < now;
}

export function isThenable(value: unknown): boolean {
  return (
    (typeof value === 'object' || typeof value === 'function') &&
    value !== null &&
    typeof (value as { then?: unknown }).then === 'function'
  );
}

/**
 * A task's key in the change feed, "<agent>/<id>": every store writes it, the read model parses it.
 * Agent names are SPIFFE ID path segments (no "/"), so the first "/" splits it.
 */
export function taskChangeKey(agent: string, id: string): string {
  return `${agent}/${id}`;
}

export function parseTaskChangeKey(key: string): { agent: string; id: string } {
  const slash = key.indexOf('/');
  return { agent: key.slice(0, slash), id: key.slice(slash + 1) };
}

export const FINAL_TASK_STATES: ReadonlySet<string> = new Set(['ended', 'revoked', 'expired']);

/** Why a join token could not be consumed (it exists): the message every store gives. */
export function joinTokenRefusal(row: { used_at: number | null; expires_at: number } | undefined): string | undefined {
  if (!row) return undefined;
  return row.used_at !== null ? 'join token already used' : 'join token expired';
}
