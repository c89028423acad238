/**
 * Time is injected. Every module takes a Clock; only system-clock.ts reads the wall clock.
 * Times are milliseconds since the Unix epoch.
 */
export interface Clock {
  now(): number;
  /** Resolves after `ms` of this clock's time; rejects with an AbortError if `signal` aborts first. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

export function abortError(): Error {
  const err = new Error('aborted');
  err.name = 'AbortError';
  return err;
}

interface Sleeper {
  wakeAt: number;
  resolve: () => void;
}

/** A clock that only moves when a test advances it. Sleepers wake in time order. */
export class ManualClock implements Clock {
  private current: number;
  private sleepers: Sleeper[] = [];

  constructor(start: number | Date = Date.UTC(2026, 0, 1)) {
    this.current = typeof start === 'number' ? start : start.getTime();
  }

  now(): number {
    return this.current;
  }

  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(abortError());
    return new Promise((resolve, reject) => {
      const sleeper: Sleeper = { wakeAt: this.current + Math.max(0, ms), resolve };
      this.sleepers.push(sleeper);
      signal?.addEventListener(
        'abort',
        () => {
          this.sleepers = this.sleepers.filter((s) => s !== sleeper);
          reject(abortError());
        },
        { once: true },
      );
    });
  }

  /** Moves time forward and wakes every sleeper that is due, earliest first. */
  async advance(ms: number): Promise<void> {
    const target = this.current + ms;
    for (;;) {
      this.sleepers.sort((a, b) => a.wakeAt - b.wakeAt);
      const next = this.sleepers[0];
      if (!next || next.wakeAt > target) break;
      this.sleepers.shift();
      this.current = Math.max(this.current, next.wakeAt);
      next.resolve();
      // Let the woken code run (and possibly schedule new sleeps) before moving on.
      await new Promise((r) => setImmediate(r));
    }
    this.current = target;
  }

  set(time: number): void {
    this.current = time;
  }

  pendingSleeps(): number {
    return this.sleepers.length;
  }
}
