/**
 * A server and two per-host agents on separate hosts (network namespaces on a bridge, made with
 * `ip netns`; see support/hosts.ts), every part a real process started from the CLI:
 *   - a workload on each host gets only its own identities from its local agent;
 *   - a task bound on host A (`task start --node a`) and revoked centrally drops on host A;
 *   - with the server stopped, agents keep serving the SVIDs they hold and refuse new tasks;
 *   - an evicted node loses everything;
 *   - a foreign gRPC stack (Python, C-core) passes against an agent's socket as against the server's.
 * The hosts share the file system and PID namespace (network namespaces only separate the network),
 * so each workload is pointed at its own host's agent socket.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminClient } from '../src/cli/admin-client.js';
import { WorkloadApiClient } from '../src/client/workload-client.js';
import { CLI, REPO, runCli } from './support/cli.js';
import { createHosts, netnsAvailable, type Host, type HostSet } from './support/hosts.js';
import { followJsonLines } from './support/json-lines.js';
import { makeTempDir } from './support/server.js';

const TD = 'hosts.example';
const FETCH_CLIENT = join(REPO, 'test', 'support', 'fetch-client.ts');
const PYTHON = '/usr/bin/python3';
const hasPythonGrpc = spawnSync(PYTHON, ['-c', 'import grpc, grpc_tools, cryptography'], { stdio: 'ignore' }).status === 0;
const AGENT_PORT = 8446;
const HEALTH_PORT = 8447;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor<T>(what: string, probe: () => Promise<T | undefined> | T | undefined, ms = 30_000): Promise<T> {
  const until = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** /proc/<pid>/stat field 22, the process start time the task binding pins. */
function startTimeOf(pid: number): string {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]!;
}

async function fetchIds(socket: string): Promise<string[] | { error: string }> {
  const client = new WorkloadApiClient({ socketPath: socket });
  try {
    const ctx = await client.fetchX509Context();
    return ctx.svids.map((s) => s.spiffeId);
  } catch (err) {
    return { error: (err as { code?: string }).code ?? String(err) };
  } finally {
    client.close();
  }
}

