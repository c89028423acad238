import { join } from 'node:path';
import type { Clock } from '../common/clock.js';
import type { Logger } from '../common/logger.js';
import type { Config } from '../config/index.js';
import { AuditLog } from '../audit/index.js';
import { DiskReserve } from '../audit/disk-reserve.js';
import { RefusalAggregator } from '../audit/refusals.js';

/**
 * The audit log for one server run: opened first among the audited parts, closed last, with a
 * server.stopped record (and the chain head in the operational log) when the run had started.
 * Also what protects it: refusals counted per uid, reason and interval instead of one line each,
 * and a free-space reserve that pauses new issuance before the volume fills.
 */
export function openAuditSession(config: Config, deps: { clock: Clock; logger: Logger; serverId: string }) {
  const { clock, logger } = deps;
  const audit = AuditLog.open({ file: config.audit.file, clock, logger, server: deps.serverId });
  // Room for revocations and task ends: new issuance pauses while the data volumes run short.
  const reserve = new DiskReserve({ files: [config.audit.file, join(config.dataDir, 'agentid.db')], reserveBytes: config.audit.reserveBytes, clock, logger });
  const refusals = new RefusalAggregator({ append: (e) => audit.append(e), clock, logger, intervalMs: config.audit.refusalIntervalMs });
  let startSeq: number | undefined;
  return {
    audit,
    reserve,
    refusals,
    started(fields: { version: string; trustDomain: string; dbId: string }): void {
      audit.append({ type: 'server.started', outcome: 'ok', version: fields.version, trust_domain: fields.trustDomain, pid: process.pid, db_id: fields.dbId });
      startSeq = audit.head.seq;
    },
    /** Closes the log; `anchor` records its final head where the integrity check will look. */
    close(anchor: (audit: AuditLog) => void = () => {}): void {
      refusals.close();
      if (startSeq !== undefined) {
        audit.append({ type: 'server.stopped', outcome: 'ok', pid: process.pid, records: audit.head.seq - startSeq + 2 });
      }
      // The chain cannot show a cut-off tail by itself; the operational log keeps the last head.
      logger.info({ auditSeq: audit.head.seq, auditHash: audit.head.hash }, 'audit log head');
      if (startSeq !== undefined) anchor(audit);
      audit.close();
    },
  };
}
