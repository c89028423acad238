/*
 * Statistics of the benchmark: every figure is a set of samples, one per round, summarized as
 * median, min and max; every comparison is the ratio of two such figures measured in the same run.
 */

export interface Summary {
  median: number;
  min: number;
  max: number;
  /** How many samples the figure summarizes. */
  n: number;
}

/** Median (mean of the two middle values for an even count), min and max of one figure's samples. */
export function summarize(samples: readonly number[]): Summary {
  if (samples.length === 0) throw new Error('summarize: no samples');
  for (const s of samples) if (!Number.isFinite(s)) throw new Error(`summarize: sample ${s} is not a finite number`);
  const sorted = [...samples].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  const median = sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  return { median, min: sorted[0]!, max: sorted[sorted.length - 1]!, n: sorted.length };
}

/** Nearest-rank percentile: the smallest sample with at least p% of the samples at or below it. */
export function percentile(samples: readonly number[], p: number): number {
  if (samples.length === 0) throw new Error('percentile: no samples');
  if (!(p > 0 && p <= 100)) throw new Error(`percentile: p must be in (0, 100], got ${p}`);
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(rank, sorted.length) - 1]!;
}

/**
 * Ratio of two figures measured round by round: the ratio is taken within each round (the two
 * sides ran back to back, under the same machine load), then summarized over the rounds.
 */
export function pairedRatio(subject: readonly number[], baseline: readonly number[]): Summary {
  if (subject.length !== baseline.length) throw new Error(`pairedRatio: ${subject.length} subject samples but ${baseline.length} baseline samples`);
  return summarize(subject.map((s, i) => s / baseline[i]!));
}

export type Direction = 'at-least' | 'at-most';

/** A target from the issue: the measured median must be at least (or at most) the bound. */
export interface Target {
  direction: Direction;
  bound: number;
}

/** One figure of the results table, as a benchmark reports it (bench/run.ts adds it to the table). */
export interface FigureInput {
  bench: string;
  name: string;
  unit: string;
  samples: number[];
  baseline?: { name: string; samples: number[] };
  target?: Target & { text: string };
  /**
   * What the target is checked against: the median ratio (the default with a baseline), the median
   * value, or the largest sample (a p99 target: with five rounds the nearest-rank p99 is the max).
   */
  targetOn?: 'ratio' | 'value' | 'max';
  note?: string;
}

export function meets(value: number, target: Target): boolean {
  return target.direction === 'at-least' ? value >= target.bound : value <= target.bound;
}
