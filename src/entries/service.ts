import type { Clock } from '../common/clock.js';
import { assertAuditableInput, type AuditSink } from '../audit/index.js';
import { auditActor, describeActor, type Actor } from '../common/actor.js';
import { failedPrecondition, notFound } from '../common/errors.js';
import type { TrustDomain } from '../spiffe/spiffe-id.js';
import type { Datastore, NewRegistrationEntry, RegistrationEntry, Stores } from '../datastore/types.js';
import type { Revoker } from '../tasks/revocations.js';
import { validateEntryInput, type EntryInput } from './validate.js';

export interface EntryPolicy {
  trustDomain: TrustDomain;
  defaultX509TtlMs: number;
  defaultJwtTtlMs: number;
  maxX509TtlMs: number;
  maxJwtTtlMs: number;
}

export interface EntryServiceDeps {
  datastore: Pick<Datastore, 'entries' | 'transaction'>;
  /** The read model: whether an ID is denied, and a way to wait until a write is visible. */
  state: { isRevoked(spiffeId: string): boolean; sync(): Promise<void> };
  policy: EntryPolicy;
  clock: Clock;
  audit: AuditSink;
  revoker: Pick<Revoker, 'keepUntilFor' | 'addWithin'>;
}

/**
 * Registration entries: validated, stored and audited in one transaction; the read model (and so
 * every stream) follows through the datastore's change feed.
 */
export class EntryService {
  constructor(private readonly deps: EntryServiceDeps) {}

  async create(input: EntryInput, actor: Actor): Promise<RegistrationEntry> {
    const entry = this.validate(input);
    const created = await this.deps.datastore.transaction(async (tx) => {
      const record = await tx.entries.create(entry, this.deps.clock.now());
      this.audit('entry.created', record, actor);
      return record;
    });
    await this.deps.state.sync();
    return created;
  }

  async update(id: string, input: EntryInput, actor: Actor, expectedRevision?: number): Promise<RegistrationEntry> {
    const entry = { ...this.validate(input), id };
    const before = await this.get(id);
    // Only a changed SPIFFE ID may need revoking (below): read its issuance horizon only then.
    const keepUntil = before.spiffeId !== entry.spiffeId ? await this.deps.revoker.keepUntilFor(before.spiffeId) : 0;
    const updated = await this.deps.datastore.transaction(async (tx) => {
      const record = await tx.entries.update(entry, this.deps.clock.now(), expectedRevision);
      this.audit('entry.updated', record, actor);
      if (before.spiffeId !== record.spiffeId) await this.revokeIfUnused(tx, before.spiffeId, `entry ${id} changed its SPIFFE ID`, actor, keepUntil);
      return record;
    });
    await this.deps.state.sync();
    return updated;
  }

  async delete(id: string, actor: Actor): Promise<RegistrationEntry> {
    const current = await this.get(id);
    const keepUntil = await this.deps.revoker.keepUntilFor(current.spiffeId);
    const deleted = await this.deps.datastore.transaction(async (tx) => {
      const record = await tx.entries.delete(id);
      this.audit('entry.deleted', record, actor);
      await this.revokeIfUnused(tx, record.spiffeId, `entry ${id} deleted`, actor, keepUntil);
      return record;
    });
    await this.deps.state.sync();
    return deleted;
  }

  async get(id: string): Promise<RegistrationEntry> {
    const entry = await this.deps.datastore.entries.get(id);
    if (!entry) throw notFound(`entry "${id}" not found`);
    return entry;
  }

  list(): Promise<RegistrationEntry[]> {
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
    if (this.deps.state.isRevoked(entry.spiffeId)) {
      throw failedPrecondition(`entry: ${entry.spiffeId} is revoked until its last SVID expires (see agentid revocations list)`);
    }
    return entry;
  }

  /**
   * A SPIFFE ID that no entry issues any more goes on the deny list (in the same transaction), so
   * SVIDs already out are refused everywhere; an ID still issued by another entry stays valid.
   */
  private async revokeIfUnused(tx: Stores, spiffeId: string, reason: string, actor: Actor, keepUntil: number): Promise<void> {
    if ((await tx.entries.list()).some((e) => e.spiffeId === spiffeId)) return;
    await this.deps.revoker.addWithin(tx, spiffeId, reason, actor, keepUntil);
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
