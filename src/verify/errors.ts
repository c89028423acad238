import { AgentIdError } from '../common/errors.js';

/**
 * Stable reasons a presented identity was refused. Callers and tests switch on `reason`;
 * the message names the broken rule for humans.
 */
export type VerificationReason =
  | 'malformed'
  | 'no_uri_san'
  | 'two_uri_sans'
  | 'bad_spiffe_id'
  | 'leaf_is_ca'
  | 'bad_key_usage'
  | 'not_ca'
  | 'path_len_exceeded'
  | 'unknown_critical_extension'
  | 'expired'
  | 'not_yet_valid'
  | 'no_bundle'
  | 'wrong_trust_domain'
  | 'untrusted'
  | 'bad_signature'
  | 'revoked'
  | 'bad_alg'
  | 'no_kid'
  | 'unknown_kid'
  | 'bad_typ'
  | 'bad_audience'
  | 'missing_claim'
  | 'issued_in_future'
  | 'unauthorized';

/** A refused SVID or peer: code 'permission_denied' plus a stable `reason`. */
export class VerificationError extends AgentIdError {
  readonly reason: VerificationReason;

  constructor(reason: VerificationReason, message: string, options?: { cause?: unknown }) {
    super('permission_denied', message, options);
    this.name = 'VerificationError';
    this.reason = reason;
  }
}

export const refuse = (reason: VerificationReason, message: string, cause?: unknown) =>
  new VerificationError(reason, message, cause === undefined ? undefined : { cause });

export function isVerificationError(err: unknown, reason?: VerificationReason): err is VerificationError {
  return err instanceof VerificationError && (reason === undefined || err.reason === reason);
}
