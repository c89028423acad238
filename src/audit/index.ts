export * from './events.js';
export { AuditLog, type AuditLogOptions } from './audit-log.js';
export { canonicalJson, recordHash, GENESIS_HASH } from './canonical.js';
export { verifyAuditFile, readAuditEvents, type AuditFilter, type AuditVerification } from './read.js';
export { assertAuditSafe, assertAuditableInput, AUDIT_METADATA_LIMITS, AUDIT_MAX_STRING_LENGTH } from './redaction.js';
export type * from './events.js';

/** The narrow view services take: one typed event per call. */
export interface AuditSink {
  append(event: import('./events.js').AuditEventInput): unknown;
  /** Writes the events `fn` appends with one write (and one fsync), before returning (AuditLog.batch). */
  batch?<T>(fn: () => T): T;
}
