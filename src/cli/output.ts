import { AgentIdError } from '../common/errors.js';

/** Prints either JSON (machine-readable, stable field names) or the given text lines. */
export function emit(json: boolean, data: unknown, text: () => string): void {
  process.stdout.write(json ? `${JSON.stringify(data, null, 2)}\n` : `${text()}\n`);
}

export function table(rows: string[][]): string {
  if (rows.length === 0) return '';
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n');
}

export const isoSeconds = (unixSeconds: number) => (unixSeconds > 0 ? new Date(unixSeconds * 1000).toISOString() : '-');

/** Exit codes: 2 for usage and config errors, 1 for everything else. */
export function exitCodeFor(err: unknown): number {
  return err instanceof AgentIdError && err.code === 'invalid_argument' ? 2 : 1;
}
