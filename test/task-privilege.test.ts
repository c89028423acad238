/**
 * Hostile-user checks on tasks, with real processes and real Unix users:
 * - least privilege: a process bound to a task gets only its task identity (plus entries that opt in
 *   with --include-tasks) and nothing at all once the task is revoked;
 * - orchestrators bind only cgroups below tasks.cgroup_root whose every process they own, and learn
 *   nothing about other agents' tasks.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { asUser, ensureTestUser, killAll, type TestUser } from '../src/attest/testing.js';
import { cgroup2Mount } from '../src/attest/processes.js';
import { startTestServer, type TestServer } from './support/server.js';
import { REPO, runCli } from './support/cli.js';

const FETCH_CLIENT = join(import.meta.dirname, 'support', 'fetch-client.ts');
const td = 'privilege.example';
const CGROUP_ROOT = `/agentid-test-${process.pid}`;
const mount = cgroup2Mount();
/** cgroup v2 with a writable hierarchy (root in CI); elsewhere the cgroup test cannot run. */
const cgroupsUsable = (() => {
  try {
    mkdirSync(join(mount, CGROUP_ROOT));
    return true;
  } catch {
    return false;
  }
})();

/** Lines of JSON a child prints, with a way to wait for one that satisfies a predicate. */
function jsonLines(child: ChildProcess) {
  const lines: any[] = [];
  let buf = '';
  child.stdout!.on('data', (d) => {
    buf += d;
    for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
      lines.push(JSON.parse(buf.slice(0, nl)));
      buf = buf.slice(nl + 1);
    }
  });
  return {
    lines,
    waitFor(pred: (l: any) => boolean, ms = 10_000): Promise<any> {
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`timeout; saw ${JSON.stringify(lines.map((l) => l.ids ?? l))}`)), ms);
        const check = () => {
          const hit = lines.find(pred);
          if (hit) {
            clearTimeout(timer);
            child.stdout!.off('data', check);
            resolve(hit);
          }
        };
        child.stdout!.on('data', check);
        check();
      });
    },
  };
}

