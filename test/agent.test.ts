/*
 * `agentid agent` against a stand-in of the server's agent listener (test/support/fake-node-server.ts)
 * over real TLS: node attestation, the local Workload API, pre-fetched SVIDs, revocations pushed
 * down the Sync stream, outage, restart and eviction. Tests against the real server are in
 * test/agent-server.test.ts.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto';
import { readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { systemClock } from '../src/common/system-clock.js';
import { createLogger } from '../src/common/logger.js';
import { WorkloadApiClient } from '../src/client/workload-client.js';
import { AgentIdError } from '../src/common/errors.js';
import { loadAgentConfig } from '../src/agent/config.js';
import { startAgent, type RunningAgent } from '../src/agent/agent.js';
import { opensslVerify } from '../src/ca/testing.js';
import { FakeNodeServer } from './support/fake-node-server.js';
import { makeTempDir } from './support/server.js';
import { waitFor } from './support/wait.js';
import { readAuditEvents, verifyAuditFile } from '../src/audit/read.js';

const logger = createLogger({ level: process.env.AGENTID_TEST_LOG ?? 'silent' });
const uid = process.getuid!();

function entry(id: string, spiffeId: string, selectors = [{ type: 'unix', value: `uid:${uid}` }]) {
  return { id, spiffeId, selectors, x509TtlMs: 3600_000, jwtTtlMs: 300_000, hint: '', dnsNames: [], federatesWith: [], includeTasks: false, expiresAt: null, node: null };
}

describe('agentid agent (against a stand-in node API over TLS)', () => {
  let fake: FakeNodeServer;
  let dir: string;
  let bundleFile: string;
  const running: RunningAgent[] = [];

  beforeEach(async () => {
    fake = await FakeNodeServer.create();
    await fake.start();
    dir = makeTempDir('agentid-agent-');
    bundleFile = join(dir, 'bundle.pem');
    writeFileSync(bundleFile, fake.rootPem);
  });
  afterEach(async () => {
    for (const a of running.splice(0)) await a.stop();
    await fake.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  async function agent(flags: Record<string, string> = {}, yaml?: string) {
    let config = join(dir, 'agent.yaml');
    writeFileSync(config, yaml ?? '');
    const cfg = loadAgentConfig({ config, dataDir: join(dir, 'a'), server: fake.address, trustBundle: bundleFile, ...flags });
    const a = await startAgent(cfg, { clock: systemClock, logger, backoff: { initialMs: 100, maxMs: 500 } });
    running.push(a);
    return a;
  }

  it('attests with a join token, keeps its keys in the data directory, and serves an SVID the server minted for a key it never saw', async () => {
    fake.putEntry(entry('e1', `spiffe://${fake.trustDomain}/svc/one`));
    const a = await agent({ joinToken: fake.joinToken('n1') });
    expect(a.spiffeId).toBe(`spiffe://${fake.trustDomain}/agentid/node/n1`);
    const nodeDir = join(dir, 'a', 'node');
    expect(statSync(nodeDir).mode & 0o777).toBe(0o700);
    for (const f of readdirSync(nodeDir)) expect(statSync(join(nodeDir, f)).mode & 0o777).toBe(0o600);
    expect(statSync(a.workloadSocket).mode & 0o777).toBe(0o666);

    const client = new WorkloadApiClient({ socketPath: a.workloadSocket });
    try {
      const ctx = await client.fetchX509Context({ signal: AbortSignal.timeout(15_000) });
      expect(ctx.svids.map((s) => s.spiffeId)).toEqual([`spiffe://${fake.trustDomain}/svc/one`]);
      const svid = ctx.svids[0]!;
      // The private key was made on the agent: the server only ever got its public half.
      const spki = createPublicKey(createPrivateKey({ key: svid.keyPkcs8Der.reveal(), format: 'der', type: 'pkcs8' })).export({ format: 'der', type: 'spki' });
      expect(fake.publicKeysSeen.some((k) => k.equals(spki))).toBe(true);
      const verified = opensslVerify(dir, { roots: [fake.rootDer], intermediates: svid.chainDer.slice(1), leaf: svid.chainDer[0]!, at: Date.now() });
      expect(verified.stderr).toBe('');
      expect(verified.status).toBe(0);
      // The bundle in the response is the replicated authority's root.
      expect(ctx.svids[0]!.bundleDer.some((d) => d.equals(fake.rootDer))).toBe(true);
      const jwts = await client.fetchJwtSvids({ audience: ['aud-1'] });
      expect(jwts[0]!.spiffeId).toBe(`spiffe://${fake.trustDomain}/svc/one`);
      expect(fake.calls.filter((c) => c === 'MintJwtSvid')).toHaveLength(1);
      // Cached: a second request does not go to the server.
      await client.fetchJwtSvids({ audience: ['aud-1'] });
      expect(fake.calls.filter((c) => c === 'MintJwtSvid')).toHaveLength(1);
      // Validated with the JWT keys the server published (replicated), not a key of the agent's own.
      const validated = await client.validateJwtSvid(jwts[0]!.token, 'aud-1');
      expect(validated.spiffeId).toBe(`spiffe://${fake.trustDomain}/svc/one`);
    } finally {
      client.close();
    }
  });

  it('starts from a config file alone (the YAML form of the flags)', async () => {
    fake.putEntry(entry('e1', `spiffe://${fake.trustDomain}/svc/one`));
    const yaml = [`data_dir: ${join(dir, 'from-file')}`, `server: ${fake.address}`, `join_token: ${fake.joinToken('n2')}`, `trust_bundle: ${bundleFile}`, 'orchestrators:', '  - uid: 4242', '    agents: [coder]', 'task_buffer: 1m'].join('\n');
    writeFileSync(join(dir, 'file.yaml'), yaml);
    const cfg = loadAgentConfig({ config: join(dir, 'file.yaml') });
    expect(cfg.orchestrators).toEqual([{ uid: 4242, agents: ['coder'] }]);
    expect(cfg.taskBufferMs).toBe(60_000);
    const a = await startAgent(cfg, { clock: systemClock, logger });
    running.push(a);
    expect(a.spiffeId).toBe(`spiffe://${fake.trustDomain}/agentid/node/n2`);
    // Orchestrators other than the agent's uid need to reach the admin socket: roles decide.
    expect(statSync(a.adminSocket).mode & 0o777).toBe(0o666);
    expect(() => loadAgentConfig({ config: join(dir, 'file.yaml'), server: 'no-port' })).toThrow(/--server: "no-port" must be HOST:PORT/);
  });

  it('refuses to start without a node identity or a join token, and a used token is refused by the server', async () => {
    await expect(agent()).rejects.toThrow(/no node identity yet; attest with --join-token/);
    const token = fake.joinToken('n1');
    const a = await agent({ joinToken: token });
    await a.stop();
    rmSync(join(dir, 'a'), { recursive: true, force: true });
    await expect(agent({ joinToken: token })).rejects.toThrow(/node attestation failed: join token unknown or already used/);
  });

  it('waits out the server\'s Attest rate limit (RESOURCE_EXHAUSTED) and attests on a later try', async () => {
    fake.attestBusy = 2;
    const a = await agent({ joinToken: fake.joinToken('n-busy') });
    expect(a.spiffeId).toBe(`spiffe://${fake.trustDomain}/agentid/node/n-busy`);
    expect(fake.calls.filter((c) => c === 'Attest')).toHaveLength(3);
  });

  it('keeps its own audit trail: its run, and every Workload API refusal on this host, hash-chained', async () => {
    // No entry matches this process: the agent refuses it, and says so in its trail.
    const a = await agent({ joinToken: fake.joinToken('n1') });
    const client = new WorkloadApiClient({ socketPath: a.workloadSocket });
    try {
      await expect(client.fetchX509Context({ signal: AbortSignal.timeout(15_000) })).rejects.toMatchObject({ code: 'permission_denied' });
    } finally {
      client.close();
    }
    await a.stop();
    const file = join(dir, 'a', 'audit.log');
    expect(verifyAuditFile(file).ok).toBe(true);
    const records = readAuditEvents(file);
    expect(records.map((r) => r.type)).toEqual(['agent.started', 'attestation.refused', 'agent.stopped']);
    expect(records[1]).toMatchObject({ uid, server: 'node/n1' });
    expect((records[1] as { reason: string }).reason).toMatch(/^FetchX509SVID: no identity/);
  });

  it('serves /metrics with --metrics-listen: its Workload API figures and whether the link to the server is up', async () => {
    fake.putEntry(entry('e1', `spiffe://${fake.trustDomain}/svc/one`));
    const a = await agent({ joinToken: fake.joinToken('n1'), metricsListen: '127.0.0.1:0' });
    const scrape = async () => (await fetch(new URL('/metrics', a.metricsUrl!))).text();
    await waitFor(async () => /^agentid_agent_server_connected 1$/m.test(await scrape()), 10_000, 'the link gauge at 1');

    const client = new WorkloadApiClient({ socketPath: a.workloadSocket });
    const ac = new AbortController();
    const watching = client.watchX509Context(() => undefined, () => undefined, ac.signal).catch(() => undefined);
    try {
      const open = await waitFor(async () => {
        const text = await scrape();
        return /^agentid_streams_open 1$/m.test(text) && text;
      }, 10_000, 'one open stream in the metrics');
      expect(open).toMatch(/^agentid_fetch_seconds_count\{method="FetchX509SVID"\} 1$/m);
      expect(open).toMatch(/^agentid_process_cpu_seconds_total /m);
    } finally {
      ac.abort();
      await watching;
      client.close();
    }

    // The server goes away: the agent keeps serving and says it is cut off.
    await fake.stop();
    await waitFor(async () => /^agentid_agent_server_connected 0$/m.test(await scrape()), 10_000, 'the link gauge at 0');
  });

  it('drops a revoked identity from open streams as soon as the revocation arrives on the Sync stream', async () => {
    fake.putEntry(entry('e1', `spiffe://${fake.trustDomain}/svc/one`));
    fake.putEntry(entry('e2', `spiffe://${fake.trustDomain}/svc/two`));
    const a = await agent({ joinToken: fake.joinToken('n1') });
    const client = new WorkloadApiClient({ socketPath: a.workloadSocket });
    const seen: string[][] = [];
    const ac = new AbortController();
    const watching = client.watchX509Context((ctx) => seen.push(ctx.svids.map((s) => s.spiffeId).sort()), () => undefined, ac.signal);
    try {
      await waitFor(() => seen.at(-1)?.length === 2, 15_000, 'both SVIDs');
      fake.revoke(`spiffe://${fake.trustDomain}/svc/two`);
      await waitFor(() => seen.at(-1)?.length === 1, 5_000, 'the revoked SVID to go');
      expect(seen.at(-1)).toEqual([`spiffe://${fake.trustDomain}/svc/one`]);
      // The last identity revoked: the stream ends with permission denied.
      fake.revoke(`spiffe://${fake.trustDomain}/svc/one`);
      const err = await watching.then(() => undefined, (e: AgentIdError) => e);
      expect(err?.code).toBe('permission_denied');
    } finally {
      ac.abort();
      client.close();
    }
  });

  it('pushes a new entry to an open stream once its SVID arrives', async () => {
    fake.putEntry(entry('e1', `spiffe://${fake.trustDomain}/svc/one`));
    const a = await agent({ joinToken: fake.joinToken('n1') });
    const client = new WorkloadApiClient({ socketPath: a.workloadSocket });
    const seen: string[][] = [];
    const ac = new AbortController();
    void client.watchX509Context((ctx) => seen.push(ctx.svids.map((s) => s.spiffeId).sort()), () => undefined, ac.signal).catch(() => undefined);
    try {
      await waitFor(() => seen.length === 1, 15_000, 'the first SVID');
      fake.putEntry(entry('e2', `spiffe://${fake.trustDomain}/svc/two`));
      await waitFor(() => seen.at(-1)?.length === 2, 5_000, 'the new SVID');
    } finally {
      ac.abort();
      client.close();
    }
  });

  it('renews its node SVID at half-life with a fresh key, saved in the data directory, and keeps syncing', async () => {
    await fake.stop();
    fake = await FakeNodeServer.create({ nodeSvidTtlMs: 4000 });
    await fake.start();
    writeFileSync(bundleFile, fake.rootPem);
    fake.putEntry(entry('e1', `spiffe://${fake.trustDomain}/svc/one`));
    const a = await agent({ joinToken: fake.joinToken('n1') });
    const keyFile = join(dir, 'a', 'node', 'node-key.der');
    const firstKey = readFileSync(keyFile);
    await waitFor(() => fake.calls.includes('RenewNodeSvid') && !readFileSync(keyFile).equals(firstKey), 15_000, 'a node SVID renewal');
    // Still connected with the renewed SVID: a new entry reaches the agent's socket.
    await waitFor(() => fake.calls.filter((c) => c === 'Sync').length >= 2 && a.connected(), 10_000, 'a new Sync stream');
    fake.putEntry(entry('e2', `spiffe://${fake.trustDomain}/svc/two`));
    const client = new WorkloadApiClient({ socketPath: a.workloadSocket });
    try {
      await waitFor(async () => (await client.fetchX509Context({ signal: AbortSignal.timeout(5000) })).svids.length === 2, 10_000, 'the new entry');
    } finally {
      client.close();
    }
  });

  it('renews X.509-SVIDs ahead of expiry and pushes the new one; with the server gone it serves the held SVID until it expires, then ends the stream', async () => {
    await fake.stop();
    fake = await FakeNodeServer.create({ svidTtlMs: 6000 });
    await fake.start();
    writeFileSync(bundleFile, fake.rootPem);
    fake.putEntry(entry('e1', `spiffe://${fake.trustDomain}/svc/one`));
    const a = await agent({ joinToken: fake.joinToken('n1') });
    const client = new WorkloadApiClient({ socketPath: a.workloadSocket });
    const serials: { serial: string; notAfter: number }[] = [];
    const ac = new AbortController();
    const ended = client.watchX509Context((ctx) => {
      const leaf = new X509Certificate(ctx.svids[0]!.chainDer[0]!);
      serials.push({ serial: leaf.serialNumber, notAfter: Date.parse(leaf.validTo) });
    }, () => undefined, ac.signal).then(() => undefined, (e: AgentIdError) => e.code);
    try {
      await waitFor(() => serials.length >= 2, 15_000, 'a renewed SVID');
      // Renewed before the first expired.
      expect(serials[1]!.serial).not.toBe(serials[0]!.serial);
      await fake.stop();
      await waitFor(() => !a.connected(), 10_000, 'the agent to notice the outage');
      const held = serials.at(-1)!;
      // Served from what the agent holds, until it expires; then the stream has nothing left.
      const again = await new WorkloadApiClient({ socketPath: a.workloadSocket }).fetchX509Context({ signal: AbortSignal.timeout(5000) });
      expect(new X509Certificate(again.svids[0]!.chainDer[0]!).serialNumber).toBe(held.serial);
      expect(await ended).toBe('permission_denied');
      expect(Date.now()).toBeGreaterThanOrEqual(held.notAfter);
    } finally {
      ac.abort();
      client.close();
    }
  });
});
