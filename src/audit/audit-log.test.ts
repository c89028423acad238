import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { AgentIdError } from '../common/errors.js';
import { silentLogger } from '../common/logger.js';
import {
  AuditLog,
  GENESIS_HASH,
  canonicalJson,
  readAuditEvents,
  recordHash,
  verifyAuditFile,
  type AuditEventInput,
} from './index.js';

const T0 = Date.UTC(2026, 0, 1, 12, 0, 0);
let dir: string;
let file: string;
let clock: ManualClock;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'agentid-audit-'));
  file = join(dir, 'audit.log');
  clock = new ManualClock(T0);
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const open = () => AuditLog.open({ file, clock, logger: silentLogger() });

function issued(task: string, agent = 'builder'): AuditEventInput {
  return {
    type: 'svid.issued',
    kind: 'x509',
    spiffe_id: `spiffe://example.org/agent/${agent}/task/${task}`,
    serial: randomBytes(16).toString('hex'),
    task,
    agent,
    pid: 4242,
    uid: 1000,
    selectors: ['unix:uid:1000', `agentid:task:${task}`],
    not_after: T0 + 15 * 60_000,
  };
}

const revoked: AuditEventInput = {
  type: 'revocation.added',
  spiffe_id: 'spiffe://example.org/agent/builder/task/t1',
  reason: 'credential leaked in CI log',
  by: 'uid:0 (admin)',
  keep_until: T0 + 3_600_000,
  actor: { uid: 0, role: 'admin' },
  outcome: 'ok',
};

function writeLog(count: number): string[] {
  const log = open();
  for (let i = 1; i <= count; i++) {
    log.append(issued(`t${i}`));
    clock.set(T0 + i * 1000);
  }
  log.close();
  return readLines();
}

const readLines = () => readFileSync(file, 'utf8').split('\n').slice(0, -1);
const writeLines = (lines: string[]) => writeFileSync(file, lines.map((l) => `${l}\n`).join(''));

