/**
 * The narrow view of the audit log that services use: one event object per call. The audit module
 * validates fields and refuses anything that looks like a secret.
 */
export interface AuditSink {
  append(event: { type: string; outcome?: 'ok' | 'denied' | 'error'; actor?: { uid?: number; role?: string; spiffe_id?: string } } & Record<string, unknown>): unknown;
}
