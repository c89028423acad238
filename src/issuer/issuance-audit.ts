import type { AuditSink } from '../audit/index.js';
import type { IssuanceEvents } from './svid-cache.js';

/** The audit lines of minted SVIDs: who caused the first one, and every rotation after it. */
export function auditedIssuances(audit: AuditSink): IssuanceEvents {
  return {
    x509Issued(identity, svid, cause, previous, reason) {
      const common = { outcome: 'ok' as const, spiffe_id: svid.spiffeId, serial: svid.serial, agent: identity.task?.agent, task: identity.task?.id, not_after: svid.notAfter };
      if (previous) audit.append({ ...common, type: 'svid.rotated', kind: 'x509', previous_serial: previous.serial, reason });
      else audit.append({ ...common, type: 'svid.issued', kind: 'x509', pid: cause.pid, uid: cause.uid, selectors: identity.matchedSelectors });
    },
    jwtIssued(identity, svid, audience, cause) {
      audit.append({
        type: 'svid.issued', outcome: 'ok', kind: 'jwt', spiffe_id: svid.spiffeId, jti: svid.jti, audience,
        agent: identity.task?.agent, task: identity.task?.id, pid: cause.pid, uid: cause.uid,
        selectors: identity.matchedSelectors, not_after: svid.expiresAt,
      });
    },
  };
}
