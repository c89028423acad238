import type { Clock } from '../common/clock.js';
import { AgentIdError, type ErrorCode } from '../common/errors.js';

export interface BackoffOptions {
  /** Delay ceiling of the first retry (default 250 ms). */
  initialMs?: number;
  /** Upper bound of any delay (default 30 s). */
  maxMs?: number;
}

export const DEFAULT_BACKOFF: Required<BackoffOptions> = { initialMs: 250, maxMs: 30_000 };

/**
 * Delay before retry number `attempt` (0-based): the ceiling doubles from initialMs up to maxMs,
 * and the delay is drawn from [ceiling/2, ceiling). Half the ceiling is kept so a flapping
 * server never sees a hot loop; the random half spreads a restart's reconnect storm.
 */
export function backoffDelay(attempt: number, options: Required<BackoffOptions>, random: () => number): number {
  const ceiling = Math.min(options.maxMs, options.initialMs * 2 ** Math.min(attempt, 30));
  return Math.floor(ceiling / 2 + (ceiling / 2) * Math.min(Math.max(random(), 0), 1));
}

/**
 * Codes that retrying cannot fix: the spec says report INVALID_ARGUMENT and UNIMPLEMENTED
 * without retrying; failed_precondition is our own "client is closed". PERMISSION_DENIED and
 * UNAVAILABLE are retried with backoff (Workload API §4.5).
 */
const FATAL: ReadonlySet<ErrorCode> = new Set<ErrorCode>(['invalid_argument', 'unimplemented', 'failed_precondition']);

export function isRetryable(err: AgentIdError): boolean {
  return !FATAL.has(err.code);
}

export type WatchFn<T> = (
  onUpdate: (value: T) => void,
  onError: (err: AgentIdError) => void,
  signal: AbortSignal,
) => Promise<void>;

export interface FollowerHandlers<T> {
  update(value: T): void;
  /** A bad message, or a stream failure that will be retried. */
  error(err: AgentIdError): void;
  /** A failure that ends following for good. */
  stopped(err: AgentIdError): void;
}

export interface FollowerDeps {
  clock: Clock;
  backoff: Required<BackoffOptions>;
  random: () => number;
}

/** Keeps one Workload API stream open: re-opens it after failures, with backoff on the clock. */
export class Follower<T> {
  private readonly controller = new AbortController();
  private readonly done: Promise<void>;

  constructor(watch: WatchFn<T>, handlers: FollowerHandlers<T>, deps: FollowerDeps) {
    this.done = this.loop(watch, handlers, deps);
  }

  private async loop(watch: WatchFn<T>, handlers: FollowerHandlers<T>, deps: FollowerDeps): Promise<void> {
    const signal = this.controller.signal;
    let attempt = 0;
    while (!signal.aborted) {
      try {
        await watch(
          (value) => {
            attempt = 0;
            handlers.update(value);
          },
          (err) => handlers.error(err),
          signal,
        );
        // A watch settles cleanly only on abort; anything else is a dropped stream.
        if (!signal.aborted) throw new AgentIdError('unavailable', 'Workload API stream ended unexpectedly');
      } catch (err) {
        if (signal.aborted) return;
        const e = err instanceof AgentIdError ? err : new AgentIdError('internal', String(err));
        if (!isRetryable(e)) {
          handlers.stopped(e);
          return;
        }
        handlers.error(e);
        try {
          await deps.clock.sleep(backoffDelay(attempt, deps.backoff, deps.random), signal);
        } catch {
          return;
        }
        attempt += 1;
      }
    }
  }

  /** Cancels the stream (the server sees CANCELLED) and waits for the loop to finish. */
  async stop(): Promise<void> {
    this.controller.abort();
    await this.done;
  }
}
