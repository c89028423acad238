import { invalidArgument } from './errors.js';

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * Parses "90s", "15m", "1h30m", "250ms" into milliseconds. Durations are strings in files
 * and flags, milliseconds in code. Zero, negative and unit-less values are refused.
 */
export function parseDuration(text: string, what = 'duration'): number {
  const trimmed = text.trim();
  const part = /(\d+)(ms|s|m|h|d)/gy;
  let total = 0;
  let consumed = 0;
  let match: RegExpExecArray | null;
  while ((match = part.exec(trimmed)) !== null) {
    total += Number(match[1]) * UNIT_MS[match[2]!]!;
    consumed = part.lastIndex;
  }
  if (trimmed.length === 0 || consumed !== trimmed.length) {
    throw invalidArgument(`${what}: "${text}" is not a duration (use forms like 90s, 15m, 1h30m)`);
  }
  if (total <= 0) throw invalidArgument(`${what}: must be greater than zero`);
  if (!Number.isSafeInteger(total)) throw invalidArgument(`${what}: "${text}" is too large`);
  return total;
}

/** Formats milliseconds as the shortest exact duration string ("1h30m", "15m", "1500ms"). */
export function formatDuration(ms: number): string {
  if (ms <= 0) return '0s';
  if (ms % 1000 !== 0) return `${ms}ms`;
  let rest = ms / 1000;
  const out: string[] = [];
  for (const [unit, size] of [['d', 86400], ['h', 3600], ['m', 60], ['s', 1]] as const) {
    if (rest >= size) {
      out.push(`${Math.floor(rest / size)}${unit}`);
      rest %= size;
    }
  }
  return out.join('');
}
