/**
 * CLI promises that need a running server: admin commands find it through --data-dir, refusals
 * by the server exit 1 (not 2), and `audit show --task` tells a task's whole story.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { runCli } from './support/cli.js';
import { startTestServer, type TestServer } from './support/server.js';

const TD = 'promises.example';
const ENV = { AGENTID_CONFIG: undefined, AGENTID_DATA_DIR: undefined, AGENTID_TRUST_DOMAIN: undefined, SPIFFE_ENDPOINT_SOCKET: undefined, AGENTID_ADMIN_SOCKET: undefined };
let t: TestServer;
let sleeper: ChildProcess;
const cli = (...args: string[]) => runCli(args, { env: ENV });

beforeAll(async () => {
  t = await startTestServer({ trustDomain: TD });
  await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${TD}/svc`, selectors: ['unix:uid:0'] } });
  sleeper = spawn('sleep', ['600'], { stdio: 'ignore' });
}, 30_000);
afterAll(async () => {
  sleeper?.kill('SIGKILL');
  await t?.cleanup();
});

describe('with a running server', () => {
  it('jwt validate of a bad token exits 1 with the refusal, not a usage error', async () => {
    const r = await cli('jwt', 'validate', '--socket', t.config.workloadSocket, '--audience', 'a', 'not.a.token');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^agentid: .*INVALID_ARGUMENT/);
    expect(r.stderr).not.toMatch(/Resolution note|No connection established/);
  });

  it('task start, list, revoke and revocations list find the admin socket through --data-dir', async () => {
    const D = ['--data-dir', t.config.dataDir];
    const start = await cli('task', 'start', ...D, '--agent', 'coder', '--task', 't-cli', '--pid', String(sleeper.pid));
    expect(start.stderr).toBe('');
    expect(start.stdout.trim()).toBe(`spiffe://${TD}/agent/coder/task/t-cli`);
    const list = await cli('task', 'list', ...D, '--json');
    expect(JSON.parse(list.stdout).map((x: { id: string }) => x.id)).toContain('t-cli');
    const revoke = await cli('task', 'revoke', 'coder/t-cli', ...D, '--reason', 'cli test');
    expect(revoke.stderr).toBe('');
    expect(revoke.code).toBe(0);
    const revs = await cli('revocations', 'list', ...D, '--json');
    expect(JSON.parse(revs.stdout).map((x: { spiffe_id: string }) => x.spiffe_id)).toContain(`spiffe://${TD}/agent/coder/task/t-cli`);
    const missing = await cli('task', 'revoke', 'coder/t-none', ...D, '--reason', 'x');
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/not found/);
  });

  it('audit show --task includes the revocation events that name only the task\'s SPIFFE ID', async () => {
    const r = await cli('audit', 'show', '--data-dir', t.config.dataDir, '--task', 't-cli', '--json');
    expect(r.stderr).toBe('');
    const types = JSON.parse(r.stdout).map((e: { type: string }) => e.type);
    expect(types).toEqual(expect.arrayContaining(['task.started', 'task.revoked', 'revocation.added']));
  });
});
