/**
 * Resolves on a later turn of the event loop, after the I/O that is ready has been served. Long
 * synchronous passes (a liveness check over thousands of tasks) await this every few dozen items,
 * so no pass holds up an admin call or a stream write for more than a few milliseconds: awaiting a
 * promise that is already resolved does not give the event loop a turn.
 */
export function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

/** Items one liveness pass checks between two turns of the event loop (a /proc read is 15-50 us). */
export const LIVENESS_SLICE = 64;
