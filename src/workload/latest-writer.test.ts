import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import type { ServerWritableStream } from '@grpc/grpc-js';
import { LatestWinsWriter } from './latest-writer.js';

/** A stream whose transport accepts `capacity` writes, then reports backpressure until drained. */
class FakeCall extends EventEmitter {
  written: string[] = [];
  constructor(private capacity: number) {
    super();
  }
  write(msg: Buffer): boolean {
    this.written.push(msg.toString());
    return this.written.length < this.capacity;
  }
  drain(more: number): void {
    this.capacity = this.written.length + more;
    this.emit('drain');
  }
}

const writerFor = (call: FakeCall) => new LatestWinsWriter(call as unknown as ServerWritableStream<unknown, unknown>);
const msg = (n: number) => Buffer.from(`state-${n}`);

describe('LatestWinsWriter', () => {
  it('writes every message while the transport keeps up', () => {
    const call = new FakeCall(100);
    const writer = writerFor(call);
    [1, 2, 3].forEach((n) => writer.write(msg(n)));
    expect(call.written).toEqual(['state-1', 'state-2', 'state-3']);
  });

  it('keeps only the newest message while backed up', () => {
    const call = new FakeCall(1);
    const writer = writerFor(call);
    writer.write(msg(1)); // fills the transport
    for (let n = 2; n <= 50; n++) writer.write(msg(n));
    expect(call.written).toEqual(['state-1']);
    call.drain(10);
    expect(call.written).toEqual(['state-1', 'state-50']);
  });

  it('never writes the message the reader already has, even when the state changed and changed back', () => {
    const call = new FakeCall(1);
    const writer = writerFor(call);
    writer.write(msg(1));
    writer.write(msg(2)); // pending
    writer.write(msg(1)); // replaces it: back to what was written
    call.drain(10);
    writer.write(msg(1));
    expect(call.written).toEqual(['state-1']);
    writer.write(msg(3));
    expect(call.written).toEqual(['state-1', 'state-3']);
  });

  it('drops everything after close', () => {
    const call = new FakeCall(1);
    const writer = writerFor(call);
    writer.write(msg(1));
    writer.write(msg(2));
    writer.close();
    call.drain(10);
    writer.write(msg(3));
    expect(call.written).toEqual(['state-1']);
  });
});
