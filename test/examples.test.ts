/**
 * The examples end to end, as real processes: examples/task-service.ts runs as its own Unix user
 * with an SVID from a registration entry; examples/agent-client.ts runs as a task through
 * `agentid run`; other callers use curl or node:https with SVIDs minted offline.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import https from 'node:https';
import { X509Certificate } from 'node:crypto';
import { dirname, join } from 'node:path';
import { asUser, ensureTestUser, type TestUser } from '../src/attest/testing.js';
import { cliArgv, REPO, runCli, spawnCli } from './support/cli.js';
import { makeTempDir, startTestServer, type TestServer } from './support/server.js';

const td = 'examples.test';
const SERVICE = join(REPO, 'examples', 'task-service.ts');
const CLIENT = join(REPO, 'examples', 'agent-client.ts');
const serviceId = `spiffe://${td}/service/tasks`;
const taskId = (task: string) => `spiffe://${td}/agent/coder/task/${task}`;
const HAS_CURL = spawnSync('which', ['curl']).status === 0;

/** A child process whose stdout and stderr are kept as lines, with a way to wait for one. */
class Proc {
  readonly out: string[] = [];
  readonly err: string[] = [];
  readonly exited: Promise<number | null>;
  private waiters = new Set<() => void>();

  constructor(readonly child: ChildProcess) {
    const lines = (target: string[]) => {
      let buf = '';
      return (d: Buffer) => {
        buf += d;
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {
          target.push(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
        }
        for (const w of [...this.waiters]) w();
      };
    };
    child.stdout!.on('data', lines(this.out));
    child.stderr!.on('data', lines(this.err));
    this.exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
  }

  /** JSON lines of stderr (the examples log with pino); non-JSON lines are skipped. */
  logs(from = 0): any[] {
    return this.err.slice(from).flatMap((l) => {
      try {
        return [JSON.parse(l)];
      } catch {
        return [];
      }
    });
  }

  waitFor<T>(find: () => T | undefined, ms: number, what: string): Promise<T> {
    return new Promise((resolve, reject) => {
      const check = () => {
        const hit = find();
        if (hit === undefined) return false;
        clearTimeout(timer);
        this.waiters.delete(check);
        resolve(hit);
        return true;
      };
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(new Error(`timed out after ${ms} ms waiting for ${what}\nstdout:\n${this.out.join('\n')}\nstderr:\n${this.err.join('\n')}`));
      }, ms);
      if (!check()) this.waiters.add(check);
    });
  }

  async stop(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGTERM');
    await this.exited;
  }
}

const shellQuote = (argv: string[]) => argv.map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');