describe('AuditLog', () => {
  it('creates the file 0600 and chains from the genesis hash', () => {
    const log = open();
    const first = log.append(issued('t1'));
    log.close();
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(first.seq).toBe(1);
    expect(first.prev).toBe(GENESIS_HASH);
    expect(first.time).toBe('2026-01-01T12:00:00.000Z');
    expect(first.type === 'svid.issued' && first.not_after).toBe('2026-01-01T12:15:00.000Z');
    const [line] = readLines();
    expect(line).toMatch(/^\{"seq":1,"time":"2026-01-01T12:00:00.000Z","type":"svid.issued",.*"prev":"0{64}","hash":"[0-9a-f]{64}"\}$/);
    const { hash, ...rest } = JSON.parse(line!) as Record<string, unknown> & { prev: string };
    expect(hash).toBe(recordHash(rest));
    expect(JSON.parse(line!)).toEqual(first);
  });

  it('continues the chain across a reopen', () => {
    let log = open();
    log.append(issued('t1'));
    const second = log.append(revoked);
    log.close();
    log = open();
    expect(log.head).toEqual({ seq: 2, hash: second.hash });
    const third = log.append(issued('t3'));
    log.close();
    expect(third.seq).toBe(3);
    expect(third.prev).toBe(second.hash);
    expect(verifyAuditFile(file)).toEqual({ ok: true, count: 3 });
  });

  it('tightens the mode of an existing file readable by others', () => {
    writeFileSync(file, '');
    chmodSync(file, 0o644);
    open().close();
    expect(statSync(file).mode & 0o777).toBe(0o600);
  });

  it('refuses a missing directory and a symlink', () => {
    expect(() => AuditLog.open({ file: join(dir, 'nope', 'audit.log'), clock, logger: silentLogger() })).toThrow(
      /directory does not exist/,
    );
    writeFileSync(join(dir, 'elsewhere'), '');
    symlinkSync(join(dir, 'elsewhere'), file);
    expect(() => open()).toThrow(/symbolic link/);
  });

  it('removes a torn last line, records the repair in the chain and continues it', () => {
    const lines = writeLog(3);
    const whole = `${lines.slice(0, 2).join('\n')}\n`;
    const torn = lines[2]!.slice(0, -20);
    writeFileSync(file, whole + torn);
    const log = open();
    expect(log.head.seq).toBe(3);
    log.append(revoked);
    log.close();
    expect(verifyAuditFile(file)).toEqual({ ok: true, count: 4 });
    const repaired = readAuditEvents(file, { type: 'audit.repaired' }) as unknown as { seq: number; removed_bytes: number; removed_sha256: string }[];
    expect(repaired).toEqual([expect.objectContaining({ seq: 3, removed_bytes: Buffer.byteLength(torn) })]);
    expect(repaired[0]!.removed_sha256).toMatch(/^[0-9a-f]{64}$/);
  });

  it.each([
    ['an edited last line', (lines: string[]) => `${lines.join('\n').replace(/"pid":4242(?![^]*"pid")/, '"pid":1')}\n`, /edited/],
    ['garbage as the last line', (lines: string[]) => `${lines.join('\n')}\nnot json\n`, /not valid JSON/],
  ])('refuses to fork the chain after %s', (_name, damage, reason) => {
    writeFileSync(file, damage(writeLog(3)));
    let error: unknown;
    try {
      open();
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(AgentIdError);
    expect((error as AgentIdError).code).toBe('failed_precondition');
    expect((error as Error).message).toMatch(/refusing to continue the hash chain/);
    expect((error as Error).message).toMatch(reason);
  });

  it('refuses further appends once closed', () => {
    const log = open();
    log.close();
    expect(() => log.append(revoked)).toThrow(/closed/);
  });

  it('fsyncs durable events at once and batches issuance on the clock', async () => {
    const log = AuditLog.open({ file, clock, logger: silentLogger(), syncIntervalMs: 1000, syncBatch: 3 });
    log.append(issued('t1'));
    expect(clock.pendingSleeps()).toBe(1); // a batched fsync is scheduled
    log.append(issued('t2'));
    expect(clock.pendingSleeps()).toBe(1); // ...only once
    log.append(revoked);
    expect(clock.pendingSleeps()).toBe(0); // the durable event synced everything
    log.append(issued('t3'));
    log.append(issued('t4'));
    log.append(issued('t5')); // third unsynced: batch limit reached, synced without waiting
    expect(clock.pendingSleeps()).toBe(0);
    log.append(issued('t6'));
    await clock.advance(1000);
    expect(clock.pendingSleeps()).toBe(0);
    log.close();
    expect(verifyAuditFile(file)).toEqual({ ok: true, count: 7 });
  });
});

describe('verifyAuditFile', () => {
  it('accepts an empty file and a clean chain', () => {
    writeFileSync(file, '');
    expect(verifyAuditFile(file)).toEqual({ ok: true, count: 0 });
    writeLog(5);
    expect(verifyAuditFile(file)).toEqual({ ok: true, count: 5 });
  });

  it('does not depend on the key order inside a line', () => {
    const lines = writeLog(2);
    const reordered = Object.fromEntries(Object.entries(JSON.parse(lines[1]!) as object).reverse());
    writeLines([lines[0]!, JSON.stringify(reordered)]);
    expect(verifyAuditFile(file)).toEqual({ ok: true, count: 2 });
  });

  const rehash = (line: string, change: (r: Record<string, unknown>) => void) => {
    const { hash: _old, ...rest } = JSON.parse(line) as Record<string, unknown> & { prev: string };
    change(rest);
    return JSON.stringify({ ...rest, hash: recordHash(rest) });
  };

  it.each<[string, number, (lines: string[]) => string[], RegExp]>([
    ['edited-middle-line', 3, (l) => l.map((x, i) => (i === 2 ? x.replace('"uid":1000', '"uid":0') : x)), /edited/],
    ['edited-and-rehashed-line', 4, (l) => l.map((x, i) => (i === 2 ? rehash(x, (r) => (r.uid = 0)) : x)), /prev does not match the hash of line 3/],
    ['removed-middle-line', 3, (l) => l.filter((_, i) => i !== 2), /seq is 4, expected 3/],
    ['removed-first-line', 1, (l) => l.slice(1), /seq is 2, expected 1/],
    ['inserted-copy', 5, (l) => [...l.slice(0, 4), l[1]!, ...l.slice(4)], /seq is 2, expected 5/],
    ['inserted-forged-line', 4, (l) => [...l.slice(0, 2), rehash(l[2]!, (r) => (r.serial = 'ab')), ...l.slice(2)], /seq is 3, expected 4/],
    ['swapped-lines', 2, (l) => [l[0]!, l[2]!, l[1]!, ...l.slice(3)], /seq is 3, expected 2/],
    ['replaced-line-renumbered', 4, (l) => l.map((x, i) => (i === 3 ? rehash(x, (r) => (r.prev = GENESIS_HASH)) : x)), /prev does not match the hash of line 3/],
    ['forged-genesis', 1, (l) => [rehash(l[0]!, (r) => (r.prev = 'f'.repeat(64))), ...l.slice(1)], /genesis/],
    ['blank-line', 4, (l) => [...l.slice(0, 3), '', ...l.slice(3)], /not valid JSON/],
    ['hash-not-hex', 2, (l) => l.map((x, i) => (i === 1 ? x.replace(/"hash":"[0-9a-f]{64}"/, '"hash":"zz"') : x)), /hash is not/],
  ])('%s: names line %i', (_name, line, tamper, reason) => {
    writeLines(tamper(writeLog(6)));
    const result = verifyAuditFile(file);
    expect(result).toMatchObject({ ok: false, line });
    expect(!result.ok && result.reason).toMatch(reason);
  });

  it('names a truncated last line', () => {
    const lines = writeLog(4);
    writeFileSync(file, `${lines.join('\n')}\n`.slice(0, -30));
    expect(verifyAuditFile(file)).toMatchObject({ ok: false, line: 4, reason: expect.stringMatching(/truncated/) });
  });

  it('reads a file larger than its read chunk', () => {
    const log = open();
    // Long (permitted) reasons make lines of ~3 KB: 100 of them cross several 64 KiB chunks.
    for (let i = 0; i < 100; i++) {
      log.append({ type: 'attestation.refused', pid: i, uid: 1000, reason: `no entry matched ${'x.'.repeat(1500)}` });
    }
    log.close();
    expect(verifyAuditFile(file)).toEqual({ ok: true, count: 100 });
  });
});

describe('redaction', () => {
  // Not a key: a PKCS#8 header fragment in PEM armour (built in two parts so repository scans for
  // committed keys do not flag this test).
  const pem = `${'-----BEGIN PRIVATE'} KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----`;
  const jwt =
    'eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.eyJzdWIiOiJzcGlmZmU6Ly9leGFtcGxlLm9yZy94In0.c2lnbmF0dXJlLWJ5dGVz';
  const blob = randomBytes(300).toString('base64');
  const task = (metadata: Record<string, string>): AuditEventInput => ({
    type: 'task.started',
    agent: 'builder',
    task: 't1',
    spiffe_id: 'spiffe://example.org/agent/builder/task/t1',
    binding: { kind: 'process', pid: 4242, startTime: '123456', descendants: true },
    ttl_ms: 1_800_000,
    expires_at: T0 + 1_800_000,
    metadata,
    by: 'uid:1001 (orchestrator)',
    role: 'orchestrator',
  });
  const refused = (reason: string): AuditEventInput => ({ type: 'attestation.refused', pid: 1, uid: 1000, reason });

  it.each<[string, AuditEventInput, RegExp, string?]>([
    ['pem-in-reason', refused(`bad: ${pem}`), /reason looks like a PEM block/, 'MIGHAgEA'],
    ['jwt-in-metadata', task({ approver: `Bearer ${jwt}` }), /metadata\.approver looks like a JWT/, 'eyJhbGci'],
    ['jwt-claims-alone', refused('claims eyJzdWIiOiJzcGlmZmU6Ly9leGFtcGxlLm9yZy94In0'), /reason looks like a JWT/, 'eyJzdWIi'],
    ['jwt-alg-none', refused('eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.'), /looks like a JWT/],
    ['base64-blob', refused(blob), /looks like a base64 blob/, blob.slice(0, 40)],
    ['base64url-blob-in-array', { ...(issued('t1') as object), selectors: [randomBytes(300).toString('base64url')] } as AuditEventInput, /selectors\[0\] looks like a base64 blob/],
    ['pem-as-metadata-key', task({ [pem]: 'x' }), /key in metadata looks like a PEM block/, 'MIGHAgEA'],
    ['buffer-field', refused(Buffer.from('secret') as unknown as string), /reason is a Buffer/],
    ['too-many-metadata-pairs', task(Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`k${i}`, 'v']))), /more than 32 pairs/],
    ['metadata-key-too-long', task({ ['k'.repeat(65)]: 'v' }), /metadata key must be 1 to 64 characters/],
    ['metadata-value-too-long', task({ ticket: 'v'.repeat(257) }), /metadata\.ticket is longer than 256/],
    ['reserved-field', { ...refused('x'), hash: 'ab' } as unknown as AuditEventInput, /hash is reserved/],
  ])('%s is refused and nothing is written', (_name, event, reason, secretPart) => {
    const log = open();
    log.append(refused('first'));
    const sizeBefore = statSync(file).size;
    let error: unknown;
    try {
      log.append(event);
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(AgentIdError);
    expect((error as AgentIdError).code).toBe('internal');
    expect((error as Error).message).toMatch(reason);
    if (secretPart) expect((error as Error).message).not.toContain(secretPart);
    expect(statSync(file).size).toBe(sizeBefore);
    // The chain is intact: the next record follows the first one.
    expect(log.append(refused('after')).seq).toBe(2);
    log.close();
    expect(verifyAuditFile(file)).toEqual({ ok: true, count: 2 });
    expect(readFileSync(file, 'utf8')).not.toContain('BEGIN');
  });

  it('accepts long human-made values and capped metadata', () => {
    const log = open();
    const longPath = `spiffe://example.org/agent/${'builder-'.repeat(40)}/task/t1`;
    const meta = Object.fromEntries(Array.from({ length: 32 }, (_, i) => [`key${i}`.padEnd(64, 'k'), 'v'.repeat(256)]));
    expect(() => log.append({ ...(issued('t1') as object), spiffe_id: longPath } as AuditEventInput)).not.toThrow();
    expect(() => log.append(task(meta))).not.toThrow();
    log.close();
  });
});

