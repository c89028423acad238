import { status, type ServiceError, Metadata } from '@grpc/grpc-js';
import { AgentIdError, type ErrorCode } from './errors.js';
import type { Logger } from './logger.js';

const STATUS_BY_CODE: Record<ErrorCode, status> = {
  invalid_argument: status.INVALID_ARGUMENT,
  not_found: status.NOT_FOUND,
  already_exists: status.ALREADY_EXISTS,
  permission_denied: status.PERMISSION_DENIED,
  unauthenticated: status.UNAUTHENTICATED,
  failed_precondition: status.FAILED_PRECONDITION,
  unavailable: status.UNAVAILABLE,
  resource_exhausted: status.RESOURCE_EXHAUSTED,
  unimplemented: status.UNIMPLEMENTED,
  internal: status.INTERNAL,
};

/** Codes whose messages are written for the caller (they name the broken rule, never a secret). */
const CALLER_FACING: ReadonlySet<ErrorCode> = new Set([
  'invalid_argument', 'not_found', 'already_exists', 'permission_denied', 'failed_precondition', 'unimplemented',
  // Names the limit that was hit ("too many open streams for this uid"), never another caller's facts.
  'resource_exhausted',
]);

/** Whether an error's message may be shown to the caller (other edges, like the web console, ask too). */
export const isCallerFacing = (code: ErrorCode): boolean => CALLER_FACING.has(code);

/**
 * The one place errors become gRPC statuses. grpc-js would otherwise send `err.message` of any
 * thrown error to the client; here internal errors get fixed text and are logged once, in full.
 */
export function toGrpcError(err: unknown, logger: Logger, context: Record<string, unknown> = {}): Partial<ServiceError> {
  if (err instanceof AgentIdError) {
    const code = STATUS_BY_CODE[err.code];
    if (CALLER_FACING.has(err.code)) {
      logger.info({ ...context, code: err.code, reason: err.message }, 'request refused');
      return { code, details: err.message, metadata: new Metadata() };
    }
    logger.warn({ ...context, code: err.code, err }, 'request failed');
    return { code, details: err.code === 'unavailable' ? 'service unavailable' : 'internal error', metadata: new Metadata() };
  }
  logger.error({ ...context, err }, 'unexpected error');
  return { code: status.INTERNAL, details: 'internal error', metadata: new Metadata() };
}

/** The reverse mapping, for clients. */
export function fromGrpcStatus(code: number): ErrorCode {
  for (const [k, v] of Object.entries(STATUS_BY_CODE)) if (v === code) return k as ErrorCode;
  return code === status.DEADLINE_EXCEEDED || code === status.CANCELLED ? 'unavailable' : 'internal';
}