describe('examples: task-service and agent-client', () => {
  let t: TestServer;
  let svcUser: TestUser;
  let service: Proc;
  let port: number;
  let bundlePem: Buffer;
  let otherDir: string;

  const url = () => `https://127.0.0.1:${port}/`;
  const env = () => ({ AGENTID_ADMIN_SOCKET: t.config.adminSocket, SPIFFE_ENDPOINT_SOCKET: `unix://${t.config.workloadSocket}` });
  const clientArgv = (...extra: string[]) => [process.execPath, '--import', 'tsx', CLIENT, '--url', url(), '--server-id', serviceId, ...extra];

  /** Offline mint (agentid x509 mint) into `dataDir`; returns the output directory. */
  async function mint(dataDir: string, trustDomain: string, spiffeId: string, name: string): Promise<string> {
    const out = join(t.dir, 'minted', name);
    const r = await runCli(['x509', 'mint', '--data-dir', dataDir, '--trust-domain', trustDomain, '--spiffe-id', spiffeId, '--ttl', '5m', '--out', out]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    return out;
  }

  /**
   * One mTLS GET to the service with SVID files from `dir`. The service's certificate is checked
   * against the trust bundle and must name exactly the service's SPIFFE ID.
   */
  function mtlsOptions(dir: string): https.AgentOptions {
    return {
      cert: readFileSync(join(dir, 'svid.pem')),
      key: readFileSync(join(dir, 'svid.key')),
      ca: bundlePem,
      checkServerIdentity: (_host, cert) => {
        const san = new X509Certificate(cert.raw).subjectAltName ?? '';
        return san.split(', ').includes(`URI:${serviceId}`) ? undefined : new Error(`server presented ${san}, not ${serviceId}`);
      },
    };
  }

  /** `agent` (a keep-alive agent made with mtlsOptions) lets a test reuse one connection. */
  function mtlsGet(dir: string, agent?: https.Agent): Promise<{ status: number; body: string; reused?: boolean } | { error: string }> {
    return new Promise((resolve) => {
      const req = https.get(url(), { ...(agent ? { agent } : { agent: false, ...mtlsOptions(dir) }), timeout: 5000 }, (res) => {
        let body = '';
        res.on('data', (d) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, ...(agent ? { reused: req.reusedSocket } : {}) }));
        res.on('error', (e) => resolve({ error: e.message }));
      });
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', (e) => resolve({ error: e.message }));
    });
  }

  const refusalAfter = (from: number, pred: (l: any) => boolean) => () =>
    service.logs(from).find((l) => l.level === 40 && typeof l.reason === 'string' && pred(l));

  beforeAll(async () => {
    svcUser = ensureTestUser('agentid-test-exsvc');
    t = await startTestServer({ trustDomain: td });
    // An older entry of the same Unix user comes first (svids[0]), as after the quick start: the
    // service must pick its own identity with --spiffe-id.
    await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/agent/builder`, selectors: [`unix:uid:${svcUser.uid}`] } });
    // The service's identity is its Unix user; the DNS name lets curl check the certificate as usual.
    await t.admin.call('CreateEntry', { entry: { spiffe_id: serviceId, selectors: [`unix:uid:${svcUser.uid}`], dns_names: ['localhost'] } });
    bundlePem = readFileSync(join(await mint(t.config.dataDir, td, taskId('bundle-probe'), 'bundle-probe'), 'bundle.pem'));
    otherDir = join(makeTempDir('agentid-ex-other-'), 'data');

    const argv = [process.execPath, '--import', 'tsx', SERVICE, '--agent', 'coder', '--trust-domain', td, '--socket', `unix://${t.config.workloadSocket}`, '--spiffe-id', serviceId, '--port', '0'];
    const { command, args } = asUser(svcUser, argv);
    service = new Proc(spawn(command, args, { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] }));
    const line = await service.waitFor(() => service.out.find((l) => l.startsWith('listening ')), 20_000, 'listening <port>');
    port = Number(line.split(' ')[1]);
    expect(port).toBeGreaterThan(0);
  });

  afterAll(async () => {
    await service?.stop();
    await t?.cleanup();
    if (otherDir) rmSync(dirname(otherDir), { recursive: true, force: true });
  });

  it('serves as its registration entry and answers a coder task run through agentid run', async () => {
    expect(service.logs().find((l) => l.msg === 'serving as')?.spiffe_id).toBe(serviceId);

    const run = await runCli(['run', '--agent', 'coder', '--task', 't1', '--socket', t.config.workloadSocket, '--', ...clientArgv()], { env: env() });
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    expect(run.stdout).toBe(`hello ${taskId('t1')}\n`);
    expect(service.logs().some((l) => l.msg === 'request' && l.spiffe_id === taskId('t1'))).toBe(true);
  });

  it('the same client outside any task has no identity and gives up', async () => {
    const argv = clientArgv('--socket', `unix://${t.config.workloadSocket}`, '--wait-ms', '1500');
    const client = new Proc(spawn(argv[0]!, argv.slice(1), { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] }));
    expect(await client.exited).toBe(1);
    expect(client.err.join('\n')).toMatch(/no X\.509-SVID from the Workload API within 1500 ms/);
    expect(client.out).toEqual([]);
  });

  it.skipIf(!HAS_CURL)('curl with an offline-minted coder task SVID gets its hello (skipped when curl is not installed)', async () => {
    const dir = await mint(t.config.dataDir, td, taskId('t-curl'), 't-curl');
    const curl = new Proc(spawn('curl', [
      '--silent', '--show-error', '--max-time', '10',
      '--cacert', join(dir, 'bundle.pem'), '--cert', join(dir, 'svid.pem'), '--key', join(dir, 'svid.key'),
      '--resolve', `localhost:${port}:127.0.0.1`, `https://localhost:${port}/`,
    ], { stdio: ['ignore', 'pipe', 'pipe'] }));
    expect(await curl.exited, curl.err.join('\n')).toBe(0);
    expect(curl.out).toEqual([`hello ${taskId('t-curl')}`]);
  });

  it('refuses and logs a task SVID of another agent, and an SVID that is no task', async () => {
    for (const [name, id] of [['other-agent', `spiffe://${td}/agent/other/task/x`], ['agent-itself', `spiffe://${td}/agent/coder`]] as const) {
      const dir = await mint(t.config.dataDir, td, id, name);
      const from = service.err.length;
      const res = await mtlsGet(dir);
      expect(res, name).toHaveProperty('error');
      const refusal = await service.waitFor(refusalAfter(from, (l) => l.err?.includes(id)), 3000, `refusal of ${id}`);
      expect(refusal.reason).toBe('unauthorized');
      expect(refusal.err).toMatch(/is not authorized: .* is not a task of agent coder in examples\.test/);
    }
  });

  it('refuses and logs a client that presents no certificate', async () => {
    const from = service.err.length;
    const res = await new Promise<string>((resolve) => {
      const { cert: _c, key: _k, ...serverCheck } = mtlsOptions(join(t.dir, 'minted', 'bundle-probe'));
      https.get(url(), { agent: false, ...serverCheck, timeout: 5000 }, (r) => resolve(`status ${r.statusCode}`))
        .on('error', (e) => resolve(`error ${e.message}`));
    });
    expect(res).toMatch(/^error /);
    const refusal = await service.waitFor(refusalAfter(from, () => true), 3000, 'refusal of a client without certificate');
    expect(refusal.reason).toBe('malformed');
    expect(refusal.err).toMatch(/presented no certificate/);
  });

  it('refuses and logs an SVID from a trust domain it does not federate with, even with a coder task path', async () => {
    const id = 'spiffe://other.example/agent/coder/task/x';
    const dir = await mint(otherDir, 'other.example', id, 'unfederated');
    const from = service.err.length;
    const res = await mtlsGet(dir);
    expect(res).toHaveProperty('error');
    const refusal = await service.waitFor(refusalAfter(from, () => true), 3000, 'refusal of the unfederated SVID');
    expect(refusal.reason).toBe('no_bundle');
    expect(refusal.err).toMatch(/no X\.509 bundle for trust domain other\.example/);
  });

  it('refuses a revoked task: the running client fails within seconds, and its copied SVID is refused by CRL', async () => {
    const stolen = join(t.dir, 'stolen');
    // Inside the task: first copy the task SVID to disk (what a leak would look like), then call in a loop.
    const script = `${shellQuote(cliArgv('svid', 'fetch', '--socket', t.config.workloadSocket, '--write', stolen))} >/dev/null && exec ${shellQuote(clientArgv('--loop', '--interval-ms', '200'))}`;
    const run = new Proc(spawnCli(['run', '--agent', 'coder', '--task', 't-loop', '--socket', t.config.workloadSocket, '--', '/bin/sh', '-c', script], env()));
    try {
      const results = () => run.out.flatMap((l) => (l.startsWith('{') ? [JSON.parse(l)] : []));
      await run.waitFor(() => results().find((r) => r.ok && r.body === `hello ${taskId('t-loop')}`), 20_000, 'a successful call as t-loop');
      expect(await mtlsGet(stolen)).toEqual({ status: 200, body: `hello ${taskId('t-loop')}\n` });
      // A connection opened before the revocation and kept alive across it.
      const keepAlive = new https.Agent({ ...mtlsOptions(stolen), keepAlive: true, maxSockets: 1 });
      expect(await mtlsGet(stolen, keepAlive)).toMatchObject({ status: 200, reused: false });

      const seen = results().length;
      const logFrom = service.err.length;
      await t.admin.call('RevokeTask', { agent: 'coder', id: 't-loop', reason: 'example: task SVID leaked' });

      const failed = await run.waitFor(() => results().slice(seen).find((r) => !r.ok), 3000, 'a failed call after the revocation');
      if (failed.as === taskId('t-loop')) {
        // X509Source keeps its last SVID when the stream ends with PERMISSION_DENIED, so the client
        // still presents the revoked one; the CRL the service got over the Workload API refuses it.
        const refusal = await service.waitFor(refusalAfter(logFrom, () => true), 3000, 'a refusal after the revocation');
        expect(refusal.reason).toBe('revoked');
      }

      // The kept-alive connection passed the handshake check before the revocation. The service's
      // TLS layer closes it when the new CRL arrives (verify/tls.ts re-checks open connections); if
      // a request slips in first, the per-request check answers 403. Either way it is refused.
      const keptResult = await mtlsGet(stolen, keepAlive);
      expect('error' in keptResult || (keptResult as { status?: number }).status === 403, JSON.stringify(keptResult)).toBe(true);
      const kept = await service.waitFor(refusalAfter(logFrom, (l) => l.reason === 'revoked'), 3000, 'a revoked refusal');
      expect(kept.reason).toBe('revoked');
      keepAlive.destroy();

      const stolenFrom = service.err.length;
      expect(await mtlsGet(stolen)).toHaveProperty('error');
      expect((await service.waitFor(refusalAfter(stolenFrom, () => true), 3000, 'refusal of the copied SVID')).reason).toBe('revoked');

      // Revocation is not a blip: a few more calls, all refused.
      const firstFailure = results().findIndex((r, i) => i >= seen && !r.ok);
      await run.waitFor(() => (results().length >= firstFailure + 4 ? true : undefined), 5000, 'more calls');
      expect(results().slice(firstFailure).filter((r) => r.ok)).toEqual([]);
    } finally {
      await run.stop();
    }
  });
});
