import type { ServerWritableStream } from '@grpc/grpc-js';

/**
 * Writes stream states so that a slow reader only ever has the newest state waiting: while the
 * transport is backed up, newer states replace the pending one instead of queueing behind it.
 * Encoding happens at write time, so a replaced state costs nothing.
 */
export class LatestWinsWriter<S> {
  private pending: S | undefined;
  private waiting = false;
  private closed = false;

  constructor(
    private readonly call: ServerWritableStream<unknown, unknown>,
    private readonly encode: (state: S) => unknown,
  ) {
    call.on('drain', () => {
      this.waiting = false;
      const next = this.pending;
      this.pending = undefined;
      if (next !== undefined) this.write(next);
    });
  }

  write(state: S): void {
    if (this.closed) return;
    if (this.waiting) {
      this.pending = state;
      return;
    }
    const ok = this.call.write(this.encode(state));
    if (!ok) this.waiting = true;
  }

  close(): void {
    this.closed = true;
    this.pending = undefined;
  }
}
