import { setFlagsFromString } from 'node:v8';
import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import { ServerMetrics } from './metrics.js';

// V8's own answer to "is this object still in fast mode?" (a dictionary-mode object costs several
// hundred bytes more, and every open stream's call object is one).
setFlagsFromString('--allow-natives-syntax');
const hasFastProperties = new Function('o', 'return %HasFastProperties(o)') as (o: object) => boolean;

/** Stands in for a grpc-js call object: its write comes from its prototype. */
class FakeCall extends EventEmitter {
  written: unknown[] = [];
  write(message: unknown): boolean {
    this.written.push(message);
    return true;
  }
}

describe('ServerMetrics.instrumentWorkload', () => {
  it("times a stream's first message, then gives the call its own write back and leaves the call object in fast mode", async () => {
    const metrics = new ServerMetrics();
    const calls: FakeCall[] = [];
    const handlers = metrics.instrumentWorkload({
      FetchX509SVID: ((call: FakeCall) => {
        // What the stream handler does: properties of its own on the call.
        (call as unknown as Record<symbol, unknown>)[Symbol('a')] = 1;
        (call as unknown as Record<symbol, unknown>)[Symbol('b')] = 2;
        calls.push(call);
      }) as never,
    });
    const call = new FakeCall();
    (handlers.FetchX509SVID as unknown as (c: FakeCall) => void)(call);
    expect(call.write('first')).toBe(true);
    expect(call.write('second')).toBe(true);
    expect(call.written).toEqual(['first', 'second']);
    expect(call.write).toBe(FakeCall.prototype.write);
    expect(hasFastProperties(call)).toBe(true);
    const exported = await metrics.routes().get('/metrics')!();
    expect(String(exported.body)).toMatch(/agentid_first_svid_seconds_count 1\b/);
  });
});
