import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger };

export interface LoggerOptions {
  level?: string;
  /** Human-readable output (pino-pretty) instead of JSON lines. */
  pretty?: boolean;
  destination?: DestinationStream;
}

/**
 * Redaction is a safety net only: code logs IDs, serials and SPIFFE IDs, never key material,
 * PEM, tokens or connection strings.
 */
const REDACT_PATHS = [
  'key', '*.key', 'privateKey', '*.privateKey', 'token', '*.token', 'svid', '*.svid',
  'pem', '*.pem', 'password', '*.password', 'authorization', '*.authorization',
];

export function createLogger(options: LoggerOptions = {}): Logger {
  const base = {
    level: options.level ?? 'info',
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    base: { app: 'agentid' },
  };
  if (options.destination) return pino(base, options.destination);
  if (options.pretty) {
    return pino({ ...base, transport: { target: 'pino-pretty', options: { colorize: false, destination: 2 } } });
  }
  return pino(base, pino.destination({ dest: 2, sync: true }));
}

/** A logger that drops everything; for unit tests and library defaults. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
