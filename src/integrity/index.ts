import { join } from 'node:path';
import type { Logger } from '../common/logger.js';
import type { AuditLog } from '../audit/index.js';
import { IntegrityAnchors, type Component } from './anchors.js';

export { parseRecover, RECOVERABLE, MARKER_FILE, type Component } from './anchors.js';

/**
 * The server's view of the integrity anchors (anchors.ts): built before the database, CA and audit
 * trail are opened (it refuses missing parts then), verified once they are, re-anchored at start,
 * periodically, after CA rotation and at stop.
 */
export function buildIntegrity(deps: {
  dataDir: string;
  /** The SQLite file, or null for a datastore that is not a local file (see IntegrityPaths). */
  dbFile: string | null;
  auditFile: string;
  recover: ReadonlySet<Component>;
  logger: Logger;
}) {
  const anchors = IntegrityAnchors.beforeOpen(
    { dataDir: deps.dataDir, dbFile: deps.dbFile, caDir: join(deps.dataDir, 'ca'), auditFile: deps.auditFile },
    deps.recover,
    deps.logger,
  );
  return {
    /** Throws naming the missing or replaced part; recoveries the operator asked for go into the audit trail. */
    verify(ca: { x509Bundle(): Buffer[] }, audit: AuditLog): void {
      for (const r of anchors.verify({ caRoots: ca.x509Bundle(), auditHead: audit.head })) {
        audit.append({ type: 'integrity.recovered', outcome: 'ok', component: r.component, reason: r.reason });
      }
      for (const component of deps.recover) {
        deps.logger.warn({ component }, 'integrity: --recover given; it is recorded in the audit trail');
      }
    },
    /** Records the current CA roots and audit head (flushed first) in the database and the marker. */
    anchor(ca: { x509Bundle(): Buffer[] }, audit: AuditLog): void {
      audit.flush();
      anchors.write({ caRoots: ca.x509Bundle(), auditHead: audit.head });
    },
    dbId: () => anchors.dbId(),
  };
}
