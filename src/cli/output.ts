import { AgentIdError } from '../common/errors.js';

/** Prints either JSON (machine-readable, snake_case field names) or the given text lines. */
export function emit(json: boolean, data: unknown, text: () => string): void {
  process.stdout.write(json ? `${JSON.stringify(data, null, 2)}\n` : `${text()}\n`);
}

/** A copy with every object key in snake_case: the one naming style of all JSON output. */
export function snakeKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(snakeKeys);
  if (value === null || typeof value !== 'object') return value;
  return Object.fromEntries(Object.entries(value).map(([k, v]) => [k.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`), snakeKeys(v)]));
}

export function table(rows: string[][]): string {
  if (rows.length === 0) return '';
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n');
}

export const isoSeconds = (unixSeconds: number) => (unixSeconds > 0 ? new Date(unixSeconds * 1000).toISOString() : '-');

/**
 * Errors the server or the Workload API returned. An INVALID_ARGUMENT from there (a refused
 * token, a certificate that does not verify) is a refusal, not a mistake on the command line,
 * so it exits 1 like every other failure; only the CLI's own checks exit 2.
 */
const refusals = new WeakSet<object>();

/** gRPC and socket internals that must not reach the user's terminal. */
const GRPC_NOISE = [/\s*Resolution note:.*$/s, /No connection established\. Last error: /, /\s*\(\d{4}-\d\d-\d\dT[^)]*\)/g];

/**
 * Turns an error from a call to a server into one fit for the terminal: its message without
 * gRPC internals, a hint for an unreachable socket, and marked as a refusal (exit 1).
 */
export function remote(err: unknown, endpoint?: string): AgentIdError {
  const e = err instanceof AgentIdError ? err : new AgentIdError('unavailable', err instanceof Error ? err.message : String(err));
  if (refusals.has(e)) return e;
  let message = e.message;
  for (const noise of GRPC_NOISE) message = message.replace(noise, '');
  if (e.code === 'unavailable' && endpoint && !message.includes('is the server running')) {
    message = `${message}; is the server running, and is ${endpoint} its socket? (check --socket / --data-dir)`;
  }
  const out = new AgentIdError(e.code, message, { cause: e.cause });
  refusals.add(out);
  return out;
}

/** Exit codes: 2 for usage and configuration errors, 1 for everything else. */
export function exitCodeFor(err: unknown): number {
  return err instanceof AgentIdError && err.code === 'invalid_argument' && !refusals.has(err) ? 2 : 1;
}
