import { setTimeout as delay } from 'node:timers/promises';
import type { Clock } from './clock.js';

/** The one place that reads the wall clock. Built once by the composition root (server.ts, cli). */
export const systemClock: Clock = {
  now: () => Date.now(),
  sleep: (ms, signal) => delay(Math.max(0, ms), undefined, signal ? { signal } : undefined),
};
