/**
 * The agent listener (agentid.node.v1) with a real server and real TLS connections: join tokens
 * (once, never expired), x509pop with a throwaway openssl CA, node SVIDs that openssl verifies,
 * Sync filtered per node, minting refused for what a node may not have, forwarded task starts,
 * and eviction (stream told and ended, every later call refused, tasks revoked).
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { X509Certificate } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readAuditEvents } from '../src/audit/index.js';
import { toPem } from '../src/verify/der.js';
import { agentKey, chainPem, NodeClient } from './support/node-client.js';
import { makeTempDir, startTestServer, type TestServer } from './support/server.js';
import { waitFor } from './support/wait.js';

const td = 'agents.example';

function openssl(args: string[], cwd: string): void {
  const r = spawnSync('openssl', args, { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
}

/** A throwaway CA and a host certificate (CN=name) it signs, as files in dir. */
function hostPki(dir: string, prefix: string, cn: string): { caPem: string; certPem: string; keyPem: string } {
  mkdirSync(dir, { recursive: true });
  openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${prefix}-ca.key`, '-out', `${prefix}-ca.pem`,
    '-subj', `/CN=${prefix} host CA`, '-days', '1', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign'], dir);
  openssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${prefix}-host.key`, '-out', `${prefix}-host.csr`, '-subj', `/CN=${cn}`], dir);
  writeFileSync(join(dir, `${prefix}-ext.cnf`), 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n');
  openssl(['x509', '-req', '-in', `${prefix}-host.csr`, '-CA', `${prefix}-ca.pem`, '-CAkey', `${prefix}-ca.key`, '-CAcreateserial', '-days', '1',
    '-extfile', `${prefix}-ext.cnf`, '-out', `${prefix}-host.pem`], dir);
  const read = (f: string) => spawnSync('cat', [join(dir, f)], { encoding: 'utf8' }).stdout;
  return { caPem: read(`${prefix}-ca.pem`), certPem: read(`${prefix}-host.pem`), keyPem: read(`${prefix}-host.key`) };
}

