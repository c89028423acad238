/**
 * Per-task identities end to end: `agentid run`, revocation pushed to open streams with CRLs that
 * openssl enforces, orchestrator scoping, and revocations that survive a restart.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ensureTestUser, type TestUser } from '../src/attest/testing.js';
import { readAuditEvents } from '../src/audit/index.js';
import { startTestServer, type TestServer } from './support/server.js';
import { REPO, cliArgv, runCli } from './support/cli.js';
import { WorkloadApiClient } from '../src/client/workload-client.js';

const FETCH_CLIENT = join(import.meta.dirname, 'support', 'fetch-client.ts');
const td = 'tasks.example';

/** Node one-liner that fetches its SVIDs once and prints their IDs as JSON. */
function fetchOnceArgv(): string[] {
  return [process.execPath, '--import', 'tsx', FETCH_CLIENT, '', 'once'];
}

describe('tasks', () => {
  let t: TestServer;
  let orchestrator: TestUser;

  beforeAll(async () => {
    orchestrator = ensureTestUser('agentid-test-orch');
    t = await startTestServer({
      trustDomain: td,
      yaml: ['admin:', '  admin_uids: [0]', '  orchestrators:', `    - uid: ${orchestrator.uid}`, '      agents: [builder]', 'tasks:', '  max_ttl: 1h'].join('\n'),
    });
    // A baseline identity for root processes, also served to task processes (include_tasks), so a
    // stream survives losing its task identity.
    await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/root`, selectors: ['unix:uid:0'], include_tasks: true } });
  });
  afterAll(async () => t?.cleanup());

  const env = () => ({ AGENTID_ADMIN_SOCKET: t.config.adminSocket, SPIFFE_ENDPOINT_SOCKET: `unix://${t.config.workloadSocket}` });

  it('agentid run gives the task identity to the command only, and ends the task when it exits', async () => {
    const argv = fetchOnceArgv();
    argv[4] = t.config.workloadSocket;
    const run = await runCli(['run', '--agent', 'coder', '--task', 't-run-1', '--meta', 'ticket=SEC-1', '--', ...argv], { env: env() });
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    const inside = JSON.parse(run.stdout.trim().split('\n').pop()!);
    expect(inside.ids[0]).toBe(`spiffe://${td}/agent/coder/task/t-run-1`);

    // The same command outside the task, same uid: no task identity.
    // (async: the server runs in this process, so a synchronous spawn would deadlock it)
    const outside = await new Promise<string>((resolve) => {
      const c = spawn(argv[0]!, argv.slice(1), { cwd: REPO, stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      c.stdout.on('data', (d) => (out += d));
      c.on('exit', () => resolve(out));
    });
    expect(JSON.parse(outside.trim()).ids).toEqual([`spiffe://${td}/root`]);

    const show = await runCli(['task', 'show', 't-run-1', '--json'], { env: env() });
    const task = JSON.parse(show.stdout);
    expect(task.state).toBe('ended');
    expect(task.issuance_count).toBeGreaterThan(0);
    expect(task.metadata).toEqual({ ticket: 'SEC-1' });
  });

  it('refuses a task\'s JWT-SVID in ValidateJWTSVID once the task has ended', async () => {
    const run = await runCli(['run', '--agent', 'coder', '--task', 't-jwt', '--', ...cliArgv('jwt', 'fetch', '--audience', 'https://svc.example')], { env: env() });
    expect(run.stderr).toBe('');
    const token = run.stdout.trim().split('\n').pop()!;
    expect(token.split('.')).toHaveLength(3);
    const client = new WorkloadApiClient({ socketPath: t.config.workloadSocket });
    try {
      await expect(client.validateJwtSvid(token, 'https://svc.example')).rejects.toMatchObject({ code: 'invalid_argument', message: expect.stringMatching(/revoked/) });
    } finally {
      client.close();
    }
  });

  it('refuses input the audit log would refuse, before storing anything', async () => {
    const tokenLike = 'eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9'; // a JWT header: never stored, never audited
    const child = spawn('sleep', ['5']);
    try {
      await expect(t.admin.call('StartTask', { agent: tokenLike, id: 't-x', pid: child.pid })).rejects.toMatchObject({ code: 'invalid_argument', message: expect.stringMatching(/looks like a JWT/) });
      await expect(t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/${tokenLike}`, selectors: ['unix:uid:0'] } })).rejects.toMatchObject({ code: 'invalid_argument' });
    } finally {
      child.kill();
    }
    const { tasks } = await t.admin.call('ListTasks', {});
    expect(tasks.map((x: any) => x.agent)).not.toContain(tokenLike);
    const { entries } = await t.admin.call('ListEntries', {});
    expect(entries.map((e: any) => e.spiffe_id).join(' ')).not.toContain(tokenLike);
    const denied = readAuditEvents(t.config.audit.file, { type: 'admin.denied' }) as { action: string; reason: string }[];
    expect(denied.some((d) => d.action === 'task.start' && /looks like a JWT/.test(d.reason))).toBe(true);
  });

  it('agentid run exits with the command\'s exit code', async () => {
    const run = await runCli(['run', '--agent', 'coder', '--task', 't-run-2', '--', '/bin/sh', '-c', 'exit 7'], { env: env() });
    expect(run.code).toBe(7);
  });

  it('revocation reaches the bound process\'s stream within a second, with a CRL that openssl enforces', async () => {
    const child = spawn('sleep', ['30']);
    const started = await runCli(['task', 'start', '--agent', 'coder', '--task', 't-rev', '--pid', String(child.pid), '--json'], { env: env() });
    expect(started.code).toBe(0);
    // Watch as the bound process would: run the watcher as a descendant? Simpler: bind a watcher process directly.
    const watcher = spawn(process.execPath, ['--import', 'tsx', FETCH_CLIENT, t.config.workloadSocket, 'watch'], { cwd: REPO, stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      await runCli(['task', 'start', '--agent', 'coder', '--task', 't-rev-w', '--pid', String(watcher.pid)], { env: env() });
      const lines: any[] = [];
      let buf = '';
      const waitFor = (pred: (l: any) => boolean, ms: number) =>
        new Promise<any>((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`timeout; saw ${JSON.stringify(lines.map((l) => l.ids))}`)), ms);
          const check = () => {
            const hit = lines.find(pred);
            if (hit) { clearTimeout(timer); resolve(hit); }
          };
          watcher.stdout!.on('data', check);
          check();
        });
      watcher.stdout!.on('data', (d) => {
        buf += d;
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) { lines.push(JSON.parse(buf.slice(0, nl))); buf = buf.slice(nl + 1); }
      });
      const taskId = `spiffe://${td}/agent/coder/task/t-rev-w`;
      const before = await waitFor((l) => l.ids?.[0] === taskId, 5000);
      const certs = before.chainPem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----\n/g);
      writeFileSync(join(t.dir, 'task-leaf.pem'), certs[0]);
      writeFileSync(join(t.dir, 'task-chain.pem'), certs.slice(1).join(''));
      writeFileSync(join(t.dir, 'task-bundle.pem'), before.bundlePem);

      // The requirement under test: the open stream has the update within one second of the revocation.
      await t.admin.call('RevokeTask', { agent: 'coder', id: 't-rev-w', reason: 'compromised' });
      const seenBefore = lines.indexOf(before);
      const after = await waitFor((l) => lines.indexOf(l) > seenBefore && l.ids && !l.ids.includes(taskId), 1000);
      expect(after.crls).toBeGreaterThan(0);

      writeFileSync(join(t.dir, 'crl.pem'), after.crlPem.join(''));
      const verify = (extra: string[]) =>
        spawnSync('openssl', ['verify', ...extra, '-CAfile', join(t.dir, 'task-bundle.pem'), '-untrusted', join(t.dir, 'task-chain.pem'), join(t.dir, 'task-leaf.pem')], { encoding: 'utf8' });
      expect(verify([]).stdout).toContain('OK');
      const withCrl = verify(['-crl_check', '-CRLfile', join(t.dir, 'crl.pem')]);
      const crlText = spawnSync('openssl', ['crl', '-noout', '-text', '-in', join(t.dir, 'crl.pem')], { encoding: 'utf8' }).stdout;
      const leafSerial = spawnSync('openssl', ['x509', '-noout', '-serial', '-issuer', '-in', join(t.dir, 'task-leaf.pem')], { encoding: 'utf8' }).stdout;
      expect(withCrl.stdout + withCrl.stderr, `${leafSerial}\n${crlText}`).toMatch(/certificate revoked/);

      const list = await runCli(['revocations', 'list', '--json'], { env: env() });
      expect(JSON.parse(list.stdout).map((r: any) => r.spiffe_id)).toContain(taskId);
    } finally {
      watcher.kill();
      child.kill();
    }
  });

  it('keeps an orchestrator inside its agent namespace and TTL cap, and audits each refusal', async () => {
    const asOrch = (argv: string[]) => ({ command: 'setpriv', args: [`--reuid=${orchestrator.uid}`, `--regid=${orchestrator.gid}`, '--init-groups', '--', ...argv] });
    const own = spawn('setpriv', [`--reuid=${orchestrator.uid}`, `--regid=${orchestrator.gid}`, '--clear-groups', '--', 'sleep', '30']);
    try {
      await new Promise((r) => setTimeout(r, 100));
      const ok = await runCli(['task', 'start', '--agent', 'builder', '--task', 'b-1', '--pid', String(own.pid)], { env: env(), wrap: asOrch });
      expect(ok.stderr).toBe('');
      expect(ok.code).toBe(0);
      const other = await runCli(['task', 'start', '--agent', 'coder', '--task', 'c-x', '--pid', String(own.pid)], { env: env(), wrap: asOrch });
      expect(other.code).toBe(1);
      expect(other.stderr).toMatch(/not allowed to start tasks for agent "coder"/);
      const long = await runCli(['task', 'start', '--agent', 'builder', '--task', 'b-2', '--pid', String(own.pid), '--ttl', '2h'], { env: env(), wrap: asOrch });
      expect(long.stderr).toMatch(/exceeds the task policy cap/);
      const revoke = await runCli(['task', 'revoke', 't-rev', '--reason', 'x'], { env: env(), wrap: asOrch });
      expect(revoke.code).toBe(1);
      const listOther = await runCli(['task', 'list', '--agent', 'coder'], { env: env(), wrap: asOrch });
      expect(listOther.code).toBe(1);
      const listOwn = await runCli(['task', 'list', '--json'], { env: env(), wrap: asOrch });
      expect(JSON.parse(listOwn.stdout).map((x: any) => x.agent)).toEqual(['builder']);
      const entry = await runCli(['entry', 'create', '--spiffe-id', `spiffe://${td}/x`, '--selector', 'unix:uid:5'], { env: env(), wrap: asOrch });
      expect(entry.code).toBe(1);

      const denied = readAuditEvents(t.config.audit.file, { type: 'admin.denied' }) as { action: string; reason: string; who: string }[];
      const orch = denied.filter((d) => d.who === `uid:${orchestrator.uid} (orchestrator)`);
      expect(orch.some((d) => d.action === 'task.start' && /agent "coder"/.test(d.reason))).toBe(true);
      expect(orch.some((d) => d.action === 'task.start' && /policy cap/.test(d.reason))).toBe(true);
      expect(orch.some((d) => d.action === 'task.revoke')).toBe(true);
      expect(orch.some((d) => d.action === 'task.list')).toBe(true);
      expect(orch.some((d) => d.action === 'CreateEntry')).toBe(true);
    } finally {
      own.kill();
    }
  });

  it('ends a task whose bound process dies (agentid run killed) and keeps revocations across a restart', async () => {
    const child = spawn('sleep', ['30']);
    await runCli(['task', 'start', '--agent', 'coder', '--task', 't-dies', '--pid', String(child.pid)], { env: env() });
    child.kill('SIGKILL');
    const deadline = Date.now() + 5000;
    let state = 'active';
    while (state === 'active' && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 200));
      state = (await t.admin.call('GetTask', { agent: 'coder', id: 't-dies' })).state;
    }
    expect(state).toBe('ended');

    const dir = t.dir;
    await t.stop();
    t = await startTestServer({ dir, trustDomain: td, yaml: ['admin:', '  admin_uids: [0]', '  orchestrators:', `    - uid: ${orchestrator.uid}`, '      agents: [builder]'].join('\n') });
    const { revocations } = await t.admin.call('ListRevocations', {});
    expect(revocations.map((r: any) => r.spiffe_id)).toContain(`spiffe://${td}/agent/coder/task/t-rev-w`);
    // A revoked task ID is never issued again.
    const again = spawn('sleep', ['5']);
    await expect(t.admin.call('StartTask', { agent: 'coder', id: 't-rev-w', pid: again.pid })).rejects.toMatchObject({ code: 'already_exists' });
    again.kill();
  });
});
