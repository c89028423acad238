/**
 * Per-host agents, admin side, with a real server and the real CLI: join tokens (printed once,
 * stored and audited without the token), node-scoped entries that never match on the server's own
 * socket, and tasks bound on a node that the server's liveness pass leaves alone.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import BetterSqlite3 from 'better-sqlite3';
import { readAuditEvents } from '../src/audit/index.js';
import { WorkloadApiClient } from '../src/client/workload-client.js';
import { runCli } from './support/cli.js';
import { startTestServer, type TestServer } from './support/server.js';
import { waitFor } from './support/wait.js';

const td = 'nodes.example';

describe('nodes: admin API and CLI', () => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer({ trustDomain: td, yaml: ['admin:', '  admin_uids: [0]', 'tasks:', '  liveness_interval: 200ms'].join('\n') });
    await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/root`, selectors: ['unix:uid:0'] } });
  });
  afterAll(async () => t?.cleanup());
  const env = () => ({ AGENTID_ADMIN_SOCKET: t.config.adminSocket });

  it('token generate prints the token as its only stdout line; only its hash is stored; the audit line has no token', async () => {
    const r = await runCli(['token', 'generate', '--node', 'web-1', '--ttl', '10m', '--task-agents', 'coder,builder'], { env: env() });
    expect(r.code).toBe(0);
    const lines = r.stdout.split('\n').filter((l) => l !== '');
    expect(lines).toHaveLength(1);
    const token = lines[0]!;
    expect(token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const db = new BetterSqlite3(t.config.datastore.kind === 'sqlite' ? t.config.datastore.file : '', { readonly: true });
    try {
      const rows = db.prepare('SELECT * FROM join_tokens').all() as Record<string, unknown>[];
      expect(rows).toHaveLength(1);
      expect(rows[0]).toMatchObject({ node: 'web-1', task_agents: '["coder","builder"]', used_at: null, created_by: 'uid:0 (admin)' });
      expect(JSON.stringify(rows)).not.toContain(token);
    } finally {
      db.close();
    }
    const audit = readFileSync(t.config.audit.file, 'utf8');
    expect(audit).not.toContain(token);
    expect(readAuditEvents(t.config.audit.file).filter((e) => e.type === 'node.join_token_created')).toMatchObject([{ node: 'web-1', task_agents: ['coder', 'builder'], outcome: 'ok' }]);
  });

  it('token generate refuses a bad node name and a ttl beyond the cap, and is admin only', async () => {
    const bad = await runCli(['token', 'generate', '--node', 'a/b'], { env: env() });
    expect(bad.code).toBe(1);
    expect(bad.stdout).toBe('');
    expect(bad.stderr).toMatch(/node "a\/b" must be a SPIFFE ID path segment/);
    const long = await runCli(['token', 'generate', '--node', 'web-1', '--ttl', '30d'], { env: env() });
    expect(long.stderr).toMatch(/at most 7 days/);
    const nobody = await runCli(['token', 'generate', '--node', 'web-1'], { env: env(), wrap: (argv) => ({ command: 'setpriv', args: ['--reuid', '65534', '--regid', '65534', '--clear-groups', '--', ...argv] }) });
    expect(nobody.code).toBe(1);
    expect(nobody.stdout).toBe('');
  });

  it('node list and show work with no nodes and refuse an unknown node', async () => {
    const list = await runCli(['node', 'list'], { env: env() });
    expect(list.stdout.trim()).toBe('no nodes');
    const show = await runCli(['node', 'show', 'nope'], { env: env() });
    expect(show.code).toBe(1);
    expect(show.stderr).toMatch(/node nope not found/);
    const evict = await runCli(['node', 'evict', 'nope'], { env: env() });
    expect(evict.stderr).toMatch(/node nope not found/);
    const grant = await runCli(['node', 'task-agents', 'nope', 'coder'], { env: env() });
    expect(grant.code).toBe(1);
    expect(grant.stderr).toMatch(/node nope not found/);
    const nobody = await runCli(['node', 'task-agents', 'nope', 'coder'], { env: env(), wrap: (argv) => ({ command: 'setpriv', args: ['--reuid', '65534', '--regid', '65534', '--clear-groups', '--', ...argv] }) });
    expect(nobody.code).toBe(1);
    expect(nobody.stderr).not.toMatch(/not found/);
  });

  it('an entry limited to a node never matches on the server\'s own socket; without --node it does', async () => {
    const scoped = await runCli(['entry', 'create', '--spiffe-id', `spiffe://${td}/on-web-1`, '--selector', 'unix:uid:0', '--node', 'web-1', '--json'], { env: env() });
    expect(scoped.code).toBe(0);
    expect(JSON.parse(scoped.stdout).node).toBe('web-1');
    // The same SPIFFE ID and selectors may exist once per node, and once without one.
    const everywhere = await runCli(['entry', 'create', '--spiffe-id', `spiffe://${td}/on-web-1`, '--selector', 'unix:uid:0'], { env: env() });
    expect(everywhere.code).toBe(0);
    const elsewhere = await runCli(['entry', 'create', '--spiffe-id', `spiffe://${td}/only-web-2`, '--selector', 'unix:uid:0', '--node', 'web-2'], { env: env() });
    expect(elsewhere.code).toBe(0);
    const client = new WorkloadApiClient({ socketPath: t.config.workloadSocket });
    try {
      const { svids } = await client.fetchX509Context();
      const ids = svids.map((s) => s.spiffeId.toString());
      expect(ids).toContain(`spiffe://${td}/on-web-1`);
      expect(ids).not.toContain(`spiffe://${td}/only-web-2`);
    } finally {
      client.close();
    }
    // Moving it to everywhere makes it match here; update keeps the node unless told.
    const id = elsewhere.stdout.trim();
    const kept = await runCli(['entry', 'update', id, '--hint', 'h', '--json'], { env: env() });
    expect(JSON.parse(kept.stdout).node).toBe('web-2');
    const moved = await runCli(['entry', 'update', id, '--node', '', '--json'], { env: env() });
    expect(JSON.parse(moved.stdout).node).toBe('');
    const client2 = new WorkloadApiClient({ socketPath: t.config.workloadSocket });
    try {
      expect((await client2.fetchX509Context()).svids.map((s) => s.spiffeId.toString())).toContain(`spiffe://${td}/only-web-2`);
    } finally {
      client2.close();
    }
  });

  it('a task bound on a node is left alone by the liveness pass that ends a dead local task, and never matches a local caller', async () => {
    // A local task whose process exits: the liveness pass ends it (so a pass has run).
    const sleeper = spawn('sleep', ['60']);
    const local = await runCli(['task', 'start', '--agent', 'coder', '--task', 'local-1', '--pid', String(sleeper.pid)], { env: env() });
    expect(local.stderr).toBe('');
    sleeper.kill('SIGKILL');
    // Bound on node web-1 to this very process's pid (alive here) and to a pid that does not
    // exist here: neither the server's /proc nor its callers decide anything about it.
    const remote = await runCli(['task', 'start', '--agent', 'coder', '--task', 'remote-1', '--node', 'web-1', '--pid', '4194000', '--start-time', '12345', '--json'], { env: env() });
    expect(remote.stderr).toBe('');
    const shown = JSON.parse(remote.stdout);
    expect(shown).toMatchObject({ node: 'web-1', pid: 4194000, start_time: '12345' });
    const pinned = await runCli(['task', 'start', '--agent', 'coder', '--task', 'remote-2', '--node', 'web-1', '--pid', '4194001', '--json'], { env: env() });
    expect(JSON.parse(pinned.stdout)).toMatchObject({ node: 'web-1', start_time: '' });
    // Bound on web-1 to a pid and start time that are exactly this test process's here.
    const stat = readFileSync('/proc/self/stat', 'utf8');
    const startTime = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]!;
    const twin = await runCli(['task', 'start', '--agent', 'coder', '--task', 'remote-3', '--node', 'web-1', '--pid', String(process.pid), '--start-time', startTime], { env: env() });
    expect(twin.stderr).toBe('');

    await waitFor(async () => (await t.admin.call('GetTask', { agent: 'coder', id: 'local-1' })).state === 'ended', 10_000, 'the liveness pass to end local-1');
    // Two more passes after that one.
    await new Promise((r) => setTimeout(r, 600));
    expect((await t.admin.call('GetTask', { agent: 'coder', id: 'remote-1' })).state).toBe('active');
    expect((await t.admin.call('GetTask', { agent: 'coder', id: 'remote-2' })).state).toBe('active');
    // This process, whose pid and start time remote-3 names on web-1, is no task process here: it
    // gets its uid's entry and no task identity.
    const client = new WorkloadApiClient({ socketPath: t.config.workloadSocket });
    try {
      const ids = (await client.fetchX509Context()).svids.map((s) => s.spiffeId.toString());
      expect(ids).toContain(`spiffe://${td}/root`);
      expect(ids.some((id) => id.includes('/task/'))).toBe(false);
    } finally {
      client.close();
    }
  });

  it('task start --node is admin only, and --start-time needs --node', async () => {
    const r = await runCli(['task', 'start', '--agent', 'coder', '--task', 'x-1', '--pid', '1234', '--start-time', '5'], { env: env() });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/start_time applies to pid bindings on a node only/);
  });
});
