import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { silentLogger } from '../common/logger.js';
import { AuditFollower, type AuditSummary } from './audit-follower.js';

const dir = mkdtempSync(join(tmpdir(), 'agentid-follower-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const NOW = Date.UTC(2026, 11, 1, 12);
const line = (minutesAgo: number, fields: Record<string, unknown>) => JSON.stringify({ time: new Date(NOW - minutesAgo * 60_000).toISOString(), ...fields });

describe('AuditFollower', () => {
  it('counts the last hour from the file\'s tail, then from the event stream, coalescing one turn\'s events', async () => {
    const file = join(dir, 'audit.log');
    writeFileSync(file, [
      line(90, { type: 'svid.issued', outcome: 'ok', agent: 'coder' }), // outside the window
      line(30, { type: 'svid.issued', outcome: 'ok', agent: 'coder' }),
      line(20, { type: 'svid.rotated', outcome: 'ok', agent: 'builder' }),
      line(10, { type: 'attestation.refused', outcome: 'denied' }),
      '{"torn', // a cut-short last line is skipped
    ].join('\n'));
    const clock = new ManualClock(NOW);
    const batches: AuditSummary[][] = [];
    const f = new AuditFollower({ file, clock, logger: silentLogger(), onRecords: (r) => batches.push(r) });
    expect(f.activity()).toEqual({ issued: 2, refused: 1 });
    expect(f.activity((r) => r.agent === 'builder')).toEqual({ issued: 1, refused: 0 });

    f.observer.appended!({ type: 'task.revoked', outcome: 'ok', agent: 'coder', task: 't', spiffe_id: 'spiffe://td/agent/coder/task/t', reason: 'r', by: 'uid:0 (admin)' });
    f.observer.appended!({ type: 'admin.denied', outcome: 'denied', who: 'uid:5', role: 'none', action: 'X', reason: 'no role' });
    expect(batches).toEqual([]);
    await new Promise((r) => setImmediate(r));
    expect(batches).toHaveLength(1);
    expect(batches[0]!.map((r) => r.type)).toEqual(['task.revoked', 'admin.denied']);
    expect(f.activity()).toEqual({ issued: 2, refused: 2 });

    await clock.advance(31 * 60_000); // the 30-minute-old issuance leaves the window
    expect(f.activity()).toEqual({ issued: 1, refused: 2 });
    f.close();
    f.observer.appended!({ type: 'svid.issued', outcome: 'ok', spiffe_id: 'spiffe://td/x', kind: 'jwt', jti: 'ab', audience: ['a'], pid: 1, uid: 0, selectors: [], not_after: NOW });
    await new Promise((r) => setImmediate(r));
    expect(batches).toHaveLength(1);
  });

  it('reads only the tail of a large file, skipping the line the cut falls into', () => {
    const file = join(dir, 'big.log');
    const old = line(5, { type: 'svid.issued', outcome: 'ok', pad: 'x'.repeat(200) });
    writeFileSync(file, `${old}\n${line(1, { type: 'attestation.refused', outcome: 'denied' })}\n`);
    const f = new AuditFollower({ file, clock: new ManualClock(NOW), logger: silentLogger(), onRecords: () => {}, startTailBytes: 150 });
    expect(f.activity()).toEqual({ issued: 0, refused: 1 });
  });
});
