import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import type { ServerWritableStream } from '@grpc/grpc-js';
import { LatestWinsWriter } from './latest-writer.js';

/** A stream whose transport accepts `capacity` writes, then reports backpressure until drained. */
class FakeCall extends EventEmitter {
  written: unknown[] = [];
  constructor(private capacity: number) {
    super();
  }
  write(msg: unknown): boolean {
    this.written.push(msg);
    return this.written.length < this.capacity;
  }
  drain(more: number): void {
    this.capacity = this.written.length + more;
    this.emit('drain');
  }
}

const writerFor = (call: FakeCall, encoded: string[]) =>
  new LatestWinsWriter<number>(call as unknown as ServerWritableStream<unknown, unknown>, (n) => {
    encoded.push(`state-${n}`);
    return `state-${n}`;
  });

describe('LatestWinsWriter', () => {
  it('writes every state while the transport keeps up', () => {
    const call = new FakeCall(100);
    const writer = writerFor(call, []);
    [1, 2, 3].forEach((n) => writer.write(n));
    expect(call.written).toEqual(['state-1', 'state-2', 'state-3']);
  });

  it('keeps only the newest state while backed up, and never encodes the ones it replaced', () => {
    const call = new FakeCall(1);
    const encoded: string[] = [];
    const writer = writerFor(call, encoded);
    writer.write(1); // fills the transport
    for (let n = 2; n <= 50; n++) writer.write(n);
    expect(call.written).toEqual(['state-1']);
    call.drain(10);
    expect(call.written).toEqual(['state-1', 'state-50']);
    expect(encoded).toEqual(['state-1', 'state-50']);
  });

  it('drops everything after close', () => {
    const call = new FakeCall(1);
    const writer = writerFor(call, []);
    writer.write(1);
    writer.write(2);
    writer.close();
    call.drain(10);
    writer.write(3);
    expect(call.written).toEqual(['state-1']);
  });
});