describe('nodes: the agent listener', () => {
  let t: TestServer;
  let port: number;
  let roots: Buffer[];
  let pkiDir: string;
  let trusted: ReturnType<typeof hostPki>;
  const clients: NodeClient[] = [];
  const client = (c?: { chainPem: string; keyPem: string }) => {
    const n = new NodeClient(port, roots, c);
    clients.push(n);
    return n;
  };

  beforeAll(async () => {
    pkiDir = makeTempDir('agentid-x509pop-');
    trusted = hostPki(pkiDir, 'trusted', 'host-x');
    t = await startTestServer({
      trustDomain: td,
      yaml: ['admin:', '  admin_uids: [0]', 'agents:', '  listen: 127.0.0.1:0', '  node_svid_ttl: 10m', '  x509pop:', `    ca_bundle: ${join(pkiDir, 'trusted-ca.pem')}`].join('\n'),
    });
    port = t.server.agentPort!;
    roots = t.server.ca.x509Bundle();
  });
  afterAll(async () => {
    for (const c of clients) c.close();
    await t?.cleanup();
  });

  const token = async (node: string, over: { ttl_seconds?: number; task_agents?: string[] } = {}) =>
    (await t.admin.call('GenerateJoinToken', { node, ttl_seconds: over.ttl_seconds ?? 600, task_agents: over.task_agents ?? [] })).token as string;

  /** Attests with a fresh join token; returns a client that presents the node SVID. */
  async function attested(node: string, taskAgents: string[] = []) {
    const key = agentKey();
    const svid = await client().call('Attest', { join_token: await token(node, { task_agents: taskAgents }), public_key: key.spki });
    return { svid, node: client({ chainPem: chainPem(svid.cert_chain), keyPem: key.keyPem }) };
  }

  const mintOne = (c: NodeClient, req: object) => c.call('MintX509Svids', { requests: [{ ...req, public_key: agentKey().spki }] }).then((r) => r.results[0]);

  it('a join token attests once and only once; the node SVID verifies with openssl and names the node', async () => {
    const key = agentKey();
    const joinToken = await token('web-1');
    const svid = await client().call('Attest', { join_token: joinToken, public_key: key.spki });
    expect(svid).toMatchObject({ node: 'web-1', spiffe_id: `spiffe://${td}/agentid/node/web-1` });
    expect(svid.trust_bundle.map((b: Buffer) => Buffer.from(b).toString('base64'))).toEqual(roots.map((r) => r.toString('base64')));
    const leaf = new X509Certificate(svid.cert_chain[0]);
    expect(leaf.subjectAltName).toBe(`URI:spiffe://${td}/agentid/node/web-1`);
    // The certificate is for the key the agent sent: the server never saw a private key.
    expect(leaf.publicKey.export({ type: 'spki', format: 'der' }).equals(key.spki)).toBe(true);
    const dir = makeTempDir('agentid-nodesvid-');
    writeFileSync(join(dir, 'root.pem'), roots.map((r) => toPem(r, 'CERTIFICATE')).join(''));
    writeFileSync(join(dir, 'chain.pem'), chainPem(svid.cert_chain.slice(1)));
    writeFileSync(join(dir, 'leaf.pem'), chainPem([svid.cert_chain[0]]));
    const verify = spawnSync('openssl', ['verify', '-x509_strict', '-CAfile', 'root.pem', '-untrusted', 'chain.pem', 'leaf.pem'], { cwd: dir, encoding: 'utf8' });
    expect(verify.stdout.trim()).toBe('leaf.pem: OK');

    const again = await client().call('Attest', { join_token: joinToken, public_key: agentKey().spki }).catch((e: grpc.ServiceError) => e);
    expect(again).toMatchObject({ code: grpc.status.PERMISSION_DENIED, details: expect.stringMatching(/already used/) });
    const unknown = await client().call('Attest', { join_token: 'A'.repeat(43), public_key: agentKey().spki }).catch((e: grpc.ServiceError) => e);
    expect(unknown).toMatchObject({ code: grpc.status.PERMISSION_DENIED });
    const events = readAuditEvents(t.config.audit.file).filter((e) => e.type.startsWith('node.attest')) as unknown as { type: string; outcome: string; reason?: string }[];
    expect(events.map((e) => [e.type, e.outcome, e.reason])).toEqual([
      ['node.attested', 'ok', undefined],
      ['node.attestation_refused', 'denied', 'join token already used'],
      ['node.attestation_refused', 'denied', 'join token not found'],
    ]);
    expect(JSON.stringify(events)).not.toContain(joinToken);
    const node = await t.admin.call('GetNode', { name: 'web-1' });
    expect(node).toMatchObject({ state: 'active', attestation: 'join_token' });
  });

  it('refuses an expired join token, and a public key that is not P-256 (without using up the token)', async () => {
    const expiring = await token('web-late', { ttl_seconds: 1 });
    await new Promise((r) => setTimeout(r, 2100));
    const late = await client().call('Attest', { join_token: expiring, public_key: agentKey().spki }).catch((e: grpc.ServiceError) => e);
    expect(late).toMatchObject({ code: grpc.status.PERMISSION_DENIED, details: expect.stringMatching(/expired/) });

    const fresh = await token('web-key');
    const bad = await client().call('Attest', { join_token: fresh, public_key: Buffer.from('not a key') }).catch((e: grpc.ServiceError) => e);
    expect(bad).toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: expect.stringMatching(/public key/) });
    expect((await client().call('Attest', { join_token: fresh, public_key: agentKey().spki })).node).toBe('web-key');
  });

  it('x509pop: a host certificate of the configured CA attests as its CN; one of another CA is refused', async () => {
    const key = agentKey();
    const host = client({ chainPem: trusted.certPem, keyPem: trusted.keyPem });
    const svid = await host.call('Attest', { public_key: key.spki });
    expect(svid).toMatchObject({ node: 'host-x', spiffe_id: `spiffe://${td}/agentid/node/host-x` });
    expect((await t.admin.call('GetNode', { name: 'host-x' })).attestation).toBe('x509pop');

    const other = hostPki(pkiDir, 'other', 'host-y');
    const stranger = client({ chainPem: other.certPem, keyPem: other.keyPem });
    const refused = await stranger.call('Attest', { public_key: agentKey().spki }).catch((e: grpc.ServiceError) => e);
    expect(refused).toMatchObject({ code: grpc.status.PERMISSION_DENIED, details: expect.stringMatching(/not signed by a trusted x509pop CA/) });
    // No certificate and no token: nothing to attest with.
    const nothing = await client().call('Attest', { public_key: agentKey().spki }).catch((e: grpc.ServiceError) => e);
    expect(nothing).toMatchObject({ code: grpc.status.PERMISSION_DENIED });
    // A host certificate is not a node SVID: it can attest, nothing else.
    const mint = await host.call('MintX509Svids', { requests: [] }).catch((e: grpc.ServiceError) => e);
    expect(mint).toMatchObject({ code: grpc.status.PERMISSION_DENIED });
  });

  it('x509pop: a node starts with no task namespaces; an admin grants and narrows them (audited), and a re-attestation keeps them', async () => {
    const viaHost = async () => {
      const key = agentKey();
      const svid = await client({ chainPem: trusted.certPem, keyPem: trusted.keyPem }).call('Attest', { public_key: key.spki });
      return client({ chainPem: chainPem(svid.cert_chain), keyPem: key.keyPem });
    };
    const start = (node: NodeClient, id: string) =>
      node.call('StartTask', { agent: 'coder', id, pid: 4194310, start_time: '99', caller_uid: 1000, ttl_seconds: 300 }).then((r) => JSON.parse(r.task), (e: grpc.ServiceError) => e);
    let node = await viaHost();
    expect(await start(node, 'pop-1')).toMatchObject({ code: grpc.status.PERMISSION_DENIED });

    const granted = await t.admin.call('SetNodeTaskAgents', { name: 'host-x', task_agents: ['coder', 'coder'], reason: 'SEC-9 approved' });
    expect(granted.task_agents).toEqual(['coder']);
    expect(await start(node, 'pop-1')).toMatchObject({ node: 'host-x', agent: 'coder' });
    node = await viaHost();
    expect((await t.admin.call('GetNode', { name: 'host-x' })).task_agents).toEqual(['coder']);
    expect(await start(node, 'pop-2')).toMatchObject({ node: 'host-x', agent: 'coder' });

    await t.admin.call('SetNodeTaskAgents', { name: 'host-x', task_agents: [] });
    expect(await start(node, 'pop-3')).toMatchObject({ code: grpc.status.PERMISSION_DENIED });
    const bad = await t.admin.call('SetNodeTaskAgents', { name: 'host-x', task_agents: ['a/b'] }).catch((e: Error) => e);
    expect(bad).toMatchObject({ code: 'invalid_argument' });
    const events = readAuditEvents(t.config.audit.file).filter((e) => e.type === 'node.task_agents_set');
    expect(events).toMatchObject([
      { node: 'host-x', task_agents: ['coder'], previous_task_agents: [], reason: 'SEC-9 approved', by: 'uid:0 (admin)', outcome: 'ok' },
      { node: 'host-x', task_agents: [], previous_task_agents: ['coder'] },
    ]);
  });

  it('every call but Attest needs a node SVID', async () => {
    for (const [method, req] of [['RenewNodeSvid', { public_key: agentKey().spki }], ['MintX509Svids', { requests: [] }], ['MintJwtSvid', { entry_id: 'x', audience: ['a'] }]] as const) {
      const err = await client().call(method, req).catch((e: grpc.ServiceError) => e);
      expect(err, method).toMatchObject({ code: grpc.status.PERMISSION_DENIED });
    }
    const sync = client().sync();
    expect((await sync.ended).code).toBe(grpc.status.PERMISSION_DENIED);
  });

  it('Sync: node A gets entries without a node and its own, tasks bound on it, and never node B\'s', async () => {
    const a = await attested('sync-a');
    const b = await attested('sync-b');
    const create = async (id: string, node: string) =>
      (await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/${id}`, selectors: ['unix:uid:1000'], node } })).id as string;
    const everywhere = await create('sync-everywhere', '');
    const forA = await create('sync-for-a', 'sync-a');
    await create('sync-for-b', 'sync-b');
    await t.admin.call('StartTask', { agent: 'coder', id: 'sync-ta', pid: 4194100, node: 'sync-a', start_time: '1' });
    await t.admin.call('StartTask', { agent: 'coder', id: 'sync-tb', pid: 4194101, node: 'sync-b', start_time: '1' });

    const stream = a.node.sync();
    await waitFor(() => stream.messages.length > 0, 10_000, 'the snapshot');
    const snap = stream.messages[0];
    expect(snap.snapshot).toBe(true);
    const ids = snap.entries.map((e: string) => JSON.parse(e).id);
    expect(ids).toEqual(expect.arrayContaining([everywhere, forA]));
    expect(snap.entries.map((e: string) => JSON.parse(e).node)).not.toContain('sync-b');
    expect(snap.tasks.map((x: string) => JSON.parse(x).id)).toEqual(['sync-ta']);
    expect(snap.authorities.length).toBeGreaterThan(0);

    // Changes: B's entry and task never reach A; A's do, and A sees its task end.
    const laterB = await create('sync-later-b', 'sync-b');
    const laterA = await create('sync-later-a', 'sync-a');
    await t.admin.call('EndTask', { agent: 'coder', id: 'sync-tb', reason: 'done' });
    await t.admin.call('RevokeTask', { agent: 'coder', id: 'sync-ta', reason: 'compromised' });
    await waitFor(() => stream.messages.some((m) => m.tasks.some((x: string) => JSON.parse(x).state === 'revoked')), 10_000, 'the revoked task');
    const later = stream.messages.slice(1);
    const seenEntries = later.flatMap((m) => m.entries.map((e: string) => JSON.parse(e).id));
    expect(seenEntries).toContain(laterA);
    expect(seenEntries).not.toContain(laterB);
    expect(later.flatMap((m) => m.tasks.map((x: string) => JSON.parse(x).id))).toEqual(['sync-ta']);
    expect(later.flatMap((m) => m.revocations.map((r: string) => JSON.parse(r).spiffeId))).toContain(`spiffe://${td}/agent/coder/task/sync-ta`);
    const revisions = stream.messages.map((m) => Number(m.revision));
    expect(revisions).toEqual([...revisions].sort((x, y) => x - y));
    // Moving A's entry to B is a deletion for A.
    const current = await t.admin.call('GetEntry', { id: forA });
    await t.admin.call('UpdateEntry', { id: forA, entry: { spiffe_id: current.spiffe_id, selectors: current.selectors, node: 'sync-b' } });
    await waitFor(() => stream.messages.some((m) => m.deleted_entries.includes(forA)), 10_000, 'the entry leaving A');
    stream.cancel();
    b.node.close();
  });

  it('mint: granted for what the node may serve, with the lifetime the server computes; refused for another node\'s entry and for revoked or foreign tasks', async () => {
    const a = await attested('mint-a');
    await attested('mint-b');
    const entry = await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/mint-a-svc`, selectors: ['unix:uid:1000'], node: 'mint-a', x509_ttl_seconds: 120, dns_names: ['svc.local'] } });
    const foreign = await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/mint-b-svc`, selectors: ['unix:uid:1000'], node: 'mint-b' } });
    await t.admin.call('StartTask', { agent: 'coder', id: 'mint-ta', pid: 4194200, node: 'mint-a', start_time: '1', ttl_seconds: 60 });
    await t.admin.call('StartTask', { agent: 'coder', id: 'mint-tb', pid: 4194201, node: 'mint-b', start_time: '1' });
    await t.admin.call('StartTask', { agent: 'coder', id: 'mint-gone', pid: 4194202, node: 'mint-a', start_time: '1' });
    await t.admin.call('RevokeTask', { agent: 'coder', id: 'mint-gone', reason: 'leaked' });

    const key = agentKey();
    const [granted, taskGranted, other, otherTask, revoked, missing] = (await a.node.call('MintX509Svids', {
      requests: [
        { entry_id: entry.id, public_key: key.spki },
        { task_agent: 'coder', task_id: 'mint-ta', public_key: agentKey().spki },
        { entry_id: foreign.id, public_key: agentKey().spki },
        { task_agent: 'coder', task_id: 'mint-tb', public_key: agentKey().spki },
        { task_agent: 'coder', task_id: 'mint-gone', public_key: agentKey().spki },
        { entry_id: 'no-such-entry', public_key: agentKey().spki },
      ],
    })).results;
    expect(granted.error_code).toBe('');
    const leaf = new X509Certificate(granted.cert_chain[0]);
    expect(leaf.subjectAltName).toContain(`URI:spiffe://${td}/mint-a-svc`);
    expect(leaf.subjectAltName).toContain('DNS:svc.local');
    expect(leaf.publicKey.export({ type: 'spki', format: 'der' }).equals(key.spki)).toBe(true);
    const lifetime = Date.parse(leaf.validTo) - Date.parse(leaf.validFrom);
    expect(lifetime).toBeLessThanOrEqual(120_000 + 60_000); // entry TTL plus the notBefore backdate
    expect(Number(granted.expires_at)).toBe(Date.parse(leaf.validTo));
    expect(taskGranted.error_code).toBe('');
    expect(new X509Certificate(taskGranted.cert_chain[0]).subjectAltName).toBe(`URI:spiffe://${td}/agent/coder/task/mint-ta`);
    expect([other.error_code, otherTask.error_code, revoked.error_code, missing.error_code]).toEqual(['not_found', 'not_found', 'not_found', 'not_found']);

    const jwt = await a.node.call('MintJwtSvid', { task_agent: 'coder', task_id: 'mint-ta', audience: ['https://svc.example'] });
    expect(jwt.token.split('.')).toHaveLength(3);
    const jwtForeign = await a.node.call('MintJwtSvid', { entry_id: foreign.id, audience: ['x'] }).catch((e: grpc.ServiceError) => e);
    expect(jwtForeign).toMatchObject({ code: grpc.status.NOT_FOUND });
    const issued = (readAuditEvents(t.config.audit.file) as unknown as { type: string; node?: string; spiffe_id: string }[]).filter((e) => e.type === 'svid.issued' && e.node === 'mint-a');
    expect(issued.map((e) => e.spiffe_id)).toEqual([`spiffe://${td}/mint-a-svc`, `spiffe://${td}/agent/coder/task/mint-ta`, `spiffe://${td}/agent/coder/task/mint-ta`]);
  });

  it('renewal rotates the node key; forwarded task starts only for granted namespaces, bound on the node', async () => {
    const a = await attested('fwd-a', ['coder']);
    const newKey = agentKey();
    const renewed = await a.node.call('RenewNodeSvid', { public_key: newKey.spki });
    expect(new X509Certificate(renewed.cert_chain[0]).publicKey.export({ type: 'spki', format: 'der' }).equals(newKey.spki)).toBe(true);

    const started = JSON.parse((await a.node.call('StartTask', { agent: 'coder', id: 'fwd-1', pid: 4194300, start_time: '99', caller_uid: 1000, ttl_seconds: 300 })).task);
    expect(started).toMatchObject({ node: 'fwd-a', agent: 'coder', createdBy: 'uid:1000 on node fwd-a (orchestrator)', binding: { kind: 'process', pid: 4194300, startTime: '99' } });
    const other = await a.node.call('StartTask', { agent: 'builder', id: 'fwd-2', pid: 4194301, start_time: '99', caller_uid: 1000 }).catch((e: grpc.ServiceError) => e);
    expect(other).toMatchObject({ code: grpc.status.PERMISSION_DENIED });
    const noStart = await a.node.call('StartTask', { agent: 'coder', id: 'fwd-3', pid: 4194302, caller_uid: 1000 }).catch((e: grpc.ServiceError) => e);
    expect(noStart).toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    const ended = JSON.parse((await a.node.call('EndTask', { agent: 'coder', id: 'fwd-1', reason: 'done', caller_uid: 1000 })).task);
    expect(ended.state).toBe('ended');
    // A task bound on the server's host (or another node) is not the node's to end.
    await t.admin.call('StartTask', { agent: 'coder', id: 'fwd-local', pid: process.pid });
    const foreign = await a.node.call('EndTask', { agent: 'coder', id: 'fwd-local', reason: 'x', caller_uid: 1000 }).catch((e: grpc.ServiceError) => e);
    expect(foreign).toMatchObject({ code: grpc.status.NOT_FOUND });
  });

  it('eviction: the Sync stream is told and ends, every later call is refused, tasks on the node are revoked', async () => {
    const a = await attested('evict-a');
    await t.admin.call('StartTask', { agent: 'coder', id: 'evict-t', pid: 4194400, node: 'evict-a', start_time: '1' });
    const entry = await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/evict-svc`, selectors: ['unix:uid:1000'], node: 'evict-a' } });
    expect((await mintOne(a.node, { entry_id: entry.id })).error_code).toBe('');
    const stream = a.node.sync();
    await waitFor(() => stream.messages.length > 0, 10_000, 'the snapshot');

    const evicted = await t.admin.call('EvictNode', { name: 'evict-a', reason: 'host compromised' });
    expect(evicted).toMatchObject({ state: 'evicted' });
    expect((await stream.ended).code).toBe(grpc.status.OK);
    expect(stream.messages.at(-1)).toMatchObject({ evicted: true });
    const refused = await a.node.call('MintX509Svids', { requests: [{ entry_id: entry.id, public_key: agentKey().spki }] }).catch((e: grpc.ServiceError) => e);
    expect(refused).toMatchObject({ code: grpc.status.PERMISSION_DENIED });
    const renew = await a.node.call('RenewNodeSvid', { public_key: agentKey().spki }).catch((e: grpc.ServiceError) => e);
    expect(renew).toMatchObject({ code: grpc.status.PERMISSION_DENIED });
    expect((await t.admin.call('GetTask', { agent: 'coder', id: 'evict-t' })).state).toBe('revoked');
    const { revocations } = await t.admin.call('ListRevocations', {});
    expect(revocations.map((r: { spiffe_id: string }) => r.spiffe_id)).toContain(`spiffe://${td}/agentid/node/evict-a`);
    // A new token for the evicted name is refused; the audit trail has the eviction.
    const again = await t.admin.call('GenerateJoinToken', { node: 'evict-a' }).catch((e: Error) => e);
    expect((again as Error).message).toMatch(/was evicted/);
    expect(readAuditEvents(t.config.audit.file).filter((e) => e.type === 'node.evicted')).toMatchObject([{ node: 'evict-a', reason: 'host compromised' }]);
  });
});
