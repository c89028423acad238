/**
 * Rotation at half-life under a manual clock, and a server restart that keeps every entry while
 * clients reconnect by themselves.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { ManualClock } from '../src/common/clock.js';
import { X509Source } from '../src/client/sources.js';
import { AdminClient } from '../src/cli/admin-client.js';
import { makeTempDir, startTestServer, type TestServer } from './support/server.js';
import { spawnCli } from './support/cli.js';

const td = 'rotate.example';
const waitFor = async (cond: () => boolean, ms: number, what: string) => {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
};

describe('rotation', () => {
  let t: TestServer | undefined;
  afterAll(async () => t?.cleanup());

  it('re-mints and pushes an X.509-SVID at half its lifetime, not before', async () => {
    const clock = new ManualClock(Date.now());
    t = await startTestServer({ trustDomain: td, clock });
    await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/rotating`, selectors: ['unix:uid:0'], x509_ttl_seconds: 600 } });
    const source = await X509Source.create({ socketPath: t.config.workloadSocket });
    try {
      const first = source.getX509Svid();
      let updates = 0;
      source.on('update', () => updates++);

      // 30% of the lifetime: renewal is due between 40% and 50% (half-life minus jitter).
      await clock.advance(180_000);
      await new Promise((r) => setTimeout(r, 300));
      expect(source.getX509Svid().chainDer[0]!.equals(first.chainDer[0]!)).toBe(true);

      await clock.advance(130_000); // 51%
      await waitFor(() => !source.getX509Svid().chainDer[0]!.equals(first.chainDer[0]!), 3000, 'a rotated SVID');
      const second = source.getX509Svid();
      expect(second.notAfter).toBeGreaterThan(first.notAfter);
      expect(updates).toBeGreaterThanOrEqual(1);
    } finally {
      await source.close();
    }
  });
});

describe('entry expiry', () => {
  let t: TestServer | undefined;
  afterAll(async () => t?.cleanup());

  it('drops an expiring entry from an open stream when it expires, never minting past its expiry', async () => {
    const clock = new ManualClock(Date.now());
    t = await startTestServer({ trustDomain: td, clock });
    const expiresAt = Math.floor(clock.now() / 1000) + 120;
    await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/stays`, selectors: ['unix:uid:0'] } });
    await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/expires`, selectors: ['unix:uid:0'], expires_at: expiresAt } });
    const source = await X509Source.create({ socketPath: t.config.workloadSocket });
    try {
      const ids = () => source.getX509Context().svids.map((s) => s.spiffeId);
      // Both created at the same (manual) instant, so their order is by entry ID: compare as sets.
      expect([...ids()].sort()).toEqual([`spiffe://${td}/expires`, `spiffe://${td}/stays`]);
      const expiring = source.getX509Context().svids.find((s) => s.spiffeId.endsWith('/expires'))!;
      expect(expiring.notAfter).toBeLessThanOrEqual(expiresAt * 1000);
      await clock.advance(121_000);
      await waitFor(() => !ids().includes(`spiffe://${td}/expires`), 3000, 'the expired entry to leave the stream');
      expect(ids()).toEqual([`spiffe://${td}/stays`]);
    } finally {
      await source.close();
    }
  });
});

describe('restart', () => {
  it('keeps entries across a restart of the real server process, and clients reconnect by themselves', async () => {
    const dir = makeTempDir('agentid-restart-');
    const dataDir = join(dir, 'data');
    const args = ['server', '--data-dir', dataDir, '--trust-domain', td, '--log-level', 'warn'];
    const start = async () => {
      const server = spawnCli(args);
      let stderr = '';
      server.stderr!.on('data', (d) => (stderr += d));
      await waitFor(() => existsSync(join(dataDir, 'admin.sock')) && existsSync(join(dataDir, 'workload.sock')), 20_000, `server start (${stderr})`);
      return server;
    };
    const stop = (server: ReturnType<typeof spawnCli>) =>
      new Promise<number | null>((resolve) => {
        server.on('exit', (code) => resolve(code));
        server.kill('SIGTERM');
      });

    let server = await start();
    const admin = new AdminClient(join(dataDir, 'admin.sock'));
    const entry = await admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/survivor`, selectors: ['unix:uid:0'] } });
    admin.close();
    const source = await X509Source.create({ socketPath: join(dataDir, 'workload.sock'), backoff: { initialMs: 50, maxMs: 500 } });
    try {
      const before = source.getX509Svid();
      expect(before.spiffeId).toBe(`spiffe://${td}/survivor`);
      expect(await stop(server)).toBe(0);

      server = await start();
      const admin2 = new AdminClient(join(dataDir, 'admin.sock'));
      const { entries } = await admin2.call('ListEntries', {});
      admin2.close();
      expect(entries.map((e: any) => e.id)).toEqual([entry.id]);

      // The source reconnects on its own and receives a fresh SVID from the restarted server.
      await waitFor(() => !source.getX509Svid().chainDer[0]!.equals(before.chainDer[0]!), 15_000, 'reconnect and a fresh SVID');
      expect(source.getX509Svid().spiffeId).toBe(`spiffe://${td}/survivor`);
      // Same CA: the bundle did not change.
      expect(Buffer.concat(source.getX509Svid().bundleDer).equals(Buffer.concat(before.bundleDer))).toBe(true);
    } finally {
      await source.close();
      await stop(server);
    }
  });
});
