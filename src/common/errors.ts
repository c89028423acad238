/**
 * One error type with a stable code. Callers switch on `code`, never on message text.
 * Messages name the broken rule and never contain secrets.
 */
export type ErrorCode =
  | 'invalid_argument'
  | 'not_found'
  | 'already_exists'
  | 'permission_denied'
  | 'unauthenticated'
  | 'failed_precondition'
  | 'unavailable'
  /** A limit (connections, streams or requests per uid, descriptors) refuses this call; retry later. */
  | 'resource_exhausted'
  | 'unimplemented'
  | 'internal';

export class AgentIdError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'AgentIdError';
    this.code = code;
  }
}

export const invalidArgument = (message: string, cause?: unknown) =>
  new AgentIdError('invalid_argument', message, cause === undefined ? undefined : { cause });
export const notFound = (message: string) => new AgentIdError('not_found', message);
export const alreadyExists = (message: string) => new AgentIdError('already_exists', message);
export const permissionDenied = (message: string) => new AgentIdError('permission_denied', message);
export const failedPrecondition = (message: string, cause?: unknown) =>
  new AgentIdError('failed_precondition', message, cause === undefined ? undefined : { cause });
export const unavailable = (message: string, cause?: unknown) =>
  new AgentIdError('unavailable', message, cause === undefined ? undefined : { cause });
export const resourceExhausted = (message: string) => new AgentIdError('resource_exhausted', message);
export const internal = (message: string, cause?: unknown) =>
  new AgentIdError('internal', message, cause === undefined ? undefined : { cause });

export function isAgentIdError(err: unknown, code?: ErrorCode): err is AgentIdError {
  return err instanceof AgentIdError && (code === undefined || err.code === code);
}

/** Collects every problem of one input so the user sees them all at once. */
export class ProblemList {
  private readonly problems: string[] = [];
  add(problem: string): void {
    this.problems.push(problem);
  }
  get length(): number {
    return this.problems.length;
  }
  throwIfAny(prefix: string): void {
    if (this.problems.length > 0) {
      throw invalidArgument(`${prefix}: ${this.problems.join('; ')}`);
    }
  }
}
