import { invalidArgument } from '../common/errors.js';
import type { AuthorityRecord, Datastore, NewRegistrationEntry, RegistrationEntry, Revocation, Stores, TaskRecord } from '../datastore/types.js';
import type { WireSyncUpdate } from './node-client.js';

/** Anchor holding the central change-feed revision the replica has reached. */
const REVISION_ANCHOR = 'agent.sync_revision';

function parseAll<T>(items: readonly string[], what: string): T[] {
  return items.map((text) => {
    try {
      const value = JSON.parse(text) as T;
      if (typeof value !== 'object' || value === null) throw new Error('not an object');
      return value;
    } catch (err) {
      throw invalidArgument(`sync update: a ${what} record is not JSON of an object`, err);
    }
  });
}

function entryInput(e: RegistrationEntry): NewRegistrationEntry {
  const { createdAt: _c, updatedAt: _u, revision: _r, ...rest } = e;
  return rest;
}

/**
 * The agent's copy of what the server sends it (entries, tasks bound on its node, the deny list,
 * every server's trust material), kept in an ordinary agentid datastore (SQLite in the data
 * directory). Each SyncUpdate is applied through the normal stores in one transaction together with
 * the revision it brings the replica to, so a crash never leaves half an update, and the read
 * model follows the local change feed exactly as a server's does.
 */
export class Replica {
  constructor(private readonly datastore: Datastore) {}

  /** Central revision applied so far (0: nothing yet; the agent asks for a snapshot). */
  async revision(): Promise<number> {
    const text = await this.datastore.anchors.get(REVISION_ANCHOR);
    return text === undefined ? 0 : Number(text);
  }

  async apply(update: WireSyncUpdate, now: number): Promise<void> {
    const entries = parseAll<RegistrationEntry>(update.entries, 'entry');
    const tasks = parseAll<TaskRecord>(update.tasks, 'task');
    const revocations = parseAll<Revocation>(update.revocations, 'revocation');
    const authorities = parseAll<AuthorityRecord>(update.authorities, 'authority');
    await this.datastore.transaction(async (tx) => {
      if (update.snapshot) await this.dropAbsent(tx, { entries, tasks, revocations, authorities }, now);
      for (const id of update.deleted_entries) if (await tx.entries.get(id)) await tx.entries.delete(id);
      for (const e of entries) {
        if (await tx.entries.get(e.id)) await tx.entries.update(entryInput(e), now);
        else await tx.entries.create(entryInput(e), now);
      }
      for (const t of tasks) await this.putTask(tx, t);
      // The server pruned these once their keepUntil passed; so has every revocation that ends earlier.
      const removedRevocations = (await Promise.all(update.removed_revocations.map((id) => tx.revocations.get(id)))).filter((r) => r !== undefined);
      if (removedRevocations.length > 0) await tx.revocations.prune(Math.max(...removedRevocations.map((r) => r.keepUntil)) + 1);
      for (const r of revocations) await tx.revocations.add(r);
      await this.removeAuthorities(tx, update.removed_authorities);
      for (const a of authorities) await tx.authorities.put(a);
      await tx.anchors.put(REVISION_ANCHOR, String(update.revision));
    });
  }

  /** Eviction: nothing the node held may be served again, even after a restart. */
  async clear(now: number): Promise<void> {
    await this.datastore.transaction(async (tx) => {
      await this.dropAbsent(tx, { entries: [], tasks: [], revocations: [], authorities: [] }, now);
      await tx.anchors.put(REVISION_ANCHOR, '0');
    });
  }

  private async putTask(tx: Stores, t: TaskRecord): Promise<void> {
    const held = await tx.tasks.get(t.agent, t.id);
    if (!held) await tx.tasks.create(t);
    else if (held.state === 'active' && t.state !== 'active') await tx.tasks.finish(t.agent, t.id, t.state, t.endedAt ?? 0, t.endReason ?? '');
  }

  /** A snapshot replaces everything: what it does not name goes (tasks are ended: their processes must not fall back to other identities). */
  private async dropAbsent(tx: Stores, keep: { entries: RegistrationEntry[]; tasks: TaskRecord[]; revocations: Revocation[]; authorities: AuthorityRecord[] }, now: number): Promise<void> {
    const entryIds = new Set(keep.entries.map((e) => e.id));
    for (const e of await tx.entries.list()) if (!entryIds.has(e.id)) await tx.entries.delete(e.id);
    const taskKeys = new Set(keep.tasks.map((t) => `${t.agent}/${t.id}`));
    for (const t of await tx.tasks.list({ state: 'active' })) {
      if (!taskKeys.has(`${t.agent}/${t.id}`)) await tx.tasks.finish(t.agent, t.id, 'ended', now, 'no longer bound on this node');
    }
    const revoked = new Set(keep.revocations.map((r) => r.spiffeId));
    const gone = (await tx.revocations.list()).filter((r) => !revoked.has(r.spiffeId));
    if (gone.length > 0) await tx.revocations.prune(Math.max(...gone.map((r) => r.keepUntil)) + 1);
    const servers = new Set(keep.authorities.map((a) => a.serverId));
    await this.removeAuthorities(tx, (await tx.authorities.list()).map((a) => a.serverId).filter((id) => !servers.has(id)));
  }

  /** The authority store removes only retired records: mark them retired long ago, then prune. */
  private async removeAuthorities(tx: Stores, serverIds: readonly string[]): Promise<void> {
    let any = false;
    for (const id of serverIds) {
      const held = await tx.authorities.get(id);
      if (!held) continue;
      await tx.authorities.put({ ...held, retireAt: 1 });
      any = true;
    }
    if (any) await tx.authorities.prune(2);
  }
}
