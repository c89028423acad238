/**
 * Health, readiness and metrics with real processes and real faults: `agentid server` as a child
 * process with --health-listen and --metrics-listen on one address, `agentid healthcheck`, a real
 * SQLite store closed under a probe, a real CA whose signing CA has expired.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { rmSync } from 'node:fs';
import type { ChildProcess } from 'node:child_process';
import { ManualClock } from '../../src/common/clock.js';
import { silentLogger } from '../../src/common/logger.js';
import { openSqliteDatastore } from '../../src/datastore/sqlite.js';
import { caProbe, datastoreProbe, socketProbe, startOps } from '../../src/ops/index.js';
import { ServerMetrics } from '../../src/ops/metrics.js';
import { openTestCa } from '../../src/ca/testing.js';
import { WorkloadApiClient } from '../../src/client/workload-client.js';
import { AdminClient } from '../../src/cli/admin-client.js';
import { makeTempDir } from '../support/server.js';
import { runCli, spawnCli } from '../support/cli.js';
import { parsePrometheus, sum } from '../support/prometheus.js';
import { waitFor } from '../support/wait.js';

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

async function get(url: string): Promise<{ status: number; body: any; text: string; type: string }> {
  const res = await fetch(url);
  const text = await res.text();
  const type = res.headers.get('content-type') ?? '';
  return { status: res.status, text, type, body: type.includes('json') ? JSON.parse(text) : undefined };
}

const ALLOWED_LABELS = new Set(['kind', 'reason', 'method', 'cause', 'phase', 'slot', 'op', 'durable', 'le', 'quantile', 'version', 'major', 'minor', 'patch', 'space', 'type']);

describe('agentid server --health-listen --metrics-listen (one process, one address)', () => {
  const dir = makeTempDir('agentid-ops-');
  const dataDir = join(dir, 'data');
  const td = 'ops.example';
  let child: ChildProcess;
  let base: string;
  let stderr = '';

  beforeAll(async () => {
    const port = await freePort();
    base = `http://127.0.0.1:${port}`;
    child = spawnCli(['server', '--data-dir', dataDir, '--trust-domain', td, '--health-listen', `127.0.0.1:${port}`, '--metrics-listen', `127.0.0.1:${port}`]);
    child.stderr!.on('data', (d) => (stderr += d));
    await waitFor(async () => (await get(`${base}/ready`)).status === 200, 20_000, '/ready');
  });
  afterAll(() => {
    child?.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('GET /live and /ready answer 200 with JSON naming each probe', async () => {
    const live = await get(`${base}/live`);
    expect(live).toMatchObject({ status: 200, body: { status: 'live' } });
    const ready = await get(`${base}/ready`);
    expect(ready.status).toBe(200);
    expect(ready.body).toEqual({
      status: 'ready',
      checks: [{ name: 'ca', ok: true }, { name: 'datastore', ok: true }, { name: 'workload_api', ok: true }],
    });
    expect((await get(`${base}/nope`)).status).toBe(404);
    expect((await fetch(`${base}/ready`, { method: 'POST' })).status).toBe(405);
  });

  it('agentid healthcheck exits 0 when the Workload API answers, 1 when nothing listens', async () => {
    const ok = await runCli(['healthcheck', '--socket', join(dataDir, 'workload.sock'), '--verbose']);
    expect(ok.code, ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(/^ok: the Workload API answered/);
    const bad = await runCli(['healthcheck', '--socket', join(dir, 'no-such.sock')]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/is not healthy: cannot connect/);
  });

  it('/metrics parses as Prometheus text, carries no unbounded labels, and moves when SVIDs are issued', async () => {
    const before = parsePrometheus((await get(`${base}/metrics`)).text);
    const families = new Set(before.map((s) => s.family));
    for (const name of [
      'agentid_svids_issued', 'agentid_first_svid_seconds', 'agentid_fetch_seconds', 'agentid_attestation_seconds',
      'agentid_attestation_refusals', 'agentid_connections_open', 'agentid_streams_open', 'agentid_revocations',
      'agentid_fanout_seconds', 'agentid_authority_expiry_seconds', 'agentid_datastore_write_seconds', 'agentid_audit_write_seconds',
      'agentid_process_open_fds', 'agentid_process_max_fds',
    ]) {
      expect(families, name).toContain(name);
    }
    const expiry = before.filter((s) => s.name === 'agentid_authority_expiry_seconds');
    expect(expiry.find((s) => s.labels.kind === 'x509' && s.labels.slot === 'active')!.value).toBeGreaterThan(3600);
    expect(expiry.find((s) => s.labels.kind === 'jwt' && s.labels.slot === 'active')!.value).toBeGreaterThan(3600);
    expect(sum(before, 'agentid_process_max_fds')).toBeGreaterThan(0);

    // A refused caller, then an entry and a real SVID fetch.
    const workload = new WorkloadApiClient({ socketPath: join(dataDir, 'workload.sock') });
    await expect(workload.fetchX509Context()).rejects.toThrow();
    const admin = new AdminClient(join(dataDir, 'admin.sock'));
    await admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/metrics-test`, selectors: [`unix:uid:${process.getuid!()}`] } });
    admin.close();
    const ctx = await workload.fetchX509Context();
    expect(ctx.svids[0]!.spiffeId).toBe(`spiffe://${td}/metrics-test`);
    await workload.fetchJwtSvid({ audience: ['metrics'] });
    workload.close();

    const after = parsePrometheus((await get(`${base}/metrics`)).text);
    expect(sum(after, 'agentid_svids_issued_total', { kind: 'x509' })).toBe(sum(before, 'agentid_svids_issued_total', { kind: 'x509' }) + 1);
    expect(sum(after, 'agentid_svids_issued_total', { kind: 'jwt' })).toBe(sum(before, 'agentid_svids_issued_total', { kind: 'jwt' }) + 1);
    expect(sum(after, 'agentid_first_svid_seconds_count')).toBeGreaterThan(sum(before, 'agentid_first_svid_seconds_count'));
    // One full attestation at least: this process's later calls and connections reuse it
    // (attest/attestation-cache.ts), and a reuse is not an attestation to time.
    expect(sum(after, 'agentid_attestation_seconds_count')).toBeGreaterThanOrEqual(sum(before, 'agentid_attestation_seconds_count') + 1);
    expect(sum(after, 'agentid_attestation_refusals_total', { method: 'FetchX509SVID', reason: 'no_identity' })).toBe(1);
    expect(sum(after, 'agentid_datastore_write_seconds_count', { op: 'entries.create' })).toBe(1);
    expect(sum(after, 'agentid_audit_write_seconds_count', { durable: 'true' })).toBeGreaterThan(sum(before, 'agentid_audit_write_seconds_count', { durable: 'true' }));
    // Bounded labels only: no SPIFFE ID, path, pid or uid ever becomes a label value.
    for (const s of after) {
      for (const [k, v] of Object.entries(s.labels)) {
        expect(ALLOWED_LABELS, `${s.name} label ${k}`).toContain(k);
        expect(v, `${s.name}{${k}}`).not.toMatch(/spiffe:|\//);
      }
    }
  });

  it('SIGTERM stops the server: it exits 0 and the endpoints close', async () => {
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    await expect(fetch(`${base}/live`)).rejects.toThrow();
    expect(stderr).toMatch(/"msg":"agentid server stopped"/);
  });
});

describe('/ready turns 503 on real faults', () => {
  it('when the datastore is closed', async () => {
    const dir = makeTempDir('agentid-ready-');
    const store = openSqliteDatastore(join(dir, 'agentid.db'));
    const ops = await startOps({
      health: { listen: { host: '127.0.0.1', port: 0 }, probes: [datastoreProbe(store)] },
      metrics: { listen: null, metrics: new ServerMetrics() },
      logger: silentLogger(),
    });
    try {
      expect((await get(`${ops.healthUrl}/ready`)).status).toBe(200);
      store.close();
      const res = await get(`${ops.healthUrl}/ready`);
      expect(res.status).toBe(503);
      expect(res.body.status).toBe('not ready');
      expect(res.body.checks).toEqual([{ name: 'datastore', ok: false, error: expect.stringMatching(/closed|not open/i) }]);
      expect((await get(`${ops.healthUrl}/live`)).status).toBe(200);
    } finally {
      await ops.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('when no signing CA is active (it expired and was not rotated), and when the Workload API socket does not accept', async () => {
    const dir = makeTempDir('agentid-ready-');
    const clock = new ManualClock();
    const { ca } = await openTestCa(dir, { clock });
    const ops = await startOps({
      health: { listen: { host: '127.0.0.1', port: 0 }, probes: [caProbe(ca, () => clock.now()), socketProbe('workload_api', join(dir, 'absent.sock'))] },
      metrics: { listen: null, metrics: new ServerMetrics() },
      logger: silentLogger(),
    });
    try {
      const first = await get(`${ops.healthUrl}/ready`);
      expect(first.status).toBe(503);
      expect(first.body.checks[0]).toEqual({ name: 'ca', ok: true });
      expect(first.body.checks[1]).toMatchObject({ name: 'workload_api', ok: false, error: expect.stringMatching(/ENOENT/) });
      await clock.advance(25 * 3_600_000);
      const res = await get(`${ops.healthUrl}/ready`);
      expect(res.body.checks[0]).toEqual({ name: 'ca', ok: false, error: expect.stringMatching(/the active signing CA expired at/) });
    } finally {
      await ops.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
