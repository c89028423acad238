/**
 * A real server on PostgreSQL (datastore.url): entries written through the admin socket land in
 * the database, not in a SQLite file, are served over the Workload API, and are still there after
 * a restart. The cluster is the tests' own (test/support/postgres.ts).
 */
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { WorkloadApiClient } from '../src/client/workload-client.js';
import { startPostgresCluster, type PostgresCluster } from './support/postgres.js';
import { makeTempDir, startTestServer, type TestServer } from './support/server.js';

const TD = 'pg.example';

describe('agentid server with datastore.url = postgresql://', () => {
  let cluster: PostgresCluster;
  let url: string;
  let dir: string;
  let t: TestServer | undefined;

  beforeAll(async () => {
    cluster = await startPostgresCluster();
    url = await cluster.createDatabase('agentid');
    dir = makeTempDir('agentid-pg-server-');
  });
  afterAll(async () => {
    await t?.cleanup();
    // Also when a start failed and left no server to clean up after.
    if (dir) rmSync(dir, { recursive: true, force: true });
    await cluster?.stop();
  });

  const start = () => startTestServer({ dir, trustDomain: TD, yaml: `datastore:\n  url: "${url}"\n` });

  async function fetchIds(socket: string): Promise<string[]> {
    const client = new WorkloadApiClient({ socketPath: socket });
    try {
      return (await client.fetchJwtSvids({ audience: ['https://api.example'] })).map((s) => s.spiffeId);
    } finally {
      client.close();
    }
  }

  it('stores entries in PostgreSQL, serves them, and keeps them across a restart', async () => {
    t = await start();
    await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${TD}/on-postgres`, selectors: ['unix:uid:0'] } });
    expect(await fetchIds(t.config.workloadSocket)).toEqual([`spiffe://${TD}/on-postgres`]);
    const rows = await cluster.query<{ spiffe_id: string }>('agentid', 'SELECT spiffe_id FROM registration_entries');
    expect(rows).toEqual([{ spiffe_id: `spiffe://${TD}/on-postgres` }]);
    expect(existsSync(join(t.config.dataDir, 'agentid.db'))).toBe(false);

    await t.stop();
    t = await start();
    expect(await fetchIds(t.config.workloadSocket)).toEqual([`spiffe://${TD}/on-postgres`]);
  });
});