describe('readAuditEvents', () => {
  it('filters by task, agent, SPIFFE ID, type and time', () => {
    const log = open();
    log.append(issued('t1', 'builder'));
    clock.set(T0 + 60_000);
    log.append(issued('t2', 'builder'));
    log.append(issued('t1', 'reviewer'));
    clock.set(T0 + 120_000);
    log.append({ type: 'task.ended', agent: 'builder', task: 't1', spiffe_id: 'spiffe://example.org/agent/builder/task/t1', reason: 'ended' });
    // Names no task, only builder/t1's SPIFFE ID: part of that task's story all the same.
    log.append(revoked);
    log.close();
    const seqs = (filter: Parameters<typeof readAuditEvents>[1]) => readAuditEvents(file, filter).map((r) => r.seq);
    expect(seqs({})).toEqual([1, 2, 3, 4, 5]);
    expect(seqs({ task: 't1' })).toEqual([1, 3, 4, 5]);
    expect(seqs({ task: 't1', agent: 'builder' })).toEqual([1, 4, 5]);
    expect(seqs({ task: 't1', agent: 'reviewer' })).toEqual([3]);
    expect(seqs({ task: 't2' })).toEqual([2]);
    expect(seqs({ spiffeId: 'spiffe://example.org/agent/reviewer/task/t1' })).toEqual([3]);
    expect(seqs({ type: 'task.ended' })).toEqual([4]);
    expect(seqs({ since: T0 + 60_000 })).toEqual([2, 3, 4, 5]);
    expect(seqs({ since: T0 + 60_001, agent: 'builder' })).toEqual([4]);
  });
});

