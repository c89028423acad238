import { describe, expect, it } from 'vitest';
import { concatUnpooled, unpooled } from './buffers.js';

/** Whether `b` is all of its ArrayBuffer (keeps no other bytes alive). */
const ownMemory = (b: Buffer) => b.byteOffset === 0 && b.buffer.byteLength === b.length;

describe('buffers held for long', () => {
  it('copies a slice of the shared pool into memory of its own, and leaves a Buffer that has its own as it is', () => {
    const pooled = Buffer.from('a small buffer: a slice of an 8 KiB slab');
    expect(ownMemory(pooled)).toBe(false);
    const own = unpooled(pooled);
    expect(ownMemory(own)).toBe(true);
    expect(own.equals(pooled)).toBe(true);
    expect(unpooled(own)).toBe(own);
  });

  it('concatenates into memory of its own', () => {
    const parts = [Buffer.from([1, 2]), Buffer.alloc(0), Buffer.from([3])];
    const joined = concatUnpooled(parts);
    expect(ownMemory(joined)).toBe(true);
    expect(joined.equals(Buffer.concat(parts))).toBe(true);
  });
});