describe('task privilege', () => {
  let t: TestServer;
  let worker: TestUser;
  let orchestrator: TestUser;
  const children: ChildProcess[] = [];

  beforeAll(async () => {
    worker = ensureTestUser('agentid-test-lp');
    orchestrator = ensureTestUser('agentid-test-orch');
    t = await startTestServer({
      trustDomain: td,
      yaml: [
        'admin:', '  admin_uids: [0]', '  orchestrators:', `    - uid: ${orchestrator.uid}`, '      agents: [builder]',
        'tasks:', `  cgroup_root: ${CGROUP_ROOT}`, '  liveness_interval: 200ms',
      ].join('\n'),
    });
  });
  afterAll(async () => {
    await killAll(children);
    await t?.cleanup();
    if (cgroupsUsable) {
      for (const sub of ['mixed/deep', 'mixed', 'own', '']) {
        try {
          rmdirSync(join(mount, CGROUP_ROOT, sub));
        } catch {
          // never created (a skipped step)
        }
      }
    }
  });

  const env = () => ({ AGENTID_ADMIN_SOCKET: t.config.adminSocket, SPIFFE_ENDPOINT_SOCKET: `unix://${t.config.workloadSocket}` });

  it('gives a task process only its task identity, and nothing once the task is revoked', async () => {
    // An identity the worker's uid matches, meant for a service, not for whatever task runs as it.
    const service = await runCli(['entry', 'create', '--spiffe-id', `spiffe://${td}/service/tasks`, '--selector', `unix:uid:${worker.uid}`], { env: env() });
    expect(service.code).toBe(0);
    const optIn = await runCli(['entry', 'create', '--spiffe-id', `spiffe://${td}/shared`, '--selector', `unix:uid:${worker.uid}`, '--selector', `unix:gid:${worker.gid}`, '--include-tasks', '--json'], { env: env() });
    expect(JSON.parse(optIn.stdout).include_tasks).toBe(true);

    const { command, args } = asUser(worker, [process.execPath, '--import', 'tsx', FETCH_CLIENT, t.config.workloadSocket, 'watch']);
    const watcher = spawn(command, args, { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    watcher.stderr!.on('data', (d) => (stderr += d));
    const exited = new Promise((resolve) => watcher.once('exit', resolve));
    children.push(watcher);
    const stream = jsonLines(watcher);
    const serviceId = `spiffe://${td}/service/tasks`;
    const sharedId = `spiffe://${td}/shared`;
    const taskId = `spiffe://${td}/agent/coder/task/lp-1`;
    // Before any task: both entries its uid matches.
    const first = await stream.waitFor((l) => Array.isArray(l.ids));
    expect([...first.ids].sort()).toEqual([serviceId, sharedId].sort());

    await t.admin.call('StartTask', { agent: 'coder', id: 'lp-1', pid: watcher.pid });
    const bound = await stream.waitFor((l) => l.ids?.[0] === taskId);
    expect(bound.ids).toEqual([taskId, sharedId]);

    // Revoked: the process is still the task's; it must not fall back to the service identity.
    await t.admin.call('RevokeTask', { agent: 'coder', id: 'lp-1', reason: 'compromised' });
    const after = await stream.waitFor((l) => stream.lines.indexOf(l) > stream.lines.indexOf(bound) && !l.ids?.includes(taskId));
    expect(after.ids ?? []).not.toContain(serviceId);
    expect(after.ids).toEqual([sharedId]);

    // Without an opt-in entry, the revoked task's process gets PERMISSION_DENIED.
    const { entries } = await t.admin.call('ListEntries', {});
    await t.admin.call('DeleteEntry', { id: entries.find((e: any) => e.spiffe_id === sharedId).id });
    // (the test client reports the end of its stream with an {"error"} line, and exits)
    await exited;
    expect(stream.lines.filter((l) => l.ids).at(-1).ids).toEqual([sharedId]);
    expect(`${JSON.stringify(stream.lines.at(-1))} ${stderr}`).toMatch(/permission_denied/);
  });

  it.skipIf(!cgroupsUsable)('lets an orchestrator bind only its own cgroups below the cgroup root', async () => {
    const own = join(mount, CGROUP_ROOT, 'own');
    const mixed = join(mount, CGROUP_ROOT, 'mixed');
    mkdirSync(own);
    mkdirSync(join(mixed, 'deep'), { recursive: true });
    const asOrch = (argv: string[]) => asUser(orchestrator, argv);
    const spawnIn = (cgroup: string, user?: TestUser) => {
      const { command, args } = user ? asUser(user, ['sleep', '60']) : { command: 'sleep', args: ['60'] };
      const c = spawn(command, args, { stdio: 'ignore' });
      children.push(c);
      writeFileSync(join(cgroup, 'cgroup.procs'), `${c.pid}\n`);
      return c;
    };
    spawnIn(own, orchestrator);
    spawnIn(mixed, orchestrator);
    // Another user's process, one level down: the check must look at the whole subtree.
    spawnIn(join(mixed, 'deep'), worker);
    expect(readFileSync(join(mixed, 'deep', 'cgroup.procs'), 'utf8').trim()).not.toBe('');

    const ok = await runCli(['task', 'start', '--agent', 'builder', '--task', 'cg-own', '--cgroup', `${CGROUP_ROOT}/own`], { env: env(), wrap: asOrch });
    expect(ok.stderr).toBe('');
    const foreign = await runCli(['task', 'start', '--agent', 'builder', '--task', 'cg-mixed', '--cgroup', `${CGROUP_ROOT}/mixed`], { env: env(), wrap: asOrch });
    expect(foreign.code).toBe(1);
    expect(foreign.stderr).toMatch(/holds processes of other users/);
    // Outside the configured root: refused before any cgroup is looked at.
    const outside = await runCli(['task', 'start', '--agent', 'builder', '--task', 'cg-out', '--cgroup', '/'.concat('elsewhere')], { env: env(), wrap: asOrch });
    expect(outside.stderr).toMatch(/not below the configured cgroup root/);
    // An admin is trusted with any cgroup below the root.
    await expect(t.admin.call('StartTask', { agent: 'builder', id: 'cg-admin', cgroup: `${CGROUP_ROOT}/mixed` })).resolves.toMatchObject({ state: 'active' });
    const { tasks } = await t.admin.call('ListTasks', {});
    expect(tasks.map((x: any) => x.id).sort()).toEqual(expect.arrayContaining(['cg-own', 'cg-admin']));
    expect(tasks.map((x: any) => x.id)).not.toContain('cg-mixed');
  });

  it('tells an orchestrator nothing about another agent\'s task', async () => {
    const asOrch = (argv: string[]) => asUser(orchestrator, argv);
    const sleeper = spawn('sleep', ['60']);
    children.push(sleeper);
    await t.admin.call('StartTask', { agent: 'coder', id: 'secret-1', pid: sleeper.pid });
    const existing = await runCli(['task', 'show', 'secret-1'], { env: env(), wrap: asOrch });
    const missing = await runCli(['task', 'show', 'no-such-task'], { env: env(), wrap: asOrch });
    expect(existing.code).toBe(missing.code);
    expect(existing.stderr.replace('secret-1', 'X')).toBe(missing.stderr.replace('no-such-task', 'X'));
    expect(existing.stderr).not.toMatch(/coder/);
    const end = await runCli(['task', 'end', 'secret-1'], { env: env(), wrap: asOrch });
    expect(end.stderr).toMatch(/not found/);
    expect(end.stderr).not.toMatch(/coder/);
    expect((await t.admin.call('GetTask', { agent: 'coder', id: 'secret-1' })).state).toBe('active');
    expect(existsSync(t.config.audit.file)).toBe(true);
    expect(readFileSync(t.config.audit.file, 'utf8')).toMatch(/"action":"task.show".*not allowed to act on tasks of agent \\"coder\\"/);
  });
});