describe('canonicalJson', () => {
  it('sorts keys at every depth and keeps array order', () => {
    expect(canonicalJson({ b: 1, a: { d: [3, 1, { z: 1, y: 'é' }], c: null }, u: undefined })).toBe(
      '{"a":{"c":null,"d":[3,1,{"y":"é","z":1}]},"b":1}',
    );
  });
});

describe('batch', () => {
  it('chains every event at once and writes them in one go when the batch ends', () => {
    const log = open();
    log.append(issued('t0'));
    const before = statSync(file).size;
    const seqs = log.batch(() => {
      const inside = [log.append(issued('t1')), log.append(issued('t2')), log.append(revoked)].map((r) => r.seq);
      expect(statSync(file).size).toBe(before); // nothing written yet
      return inside;
    });
    expect(seqs).toEqual([2, 3, 4]);
    expect(statSync(file).size).toBeGreaterThan(before);
    log.close();
    expect(verifyAuditFile(file)).toEqual({ ok: true, count: 4 });
    expect(readAuditEvents(file).map((e) => e.type)).toEqual(['svid.issued', 'svid.issued', 'svid.issued', 'revocation.added']);
  });

  it('still writes what was appended when the batch body throws', () => {
    const log = open();
    expect(() => log.batch(() => {
      log.append(issued('t1'));
      throw new Error('boom');
    })).toThrow('boom');
    log.close();
    expect(verifyAuditFile(file)).toEqual({ ok: true, count: 1 });
  });

  it('names the writing server in every line (several servers, one chain each), and refuses an event that tries to set it', () => {
    const log = AuditLog.open({ file, clock, logger: silentLogger(), server: 'host-a-1f2e3d' });
    log.append({ type: 'server.started', outcome: 'ok', version: '0', trust_domain: 'example.org', pid: 1 });
    expect(() => log.append({ type: 'server.stopped', outcome: 'ok', pid: 1, records: 2, server: 'forged' } as unknown as AuditEventInput)).toThrow(/reserved/);
    log.close();
    const lines = readFileSync(file, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    expect(lines.map((l) => l.server)).toEqual(['host-a-1f2e3d']);
    expect(verifyAuditFile(file)).toEqual({ ok: true, count: 1 });
  });
});
