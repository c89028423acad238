import { describe, expect, it } from 'vitest';
import { ManualClock } from './common/clock.js';
import { silentLogger } from './common/logger.js';
import { Scheduler, type ScheduledWork } from './scheduler.js';

/** Lets the scheduler's loop run until it sleeps again. */
async function untilAsleep(clock: ManualClock): Promise<void> {
  while (clock.pendingSleeps() === 0) await new Promise((r) => setImmediate(r));
}

describe('Scheduler', () => {
  it('re-plans due work on every poke but runs the liveness pass once per interval', async () => {
    const clock = new ManualClock();
    const runs = { expireTasks: 0, liveness: 0 };
    const work: ScheduledWork = {
      rotateCa: async () => clock.now() + 3_600_000,
      expireTasks: async () => {
        runs.expireTasks++;
        return undefined;
      },
      expireEntries: () => undefined,
      endOrphanedTasks: async () => {
        runs.liveness++;
      },
      prune: async () => {},
      renew: () => undefined,
      refreshCrls: async () => clock.now() + 600_000,
    };
    const scheduler = new Scheduler(work, { clock, logger: silentLogger(), livenessIntervalMs: 1000 });
    scheduler.start();
    await untilAsleep(clock);
    expect(runs).toEqual({ expireTasks: 1, liveness: 1 });

    // Admin calls poke (a new task may expire sooner): expiry is planned again, liveness is not re-run.
    for (let i = 0; i < 3; i++) {
      await clock.advance(100);
      scheduler.poke();
      await untilAsleep(clock);
    }
    expect(runs).toEqual({ expireTasks: 4, liveness: 1 });

    // The liveness interval since the last pass has passed: the sleep ends then, and the pass runs.
    await clock.advance(700);
    await untilAsleep(clock);
    expect(runs).toEqual({ expireTasks: 5, liveness: 2 });
    await scheduler.stop();
  });

  it('runs the first liveness pass one interval after the one its owner ran at start, not in the first pass', async () => {
    const clock = new ManualClock();
    let passes = 0;
    const work: ScheduledWork = {
      rotateCa: async () => clock.now() + 3_600_000,
      expireTasks: async () => undefined,
      expireEntries: () => undefined,
      endOrphanedTasks: async () => {
        passes++;
      },
      prune: async () => {},
      renew: () => undefined,
      refreshCrls: async () => clock.now() + 600_000,
    };
    const ranAt = clock.now();
    await clock.advance(200);
    const scheduler = new Scheduler(work, { clock, logger: silentLogger(), livenessIntervalMs: 1000, livenessRanAt: ranAt });
    expect(await scheduler.tick()).toBe(ranAt + 1000);
    expect(passes).toBe(0);
    await clock.advance(800);
    await scheduler.tick();
    expect(passes).toBe(1);
  });

  it('prunes (and re-anchors) one interval after start, not in the first pass after a restart', async () => {
    const clock = new ManualClock();
    let prunes = 0;
    const work: ScheduledWork = {
      rotateCa: async () => clock.now() + 3_600_000,
      expireTasks: async () => undefined,
      expireEntries: () => undefined,
      endOrphanedTasks: async () => {},
      prune: async () => {
        prunes++;
      },
      renew: () => undefined,
      refreshCrls: async () => clock.now() + 600_000,
    };
    const scheduler = new Scheduler(work, { clock, logger: silentLogger(), livenessIntervalMs: 1000 });
    expect(await scheduler.tick()).toBeGreaterThan(clock.now());
    expect(prunes).toBe(0);
    await clock.advance(59_999);
    await scheduler.tick();
    expect(prunes).toBe(0);
    await clock.advance(1);
    await scheduler.tick();
    expect(prunes).toBe(1);
  });
});
