/*
 * `agentid agent` against a real `agentid server --agent-listen`, every part a real process: the
 * server, the agent (join token from `agentid token generate`), `agentid run` through the agent's
 * admin socket, and workloads on the agent's socket. SVIDs verify with openssl against the
 * server's bundle; their private keys never reach the server; the agent serves through an
 * outage, resumes after a restart without a token, drops a task revoked centrally, and exits
 * non-zero when its node is evicted.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync, type ChildProcess } from 'node:child_process';
import { createServer } from 'node:net';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { WorkloadApiClient } from '../src/client/workload-client.js';
import { opensslVerify } from '../src/ca/testing.js';
import { REPO, runCli, spawnCli } from './support/cli.js';
import { makeTempDir } from './support/server.js';
import { waitFor } from './support/wait.js';
import { followJsonLines } from './support/json-lines.js';
import { rmSync } from 'node:fs';

const td = 'agent-it.example';

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

function filesUnder(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    const st = statSync(p);
    if (st.isDirectory()) out.push(...filesUnder(p));
    else if (st.isFile()) out.push(p);
  }
  return out;
}

function exited(child: ChildProcess): Promise<number> {
  return new Promise((resolve) => {
    if (child.exitCode !== null) return resolve(child.exitCode);
    child.once('exit', (code, signal) => resolve(code ?? (signal ? 128 : 0)));
  });
}

describe('agentid agent with a real agentid server', () => {
  let dir: string;
  let serverDir: string;
  let agentDir: string;
  let port: number;
  let healthPort: number;
  let server: ChildProcess | undefined;
  let agent: ChildProcess | undefined;
  let agentStderr = '';
  const cli = (...args: string[]) => runCli(args);

  async function startServer() {
    server = spawnCli(['server', '--config', join(dir, 'server.yaml'), '--data-dir', serverDir, '--trust-domain', td, '--agent-listen', `127.0.0.1:${port}`, '--log-level', 'warn']);
    await waitFor(async () => (await cli('node', 'list', '--data-dir', serverDir)).code === 0, 90_000, 'the server to answer');
  }
  async function stopServer() {
    server?.kill('SIGTERM');
    if (server) await exited(server);
    server = undefined;
  }
  async function startAgent(extra: string[] = []) {
    agentStderr = '';
    agent = spawnCli(['agent', '--data-dir', agentDir, '--server', `127.0.0.1:${port}`, '--health-listen', `127.0.0.1:${healthPort}`, '--log-level', 'info', ...extra]);
    agent.stderr!.on('data', (d) => (agentStderr += d));
    await waitFor(() => existsSync(join(agentDir, 'workload.sock')) && existsSync(join(agentDir, 'admin.sock')), 90_000, 'the agent sockets');
  }
  async function stopAgent() {
    agent?.kill('SIGTERM');
    if (agent) await exited(agent);
    agent = undefined;
  }
  const ready = async () => (await fetch(`http://127.0.0.1:${healthPort}/ready`)).status;
  const socket = () => join(agentDir, 'workload.sock');

  beforeAll(async () => {
    dir = makeTempDir('agentid-agent-server-');
    serverDir = join(dir, 'server');
    agentDir = join(dir, 'agent');
    port = await freePort();
    healthPort = await freePort();
    // A host CA the server trusts for x509pop, and a host certificate (CN = node name) it signs.
    const openssl = (...args: string[]) => {
      const r = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
    };
    openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'host-ca.key', '-out', 'host-ca.pem', '-subj', '/CN=host CA', '-days', '1',
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign');
    openssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', 'host.key', '-out', 'host.csr', '-subj', '/CN=host-x');
    writeFileSync(join(dir, 'host-ext.cnf'), 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n');
    openssl('x509', '-req', '-in', 'host.csr', '-CA', 'host-ca.pem', '-CAkey', 'host-ca.key', '-CAcreateserial', '-days', '1', '-extfile', 'host-ext.cnf', '-out', 'host.pem');
    writeFileSync(join(dir, 'server.yaml'), ['agents:', '  x509pop:', `    ca_bundle: ${join(dir, 'host-ca.pem')}`].join('\n'));
    await startServer();
  }, 120_000);
  afterAll(async () => {
    await stopAgent();
    await stopServer();
    rmSync(dir, { recursive: true, force: true });
  });

  it('attests with a one-time token and serves an SVID that verifies against the server bundle; its key never reaches the server', async () => {
    const token = await cli('token', 'generate', '--node', 'n1', '--task-agents', 'coder', '--data-dir', serverDir);
    expect(token.code).toBe(0);
    expect(token.stdout.trim().split('\n')).toHaveLength(1);
    const bundle = await cli('bundle', 'show', '--data-dir', serverDir);
    expect(bundle.code).toBe(0);
    writeFileSync(join(dir, 'bundle.pem'), bundle.stdout);
    const created = await cli('entry', 'create', '--data-dir', serverDir, '--spiffe-id', `spiffe://${td}/svc/web`, '--selector', `unix:uid:${process.getuid!()}`);
    expect(created.code).toBe(0);

    await startAgent(['--join-token', token.stdout.trim(), '--trust-bundle', join(dir, 'bundle.pem')]);
    await waitFor(async () => (await ready()) === 200, 90_000, 'the agent to be ready');

    const client = new WorkloadApiClient({ socketPath: socket() });
    try {
      const ctx = await client.fetchX509Context({ signal: AbortSignal.timeout(20_000) });
      expect(ctx.svids.map((s) => s.spiffeId)).toEqual([`spiffe://${td}/svc/web`]);
      const svid = ctx.svids[0]!;
      const roots = [...bundle.stdout.matchAll(/-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/g)].map((m) => Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64'));
      const verified = opensslVerify(dir, { roots, intermediates: svid.chainDer.slice(1), leaf: svid.chainDer[0]!, at: Date.now() });
      expect(verified.status, verified.stderr).toBe(0);
      // The key was generated on the agent: nothing the server wrote holds it.
      const key = svid.keyPkcs8Der.reveal();
      const needles = [key, Buffer.from(key.toString('base64')), Buffer.from(key.subarray(key.length - 65).toString('hex'))];
      for (const file of filesUnder(serverDir)) {
        const bytes = readFileSync(file);
        for (const n of needles) expect(bytes.includes(n), `${file} holds the SVID's private key`).toBe(false);
      }
      // The server recorded the mint for node n1.
      const audit = readFileSync(join(serverDir, 'audit.log'), 'utf8');
      expect(audit).toMatch(/"node":"n1"/);
    } finally {
      client.close();
    }
    // The token was used once: it cannot attest a second agent.
    const again = await cli('agent', '--data-dir', join(dir, 'other'), '--server', `127.0.0.1:${port}`, '--join-token', token.stdout.trim(), '--trust-bundle', join(dir, 'bundle.pem'));
    expect(again.code).not.toBe(0);
    expect(again.stderr).toMatch(/node attestation failed/);
  }, 240_000);

  it('attests a second host by x509pop (a host certificate the server trusts), no token', async () => {
    const other = join(dir, 'x509pop-agent');
    const child = spawnCli(['agent', '--data-dir', other, '--server', `127.0.0.1:${port}`, '--x509pop-cert', join(dir, 'host.pem'), '--x509pop-key', join(dir, 'host.key'), '--trust-bundle', join(dir, 'bundle.pem')]);
    let stderr = '';
    child.stderr!.on('data', (d) => (stderr += d));
    try {
      await waitFor(() => existsSync(join(other, 'workload.sock')) || child.exitCode !== null, 30_000, 'the x509pop agent');
      expect(child.exitCode, stderr).toBeNull();
      const nodes = await cli('node', 'list', '--json', '--data-dir', serverDir);
      expect(nodes.stdout).toMatch(/host-x/);
      const client = new WorkloadApiClient({ socketPath: join(other, 'workload.sock') });
      try {
        const ctx = await client.fetchX509Context({ signal: AbortSignal.timeout(20_000) });
        expect(ctx.svids.map((s) => s.spiffeId)).toEqual([`spiffe://${td}/svc/web`]);
      } finally {
        client.close();
      }
    } finally {
      child.kill('SIGTERM');
      await exited(child);
    }
  }, 240_000);

  it('agentid run works unchanged through the agent\'s admin socket, and a task revoked on the server drops from its stream', async () => {
    const watcher = [process.execPath, '--import', 'tsx', join(REPO, 'test', 'support', 'x509-watch.ts'), socket()];
    const run = spawnCli(['run', '--admin-socket', join(agentDir, 'admin.sock'), '--socket', socket(), '--agent', 'coder', '--task', 't1', '--', ...watcher]);
    const lines = followJsonLines(run);
    const first = await lines.next((l) => Array.isArray(l.svids), 30_000);
    expect(first.svids.map((s: { id: string }) => s.id)).toEqual([`spiffe://${td}/agent/coder/task/t1`]);
    const revoked = await cli('task', 'revoke', 't1', '--agent', 'coder', '--reason', 'test: revoked centrally', '--data-dir', serverDir);
    expect(revoked.code, revoked.stderr).toBe(0);
    const last = await lines.next((l) => l.error !== undefined, 10_000).catch((e) => { throw new Error(`${e.message}\nagent: ${agentStderr.slice(-4000)}`); });
    expect(last.error).toBe('permission_denied');
    await exited(run);
  }, 240_000);

  it('keeps serving held SVIDs while the server is down, reports not ready, refuses task starts, and reconnects', async () => {
    const client = new WorkloadApiClient({ socketPath: socket() });
    try {
      const before = await client.fetchX509Context({ signal: AbortSignal.timeout(20_000) });
      await stopServer();
      await waitFor(async () => (await ready()) === 503, 30_000, 'the agent to report not ready');
      const during = await new WorkloadApiClient({ socketPath: socket() }).fetchX509Context({ signal: AbortSignal.timeout(20_000) });
      expect(during.svids[0]!.chainDer[0]!.equals(before.svids[0]!.chainDer[0]!)).toBe(true);
      const refused = await cli('run', '--admin-socket', join(agentDir, 'admin.sock'), '--socket', socket(), '--agent', 'coder', '--task', 't2', '--', 'true');
      expect(refused.code).not.toBe(0);
      expect(refused.stderr + agentStderr.slice(-3000)).toMatch(/no connection to the agentid server/);
      await startServer();
      await waitFor(async () => (await ready()) === 200, 120_000, 'the agent to reconnect');
    } finally {
      client.close();
    }
  }, 300_000);

  it('resumes from its data directory after a restart without a join token', async () => {
    await stopAgent();
    await startAgent();
    await waitFor(async () => (await ready()) === 200, 90_000, 'the restarted agent to be ready');
    const client = new WorkloadApiClient({ socketPath: socket() });
    try {
      const ctx = await client.fetchX509Context({ signal: AbortSignal.timeout(20_000) });
      expect(ctx.svids.map((s) => s.spiffeId)).toEqual([`spiffe://${td}/svc/web`]);
    } finally {
      client.close();
    }
    expect(agentStderr).not.toMatch(/attested/);
  }, 240_000);

  it('drops everything and exits non-zero when its node is evicted', async () => {
    const client = new WorkloadApiClient({ socketPath: socket() });
    const ac = new AbortController();
    const ended = client.watchX509Context(() => undefined, () => undefined, ac.signal).then(() => undefined, (e: { code?: string }) => e.code);
    try {
      const evicted = await cli('node', 'evict', 'n1', '--data-dir', serverDir);
      expect(evicted.code, evicted.stderr).toBe(0);
      expect(await exited(agent!)).toBe(3);
      agent = undefined;
      expect(agentStderr).toMatch(/was evicted/);
      expect(await ended).toBeDefined();
      // Nothing is left to resume from.
      expect(existsSync(join(agentDir, 'node'))).toBe(false);
    } finally {
      ac.abort();
      client.close();
    }
  }, 120_000);
});


