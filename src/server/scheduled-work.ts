import type { Clock } from '../common/clock.js';
import type { Logger } from '../common/logger.js';
import { SYSTEM_ACTOR } from '../common/actor.js';
import type { CertificateAuthority } from '../ca/authority.js';
import type { AuditLog } from '../audit/index.js';
import type { Datastore } from '../datastore/types.js';
import type { ReadModel } from '../state/read-model.js';
import type { TaskService } from '../tasks/service.js';
import type { Revoker } from '../tasks/revocations.js';
import type { TaskHolders } from '../tasks/holders.js';
import { MIN_REMAINING_MS } from '../issuer/identity.js';
import { Scheduler, type ScheduledWork } from '../scheduler.js';
import type { Issuer } from './issuer.js';

/** CRLs are re-signed at least this often, so verifiers never hold one past its nextUpdate. */
const CRL_REFRESH_MS = 10 * 60_000;
/** Change-feed rows kept behind the head: readers further behind than this reload in full. */
const CHANGES_KEPT = 100_000;
/** After handing due renewals to the hub, when to look for the next ones. */
const RENEWAL_RECHECK_MS = 1000;

export interface ScheduledWorkDeps {
  clock: Clock;
  logger: Logger;
  ca: CertificateAuthority;
  audit: AuditLog;
  datastore: Pick<Datastore, 'authorities' | 'joinTokens' | 'changes'>;
  state: ReadModel;
  issuer: Issuer;
  tasks: TaskService;
  holders: TaskHolders;
  revoker: Revoker;
  /** Ties database, CA and audit trail together (integrity/); re-anchored as they move on. */
  integrity: { anchor(ca: CertificateAuthority, audit: AuditLog): void };
}

/**
 * The server's timed work (CA rotation, task expiry and liveness, entry expiry, renewal, CRL
 * refresh, pruning). Holds the little timing state it needs, so the composition root holds none.
 */
export class ServerWork implements ScheduledWork {
  private nextCrlRefresh: number;
  private lastEntryExpiryCheck: number;

  constructor(private readonly deps: ScheduledWorkDeps) {
    this.nextCrlRefresh = deps.clock.now() + CRL_REFRESH_MS;
    this.lastEntryExpiryCheck = deps.clock.now();
  }

  async rotateCa(): Promise<number> {
    const { ca, audit, issuer } = this.deps;
    const result = await ca.rotate();
    if (result.changed) {
      for (const e of result.events) {
        audit.append({ type: 'ca.rotated', outcome: 'ok', kind: e.kind, phase: e.phase, key_id: e.id, previous_key_id: e.previousId, not_after: e.notAfter });
      }
      this.deps.integrity.anchor(ca, audit);
      await issuer.caRotated();
    }
    return ca.nextRotationAt();
  }

  expireTasks(): Promise<number | undefined> {
    return this.deps.tasks.expireDue(SYSTEM_ACTOR);
  }

  expireEntries(): number | undefined {
    // Streams stop offering an entry once less than MIN_REMAINING_MS is left (identity.ts); refresh then.
    const now = this.deps.clock.now();
    const ends = this.deps.state.entries.expiryTimes().map((t) => t - MIN_REMAINING_MS + 1);
    if (ends.some((t) => t <= now && t > this.lastEntryExpiryCheck)) this.deps.issuer.hub.changed({ kind: 'expiry' });
    this.lastEntryExpiryCheck = now;
    const next = ends.filter((t) => t > now);
    return next.length > 0 ? Math.min(...next) : undefined;
  }

  async endOrphanedTasks(): Promise<void> {
    await this.deps.tasks.endOrphaned(SYSTEM_ACTOR);
    await this.deps.holders.prune();
  }

  async prune(): Promise<void> {
    const { clock, datastore, audit, logger, state } = this.deps;
    await this.deps.revoker.prune();
    await datastore.authorities.prune(clock.now());
    await datastore.joinTokens.prune(clock.now());
    if (state.revision > CHANGES_KEPT) await datastore.changes.prune(state.revision - CHANGES_KEPT);
    // An outside reference point for the audit chain (truncation leaves a valid shorter chain).
    logger.info({ auditSeq: audit.head.seq, auditHash: audit.head.hash }, 'audit log head');
    this.deps.integrity.anchor(this.deps.ca, audit);
  }

  renew(): number | undefined {
    const { issuer, clock } = this.deps;
    const own = issuer.serverSvid.renew();
    const due = issuer.cache.nextRenewalAt();
    if (due === undefined || due > clock.now()) return Math.min(own, due ?? own);
    // Re-minted by the hub's fan-out a moment later: look again after it, not in a busy loop.
    issuer.hub.changed({ kind: 'renewal' });
    return Math.min(own, clock.now() + RENEWAL_RECHECK_MS);
  }

  async refreshCrls(): Promise<number> {
    const { clock, issuer } = this.deps;
    if (clock.now() >= this.nextCrlRefresh) {
      this.nextCrlRefresh = clock.now() + CRL_REFRESH_MS;
      await issuer.refreshCrls();
    }
    return this.nextCrlRefresh;
  }
}

/** `livenessRanAt`: when start-up ended the orphaned tasks (see Scheduler). */
export function buildScheduler(deps: ScheduledWorkDeps & { livenessIntervalMs: number; livenessRanAt?: number }): { close(): Promise<void> } {
  const scheduler = new Scheduler(new ServerWork(deps), { clock: deps.clock, logger: deps.logger, livenessIntervalMs: deps.livenessIntervalMs, livenessRanAt: deps.livenessRanAt });
  // A new task or entry may expire before the next planned wake-up.
  const unfollow = deps.state.onChange(() => scheduler.poke());
  scheduler.start();
  return {
    async close() {
      unfollow();
      await scheduler.stop();
    },
  };
}
