import type { ServerWritableStream } from '@grpc/grpc-js';

/** Where a call keeps its writer: the 'drain' listener is one function shared by every call. */
const WRITER = Symbol('agentid.latestWinsWriter');

type WriterCall = ServerWritableStream<unknown, unknown> & { [WRITER]?: LatestWinsWriter };

/** Listener of every writer's call ('this' is the call): no closure per open stream. */
function onDrain(this: WriterCall): void {
  this[WRITER]?.drained();
}

/**
 * Writes pre-encoded stream messages so that a slow reader only ever has the newest one waiting:
 * while the transport is backed up, a newer message replaces the pending one instead of queueing
 * behind it. A message equal to the last one written is not written again: a state can change and
 * change back while the reader is backed up (an entry added and removed), and the reader already
 * has it.
 */
export class LatestWinsWriter {
  private pending: Buffer | undefined;
  private lastWritten: Buffer | undefined;
  private waiting = false;
  private closed = false;

  constructor(protected readonly call: ServerWritableStream<unknown, unknown>) {
    (call as WriterCall)[WRITER] = this;
    call.on('drain', onDrain);
  }

  write(message: Buffer): void {
    if (this.closed) return;
    if (this.waiting) {
      this.pending = message;
      return;
    }
    if (this.lastWritten?.equals(message)) return;
    this.lastWritten = message;
    if (!this.call.write(message)) this.waiting = true;
  }

  close(): void {
    this.closed = true;
    this.pending = undefined;
  }

  /** The transport took what was written: the pending message, if any, goes now. */
  drained(): void {
    this.waiting = false;
    const next = this.pending;
    this.pending = undefined;
    if (next !== undefined) this.write(next);
  }
}
