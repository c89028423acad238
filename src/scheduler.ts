import type { Clock } from './common/clock.js';
import type { Logger } from './common/logger.js';

/** The timed work of a running server; each step reports when it next needs to run. */
export interface ScheduledWork {
  /** Rotates CA slots when due; returns the next time a rotation check is needed. */
  rotateCa(): Promise<number>;
  /** Ends expired tasks; returns the next task expiry, if any. */
  expireTasks(): Promise<number | undefined>;
  /** Drops registration entries that reached their expiry from open streams; returns the next one. */
  expireEntries(): number | undefined;
  /** Ends tasks whose bound process or cgroup is gone. */
  endOrphanedTasks(): Promise<void>;
  /** Prunes expired revocations, issuance records, retired servers' material and old change-feed rows. */
  prune(): Promise<void>;
  /** Re-mints SVIDs that reached their renewal time and pushes them; returns the next renewal. */
  renew(): number | undefined;
  /** Rebuilds CRLs before they go stale; returns when next. */
  refreshCrls(): Promise<number>;
}

const PRUNE_EVERY_MS = 60_000;

/**
 * The one timer loop. Sleeps on the injected clock until the earliest due item (at most one liveness
 * interval, so a dead task process is noticed within it), and never lets one failing step stop the rest.
 */
export class Scheduler {
  private readonly controller = new AbortController();
  private wake: AbortController | undefined;
  private running: Promise<void> | undefined;
  /**
   * The first prune (and its re-anchoring) runs one interval after start, not in the first pass:
   * the server has just anchored, and a restart's reconnect storm should not wait on its writes.
   */
  private lastPrune: number;
  private lastLiveness = -Infinity;

  constructor(
    private readonly work: ScheduledWork,
    private readonly deps: {
      clock: Clock;
      logger: Logger;
      livenessIntervalMs: number;
      /**
       * When the owner last ran a liveness pass itself (the server does at start, before its
       * Workload API socket appears): the first pass here comes one interval after it, not during
       * a restart's reconnect storm (it reads /proc for every task whose PID is running).
       */
      livenessRanAt?: number;
    },
  ) {
    this.lastPrune = deps.clock.now();
    this.lastLiveness = deps.livenessRanAt ?? -Infinity;
  }

  start(): void {
    this.running ??= this.loop();
  }

  /**
   * Re-plans now (something changed that may move the next due time earlier). Only the steps that
   * plan by due time run again; the liveness pass keeps its interval (it reads /proc once per task,
   * and every admin call pokes: with a thousand tasks, a pass per call made each call wait for it).
   */
  poke(): void {
    this.wake?.abort();
  }

  async stop(): Promise<void> {
    this.controller.abort();
    this.wake?.abort();
    await this.running;
  }

  /** One pass over all the work; exported for tests that drive time by hand. */
  async tick(): Promise<number> {
    const { clock, logger } = this.deps;
    const step = async <T>(name: string, f: () => T | Promise<T>): Promise<T | undefined> => {
      try {
        return await f();
      } catch (err) {
        logger.error({ err, step: name }, 'scheduled step failed');
        return undefined;
      }
    };
    const now = clock.now();
    const times: (number | undefined)[] = [];
    times.push(await step('rotate-ca', () => this.work.rotateCa()));
    times.push(await step('expire-tasks', () => this.work.expireTasks()));
    times.push(await step('expire-entries', () => this.work.expireEntries()));
    if (now - this.lastLiveness >= this.deps.livenessIntervalMs) {
      this.lastLiveness = now;
      await step('end-orphaned-tasks', () => this.work.endOrphanedTasks());
    }
    times.push(this.lastLiveness + this.deps.livenessIntervalMs);
    if (now - this.lastPrune >= PRUNE_EVERY_MS) {
      this.lastPrune = now;
      await step('prune', () => this.work.prune());
    }
    times.push(await step('refresh-crls', () => this.work.refreshCrls()));
    times.push(await step('renew', () => this.work.renew()));
    return Math.min(...times.filter((t): t is number => t !== undefined));
  }

  private async loop(): Promise<void> {
    const { clock } = this.deps;
    while (!this.controller.signal.aborted) {
      const next = await this.tick();
      this.wake = new AbortController();
      const signal = AbortSignal.any([this.controller.signal, this.wake.signal]);
      try {
        await clock.sleep(Math.max(10, next - clock.now()), signal);
      } catch {
        // Woken early: plan again.
      }
    }
  }
}