describe.skipIf(!netnsAvailable())('a server and per-host agents on separate hosts (ip netns)', () => {
  let root: string;
  let set: HostSet;
  let serverHost: Host;
  let hostA: Host;
  let hostB: Host;
  let server: ChildProcess | undefined;
  let admin: AdminClient;
  const agents = new Map<string, ChildProcess>();
  const agentLogs = new Map<string, string>();
  const children: ChildProcess[] = [];
  const serverDir = () => join(root, 'server');
  const agentDir = (name: string) => join(root, `agent-${name}`);
  const agentSocket = (name: string) => join(agentDir(name), 'workload.sock');
  const bundleFile = () => join(root, 'bundle.pem');

  const cli = (host: Host, args: string[]) => host.spawn(process.execPath, ['--import', 'tsx', CLI, ...args], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });

  async function startServer(): Promise<void> {
    const config = join(root, 'server.yaml');
    writeFileSync(config, [`trust_domain: ${TD}`, `data_dir: ${serverDir()}`, 'agents:', `  listen: "${serverHost.address}:${AGENT_PORT}"`, 'log:', '  level: warn', ''].join('\n'));
    const child = cli(serverHost, ['server', '--config', config]);
    server = child;
    let stderr = '';
    child.stderr?.on('data', (d) => (stderr += d));
    admin?.close();
    admin = new AdminClient(join(serverDir(), 'admin.sock'));
    // A SIGKILLed server leaves its pid file and socket behind: wait for an answer from this one.
    await waitFor('the server', async () => {
      if (child.exitCode !== null) throw new Error(`server exited: ${stderr}`);
      return admin.call('WhoAmI', {}).then(() => true, () => undefined);
    }, 60_000);
  }

  async function stopServer(): Promise<void> {
    const child = server!;
    server = undefined;
    child.kill('SIGKILL');
    if (child.exitCode === null) await new Promise((r) => child.once('exit', r));
  }

  async function startAgent(name: string, host: Host, joinToken?: string): Promise<ChildProcess> {
    const args = ['agent', '--data-dir', agentDir(name), '--server', `${serverHost.address}:${AGENT_PORT}`, '--trust-bundle', bundleFile(), '--log-level', 'info'];
    if (joinToken) args.push('--join-token', joinToken);
    // Inside the host's own network namespace: the port never collides with another host's.
    args.push('--health-listen', `127.0.0.1:${HEALTH_PORT}`);
    const child = cli(host, args);
    agents.set(name, child);
    agentLogs.set(name, '');
    const log = (d: Buffer) => agentLogs.set(name, agentLogs.get(name)! + d.toString());
    child.stdout?.on('data', log);
    child.stderr?.on('data', log);
    await waitFor(`agent ${name}'s socket`, () => (child.exitCode !== null ? Promise.reject(new Error(`agent ${name} exited: ${agentLogs.get(name)}`)) : existsSync(agentSocket(name)) || undefined), 90_000).catch((err) => { throw new Error(`${err.message}: ${agentLogs.get(name)}`); });
    return child;
  }

  /** The agent's /ready status code, asked from inside its host. */
  const readiness = (host: Host) => host.run('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', `http://127.0.0.1:${HEALTH_PORT}/ready`]).trim();

  function watch(host: Host, socket: string) {
    const child = host.spawn(process.execPath, ['--import', 'tsx', FETCH_CLIENT, socket, 'watch'], { cwd: REPO, stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(child);
    return { child, ...followJsonLines(child) };
  }

  beforeAll(async () => {
    root = makeTempDir('agentid-hosts-');
    set = createHosts(['server', 'a', 'b']);
    serverHost = set.hosts.get('server')!;
    hostA = set.hosts.get('a')!;
    hostB = set.hosts.get('b')!;
    await startServer();
    const bundle = await runCli(['bundle', 'show', '--data-dir', serverDir(), '--trust-domain', TD]);
    expect(bundle.code, bundle.stderr).toBe(0);
    writeFileSync(bundleFile(), bundle.stdout);
    for (const name of ['a', 'b']) {
      await admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${TD}/on-${name}`, selectors: ['unix:uid:0'], node: name } });
    }
    await admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${TD}/everywhere`, selectors: ['unix:uid:0'] } });
    for (const [name, host] of [['a', hostA], ['b', hostB]] as const) {
      const token = await runCli(['token', 'generate', '--node', name, '--admin-socket', join(serverDir(), 'admin.sock'), '--task-agents', 'builder']);
      expect(token.code, token.stderr).toBe(0);
      expect(token.stdout.trim().split('\n')).toHaveLength(1);
      await startAgent(name, host, token.stdout.trim());
    }
  }, 120_000);

  afterAll(async () => {
    for (const c of [...children, ...agents.values()]) c.kill('SIGKILL');
    if (server) await stopServer();
    admin?.close();
    set?.close();
  });

  it('gives a workload on each host only its own identities, from its local agent', async () => {
    for (const name of ['a', 'b']) {
      const ids = await waitFor(`identities on ${name}`, async () => {
        const r = await fetchIds(agentSocket(name));
        return Array.isArray(r) && r.length === 2 ? r : undefined;
      });
      expect(ids.sort()).toEqual([`spiffe://${TD}/everywhere`, `spiffe://${TD}/on-${name}`]);
    }
    // The server's own socket serves only the entry without a node.
    expect(await fetchIds(join(serverDir(), 'workload.sock'))).toEqual([`spiffe://${TD}/everywhere`]);
  });

  it('serves an SVID that verifies with the server\'s bundle (openssl verify)', async () => {
    const w = watch(hostA, agentSocket('a'));
    const first = await w.next((l) => Array.isArray(l.ids));
    w.child.kill();
    const chain = join(root, 'a-chain.pem');
    writeFileSync(chain, first.chainPem);
    const v = spawnSync('openssl', ['verify', '-CAfile', bundleFile(), '-untrusted', chain, chain], { encoding: 'utf8' });
    expect(v.stdout + v.stderr).toContain(': OK');
  });

  it('binds a task on host A only, and a central revocation drops it there', async () => {
    const w = watch(hostA, agentSocket('a'));
    await w.next((l) => Array.isArray(l.ids));
    const pid = w.child.pid!;
    await admin.call('StartTask', { agent: 'builder', id: 'remote-1', pid, start_time: startTimeOf(pid), node: 'a' });
    const taskId = `spiffe://${TD}/agent/builder/task/remote-1`;
    await w.next((l) => l.ids?.includes(taskId));
    // Host B's agent never holds it (the same PID seen through B's socket matches nothing).
    const onB = await fetchIds(agentSocket('b'));
    expect(onB).not.toContain(taskId);
    const started = Date.now();
    await admin.call('RevokeTask', { agent: 'builder', id: 'remote-1', reason: 'e2e' });
    await w.next((l) => l.error !== undefined || (Array.isArray(l.ids) && !l.ids.includes(taskId)), 10_000);
    // Reported, not asserted (timing belongs to the benchmark): the issue asks for a second p99.
    console.log(`revoked task dropped on host A ${Date.now() - started} ms after RevokeTask was sent`);
    w.child.kill();
  });

  it('runs `agentid run` on host A against the local agent: the command holds its task identity', async () => {
    const run = cli(hostA, ['run', '--admin-socket', join(agentDir('a'), 'admin.sock'), '--socket', agentSocket('a'), '--agent', 'builder', '--task', 'run-1', '--',
      process.execPath, '--import', 'tsx', FETCH_CLIENT, agentSocket('a'), 'once']);
    let stdout = '';
    let stderr = '';
    run.stdout!.on('data', (d) => (stdout += d));
    run.stderr!.on('data', (d) => (stderr += d));
    const code = await new Promise<number | null>((r) => run.once('exit', r));
    expect(code, stderr).toBe(0);
    expect(JSON.parse(stdout.trim().split('\n').pop()!).ids).toEqual([`spiffe://${TD}/agent/builder/task/run-1`]);
    const task = await admin.call('GetTask', { agent: 'builder', id: 'run-1' });
    expect(task.state).toBe('ended');
  });

  it('keeps serving held SVIDs with the server stopped, refuses new tasks, reports not ready, and catches up when it returns', async () => {
    expect(readiness(hostA)).toBe('200');
    await stopServer();
    const ids = await fetchIds(agentSocket('a'));
    expect(Array.isArray(ids) && ids.sort()).toEqual([`spiffe://${TD}/everywhere`, `spiffe://${TD}/on-a`]);
    // The same start that works with the server up (see `agentid run` above) is refused while it is down.
    const start = await runCli(['task', 'start', '--admin-socket', join(agentDir('a'), 'admin.sock'), '--agent', 'builder', '--task', 'while-down', '--pid', String(process.pid)]);
    expect(start.code).not.toBe(0);
    expect(start.stderr).toMatch(/unavailable|unreachable|not connected/i);
    await waitFor('agent A to report not ready', () => (readiness(hostA) === '503' ? true : undefined));
    await startServer();
    await waitFor('agent A to report ready again', () => (readiness(hostA) === '200' ? true : undefined), 60_000);
    // The agent reconnects on its own (jittered backoff) and serves what changed meanwhile.
    await admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${TD}/after-outage`, selectors: ['unix:uid:0'], node: 'a' } });
    await waitFor('the new entry on host A', async () => {
      const r = await fetchIds(agentSocket('a'));
      return Array.isArray(r) && r.includes(`spiffe://${TD}/after-outage`) ? r : undefined;
    }, 60_000);
  });

  it.skipIf(!hasPythonGrpc)('passes the Python gRPC (C-core) client against an agent socket as against the server', async () => {
    const stubs = join(root, 'stubs');
    mkdirSync(stubs);
    const gen = spawnSync(PYTHON, ['-m', 'grpc_tools.protoc', '-I', 'proto', `--python_out=${stubs}`, `--grpc_python_out=${stubs}`, 'proto/spiffe/workload/workload.proto'], { cwd: REPO, encoding: 'utf8' });
    if (gen.status !== 0) throw new Error(`grpc_tools.protoc failed: ${gen.stderr}`);
    // The outage test above restarted the server and waited for agent A only: B may still be in
    // its reconnect backoff, and a JWT-SVID (minted by the server) is rightly UNAVAILABLE until then.
    await waitFor('agent B to report ready', () => (readiness(hostB) === '200' ? true : undefined), 60_000);
    const out = await new Promise<string>((resolve, reject) => {
      const child = hostB.spawn(PYTHON, [join(REPO, 'test', 'support', 'python_workload_client.py'), stubs, agentSocket('b'), 'https://hosts.example/api'], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout!.on('data', (d) => (stdout += d));
      child.stderr!.on('data', (d) => (stderr += d));
      child.on('exit', (code) => (code === 0 ? resolve(stdout) : reject(new Error(`python client failed (${code}): ${stderr}`))));
    });
    const r = JSON.parse(out);
    expect(r.no_header).toBe('INVALID_ARGUMENT');
    expect(r.jwt_no_audience).toBe('INVALID_ARGUMENT');
    expect(r.svids.map((s: { spiffe_id: string }) => s.spiffe_id).sort()).toEqual([`spiffe://${TD}/everywhere`, `spiffe://${TD}/on-b`]);
    for (const s of r.svids) expect(s).toMatchObject({ key_matches_leaf: true, leaf_is_ca: false, chain_length: 2, bundle_size: 1 });
    expect(r.crl_count).toBeGreaterThan(0);
    expect(r.every_jwk_has_kid).toBe(true);
    expect(r.validated_spiffe_id).toMatch(new RegExp(`^spiffe://${TD}/`));
  });

  it('takes everything from an evicted node', async () => {
    const w = watch(hostB, agentSocket('b'));
    await w.next((l) => Array.isArray(l.ids));
    const agentB = agents.get('b')!;
    await admin.call('EvictNode', { name: 'b', reason: 'e2e' });
    await w.next((l) => l.error !== undefined, 15_000);
    const code = agentB.exitCode ?? (await new Promise<number | null>((r) => agentB.once('exit', r)));
    expect(code).not.toBe(0);
    expect(agentLogs.get('b')).toMatch(/evicted/);
    // The agent's own trail records it, and its chain is intact.
    const trail = await runCli(['audit', 'show', '--json', '--file', join(agentDir('b'), 'audit.log')]);
    expect(trail.stdout).toContain('agent.evicted');
    expect((await runCli(['audit', 'verify', join(agentDir('b'), 'audit.log')])).code).toBe(0);
    // Restarting the agent does not bring it back: its node SVID is revoked.
    const again = cli(hostB, ['agent', '--data-dir', agentDir('b'), '--server', `${serverHost.address}:${AGENT_PORT}`, '--trust-bundle', bundleFile()]);
    children.push(again);
    const againCode = await new Promise<number | null>((r) => again.once('exit', r));
    expect(againCode).not.toBe(0);
    // Host A is untouched.
    expect(await fetchIds(agentSocket('a'))).toContain(`spiffe://${TD}/on-a`);
  });
});
