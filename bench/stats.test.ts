import { describe, expect, it } from 'vitest';
import { meets, pairedRatio, percentile, summarize } from './stats.js';
import { sourceName, withinWindows } from './profile-summary.js';

describe('summarize', () => {
  it('takes the middle sample of an odd count, whatever the order', () => {
    expect(summarize([5, 1, 4, 2, 3])).toEqual({ median: 3, min: 1, max: 5, n: 5 });
  });
  it('averages the two middle samples of an even count', () => {
    expect(summarize([10, 1, 3, 7])).toEqual({ median: 5, min: 1, max: 10, n: 4 });
  });
  it('does not reorder the caller’s array', () => {
    const samples = [3, 1, 2];
    summarize(samples);
    expect(samples).toEqual([3, 1, 2]);
  });
  it('refuses no samples and non-finite samples', () => {
    expect(() => summarize([])).toThrow(/no samples/);
    expect(() => summarize([1, Number.NaN])).toThrow(/not a finite number/);
    expect(() => summarize([1, Number.POSITIVE_INFINITY])).toThrow(/not a finite number/);
  });
});

describe('percentile', () => {
  const hundred = Array.from({ length: 100 }, (_, i) => 100 - i); // 100..1, unsorted
  it('is nearest-rank', () => {
    expect(percentile(hundred, 50)).toBe(50);
    expect(percentile(hundred, 99)).toBe(99);
    expect(percentile(hundred, 100)).toBe(100);
    expect(percentile([7], 99)).toBe(7);
    expect(percentile([1, 2, 3], 50)).toBe(2);
  });
  it('refuses an empty set and p outside (0, 100]', () => {
    expect(() => percentile([], 50)).toThrow(/no samples/);
    expect(() => percentile([1], 0)).toThrow(/p must be/);
    expect(() => percentile([1], 101)).toThrow(/p must be/);
  });
});

describe('pairedRatio', () => {
  it('divides round by round, then summarizes', () => {
    // Per-round ratios 2, 1, 4: the median is 2 (the ratio of the medians would be 3/2).
    expect(pairedRatio([2, 3, 4], [1, 3, 1])).toEqual({ median: 2, min: 1, max: 4, n: 3 });
  });
  it('refuses sides of different lengths', () => {
    expect(() => pairedRatio([1, 2], [1])).toThrow(/2 subject samples but 1 baseline/);
  });
});

describe('meets', () => {
  it('compares in the target’s direction, bound included', () => {
    expect(meets(0.8, { direction: 'at-least', bound: 0.8 })).toBe(true);
    expect(meets(0.79, { direction: 'at-least', bound: 0.8 })).toBe(false);
    expect(meets(1.5, { direction: 'at-most', bound: 1.5 })).toBe(true);
    expect(meets(1.51, { direction: 'at-most', bound: 1.5 })).toBe(false);
  });
});

describe('sourceName (profiles of the compiled server)', () => {
  it('names a dist/ file by its source, and leaves others alone', () => {
    expect(sourceName('dist/workload/service.js')).toBe('src/workload/service.ts');
    expect(sourceName('src/workload/service.ts')).toBe('src/workload/service.ts');
    expect(sourceName('node_modules/@grpc/grpc-js/build/src/server.js')).toBe('node_modules/@grpc/grpc-js/build/src/server.js');
  });
});

describe('withinWindows (a profile restricted to marked windows)', () => {
  // Samples at 1010, 1020, 1030, 1040 us (start 1000, deltas of 10).
  const profile = { nodes: [], startTime: 1000, endTime: 1040, samples: [1, 2, 3, 4], timeDeltas: [10, 10, 10, 10] };
  it('keeps the samples inside any window, with their own time deltas', () => {
    const w = withinWindows(profile, [{ label: 'a', startUs: 1015, endUs: 1030 }]);
    expect(w.samples).toEqual([2, 3]);
    expect(w.timeDeltas).toEqual([10, 10]);
    expect(withinWindows(profile, [{ label: 'a', startUs: 1005, endUs: 1012 }, { label: 'b', startUs: 1040, endUs: 2000 }]).samples).toEqual([1, 4]);
  });
  it('keeps nothing when no window covers a sample', () => {
    expect(withinWindows(profile, [{ label: 'a', startUs: 0, endUs: 999 }]).samples).toEqual([]);
  });
});
