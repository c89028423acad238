import type { Clock } from '../common/clock.js';
import { assertAuditableInput, type AuditSink } from '../audit/index.js';
import { auditActor, describeActor, type Actor } from '../common/actor.js';
import { failedPrecondition, notFound } from '../common/errors.js';
import type { TrustDomain } from '../spiffe/spiffe-id.js';
import type { Datastore, NewRegistrationEntry, RegistrationEntry } from '../datastore/types.js';
import { validateEntryInput, type EntryInput } from './validate.js';
import type { EntryIndex } from './match.js';

export interface EntryPolicy {
  trustDomain: TrustDomain;
  defaultX509TtlMs: number;
  defaultJwtTtlMs: number;
  maxX509TtlMs: number;
  maxJwtTtlMs: number;
}

export interface EntryServiceDeps {
  datastore: Pick<Datastore, 'entries' | 'transaction'>;
  index: EntryIndex;
  policy: EntryPolicy;
  clock: Clock;
  audit: AuditSink;
  isRevoked: (spiffeId: string) => boolean;
  /** Revokes a SPIFFE ID that no entry issues any more. */
  revoke: (spiffeId: string, reason: string, actor: Actor) => void;
  /** Called after any entry change (the entry before and after) so open streams pick it up. */
  onChange: (change: { before?: RegistrationEntry; after?: RegistrationEntry }) => void;
}

/** Registration entries: validated, stored, indexed for matching, audited; streams follow every change. */
export class EntryService {
  constructor(private readonly deps: EntryServiceDeps) {
    deps.index.replace(deps.datastore.entries.list());
  }

  create(input: EntryInput, actor: Actor): RegistrationEntry {
    const entry = this.validate(input);
    const created = this.deps.datastore.entries.create(entry, this.deps.clock.now());
    this.deps.index.upsert(created);
    this.audit('entry.created', created, actor);
    this.deps.onChange({ after: created });
    return created;
  }

  update(id: string, input: EntryInput, actor: Actor, expectedRevision?: number): RegistrationEntry {
    const before = this.get(id);
    const entry = { ...this.validate(input), id };
    const updated = this.deps.datastore.entries.update(entry, this.deps.clock.now(), expectedRevision);
    this.deps.index.upsert(updated);
    this.audit('entry.updated', updated, actor);
    if (before.spiffeId !== updated.spiffeId) this.revokeIfUnused(before.spiffeId, `entry ${id} changed its SPIFFE ID`, actor);
    this.deps.onChange({ before, after: updated });
    return updated;
  }

  delete(id: string, actor: Actor): RegistrationEntry {
    const deleted = this.deps.datastore.entries.delete(id);
    this.deps.index.remove(id);
    this.audit('entry.deleted', deleted, actor);
    this.revokeIfUnused(deleted.spiffeId, `entry ${id} deleted`, actor);
    this.deps.onChange({ before: deleted });
    return deleted;
  }

  get(id: string): RegistrationEntry {
    const entry = this.deps.datastore.entries.get(id);
    if (!entry) throw notFound(`entry "${id}" not found`);
    return entry;
  }

  list(): RegistrationEntry[] {
    return this.deps.datastore.entries.list();
  }

  private validate(input: EntryInput): NewRegistrationEntry {
    const { policy } = this.deps;
    const entry = validateEntryInput(
      { ...input, x509TtlMs: input.x509TtlMs ?? policy.defaultX509TtlMs, jwtTtlMs: input.jwtTtlMs ?? policy.defaultJwtTtlMs },
      { trustDomain: policy.trustDomain, maxX509TtlMs: policy.maxX509TtlMs, maxJwtTtlMs: policy.maxJwtTtlMs, now: this.deps.clock.now() },
    );
    // Audited with these values: refuse what the audit log would refuse, before anything is stored.
    assertAuditableInput({ type: 'entry.created', spiffe_id: entry.spiffeId, selectors: entry.selectors.map((s) => `${s.type}:${s.value}`) }, 'entry');
    if (this.deps.isRevoked(entry.spiffeId)) {
      throw failedPrecondition(`entry: ${entry.spiffeId} is revoked until its last SVID expires (see agentid revocations list)`);
    }
    return entry;
  }

  /**
   * A SPIFFE ID that no entry issues any more goes on the deny list, so SVIDs already out are
   * refused everywhere; an ID still issued by another entry stays valid.
   */
  private revokeIfUnused(spiffeId: string, reason: string, actor: Actor): void {
    if (this.deps.datastore.entries.list().some((e) => e.spiffeId === spiffeId)) return;
    this.deps.revoke(spiffeId, reason, actor);
  }

  private audit(type: 'entry.created' | 'entry.updated' | 'entry.deleted', entry: RegistrationEntry, actor: Actor): void {
    this.deps.audit.append({
      type,
      outcome: 'ok',
      actor: auditActor(actor),
      entry_id: entry.id,
      spiffe_id: entry.spiffeId,
      selectors: entry.selectors.map((s) => `${s.type}:${s.value}`),
      revision: entry.revision,
      by: describeActor(actor),
    });
  }
}
