import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger };

export interface LoggerOptions {
  level?: string;
  /** Human-readable output (pino-pretty) instead of JSON lines. */
  pretty?: boolean;
  /** With pretty: ANSI colours (a terminal). */
  colorize?: boolean;
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

/** Every child of a root logger, so a new level (SIGHUP) reaches loggers modules already hold. */
const families = new WeakMap<Logger, Set<WeakRef<Logger>>>();

export function createLogger(options: LoggerOptions = {}): Logger {
  const children = new Set<WeakRef<Logger>>();
  const base = {
    level: options.level ?? 'info',
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    base: { app: 'agentid' },
    onChild: (child: Logger) => {
      children.add(new WeakRef(child));
    },
  };
  let root: Logger;
  if (options.destination) root = pino(base, options.destination);
  else if (options.pretty) {
    root = pino({ ...base, transport: { target: 'pino-pretty', options: { colorize: options.colorize ?? false, destination: 2 } } });
  } else root = pino(base, pino.destination({ dest: 2, sync: true }));
  families.set(root, children);
  return root;
}

/** Sets the level of a logger made by createLogger and of every child made from it (pino children keep their own). */
export function setLogLevel(root: Logger, level: string): void {
  root.level = level;
  const children = families.get(root);
  if (!children) return;
  for (const ref of children) {
    const child = ref.deref();
    if (child) child.level = level;
    else children.delete(ref);
  }
}

/** A logger that drops everything; for unit tests and library defaults. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
