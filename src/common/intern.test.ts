import { describe, expect, it } from 'vitest';
import { InternPool } from './intern.js';

describe('InternPool', () => {
  it('keeps one value per key, replaces one that no longer fits, and forgets everything at its limit', () => {
    const pool = new InternPool<{ v: number }>(3);
    let made = 0;
    const make = (v: number) => () => (made++, { v });
    const a = pool.intern('a', make(1));
    expect(pool.intern('a', make(99))).toBe(a);
    expect(made).toBe(1);
    // A value that does not fit what the caller has now is replaced under the same key.
    const a2 = pool.intern('a', make(2), (known) => known.v === 2);
    expect(a2).toEqual({ v: 2 });
    expect(pool.intern('a', make(3))).toBe(a2);
    pool.intern('b', make(1));
    pool.intern('c', make(1));
    expect(pool.size).toBe(3);
    // The fourth key: the pool starts over (what was handed out stays as it is).
    pool.intern('d', make(1));
    expect(pool.size).toBe(1);
    expect(pool.intern('a', make(4))).toEqual({ v: 4 });
    expect(a2).toEqual({ v: 2 });
  });
});
