import { X509Certificate } from 'node:crypto';
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import type { AuditEventInput } from '../audit/index.js';
import { CertificateAuthority } from '../ca/authority.js';
import { openTestCa, tempDir, toPem } from '../ca/testing.js';
import type { Actor } from '../common/actor.js';
import { ManualClock } from '../common/clock.js';
import { isAgentIdError } from '../common/errors.js';
import { silentLogger, type Logger } from '../common/logger.js';
import { loadProto } from '../common/proto.js';
import { createMemoryDatastore } from '../datastore/memory.js';
import { ReadModel } from '../state/read-model.js';
import { EntryService } from '../entries/service.js';
import { ServerSvidSource } from '../issuer/server-svid.js';
import { TrustState } from '../issuer/trust-state.js';
import { SpiffeId, TrustDomain } from '../spiffe/spiffe-id.js';
import { Revoker } from '../tasks/revocations.js';
import { TaskService } from '../tasks/service.js';
import { actorForSpiffeId, validateSpiffeRoles, type SpiffeRole } from './roles.js';
import { adminHandlers } from './service.js';
import { startAdminTcpListener, type AdminTcpListener } from './tcp.js';

const TD = TrustDomain.parse('example.org');
const SERVER_ID = 'spiffe://example.org/agentid/server';
const ADMIN_ID = 'spiffe://example.org/ops/admin';
const ORCH_ID = 'spiffe://example.org/ops/orchestrator';
const UNMAPPED_ID = 'spiffe://example.org/ops/intern';
// A workload's own per-task SVID listed as admin: a misconfiguration the listener must not honour.
const TASK_ID_CONFIGURED_AS_ADMIN = 'spiffe://example.org/agent/coder/task/t-1';

const ROLES: SpiffeRole[] = [
  { spiffeId: ADMIN_ID, role: 'admin', agents: [] },
  { spiffeId: ORCH_ID, role: 'orchestrator', agents: ['coder'] },
  { spiffeId: TASK_ID_CONFIGURED_AS_ADMIN, role: 'admin', agents: [] },
];

const SYSTEM: Actor = { role: 'admin', agents: [], spiffeId: 'agentid:system' };

describe('actorForSpiffeId', () => {
  it.each([
    ['configured admin', ADMIN_ID, { role: 'admin', spiffeId: ADMIN_ID, agents: [] }],
    ['configured orchestrator', ORCH_ID, { role: 'orchestrator', spiffeId: ORCH_ID, agents: ['coder'] }],
    ['unmapped ID', UNMAPPED_ID, undefined],
    ['path prefix of an admin ID', 'spiffe://example.org/ops', undefined],
    ['admin ID with an extra segment', `${ADMIN_ID}/x`, undefined],
    ['admin ID in another trust domain', 'spiffe://other.org/ops/admin', undefined],
    ['task identity even though configured', TASK_ID_CONFIGURED_AS_ADMIN, undefined],
    ['not a SPIFFE ID', 'https://example.org/ops/admin', undefined],
  ])('%s', (_name, id, expected) => {
    expect(actorForSpiffeId(id, ROLES)).toEqual(expected);
  });

  it('merges the agents of an orchestrator listed twice, and admin wins', () => {
    const twice: SpiffeRole[] = [
      { spiffeId: ORCH_ID, role: 'orchestrator', agents: ['a'] },
      { spiffeId: ORCH_ID, role: 'orchestrator', agents: ['b', 'a'] },
    ];
    expect(actorForSpiffeId(ORCH_ID, twice)?.agents).toEqual(['a', 'b']);
    expect(actorForSpiffeId(ORCH_ID, [...twice, { spiffeId: ORCH_ID, role: 'admin', agents: [] }])?.role).toBe('admin');
  });
});

describe('validateSpiffeRoles', () => {
  it('accepts admin and orchestrator IDs of the trust domain', () => {
    expect(() => validateSpiffeRoles(ROLES.slice(0, 2), TD)).not.toThrow();
  });

  it.each([
    ['task identity', [{ spiffeId: TASK_ID_CONFIGURED_AS_ADMIN, role: 'admin', agents: [] }], /per-task identity/],
    ['foreign trust domain', [{ spiffeId: 'spiffe://other.org/ops/admin', role: 'admin', agents: [] }], /not in trust domain example\.org/],
    ['unparseable ID', [{ spiffeId: 'spiffe://Example.org/x', role: 'admin', agents: [] }], /not a valid SPIFFE ID/],
    ['orchestrator without agents', [{ spiffeId: ORCH_ID, role: 'orchestrator', agents: [] }], /at least one agent/],
    ['duplicate ID', [{ spiffeId: ADMIN_ID, role: 'admin', agents: [] }, { spiffeId: ADMIN_ID, role: 'admin', agents: [] }], /listed twice/],
  ] as [string, SpiffeRole[], RegExp][])('refuses %s', (_name, roles, message) => {
    let err: unknown;
    try {
      validateSpiffeRoles(roles, TD);
    } catch (e) {
      err = e;
    }
    expect(isAgentIdError(err, 'invalid_argument')).toBe(true);
    expect((err as Error).message).toMatch(message);
  });
});

// ---- the listener, over real TLS ----------------------------------------------------------------

interface LogLine {
  msg: string;
  reason?: string;
  [k: string]: unknown;
}

function capturingLogger(lines: LogLine[]): Logger {
  const sink = new Writable({
    write(chunk, _enc, cb) {
      for (const l of String(chunk).split('\n').filter(Boolean)) lines.push(JSON.parse(l) as LogLine);
      cb();
    },
  });
  return pino({ level: 'debug' }, sink);
}

const dirs: { cleanup: () => void }[] = [];
let ca: CertificateAuthority;
let foreignCa: CertificateAuthority;
// Real time: the grpc-js client's OpenSSL checks the server certificate against the wall clock.
const clock = new ManualClock(Date.now());
let source: ServerSvidSource;
let crls: Buffer[] = [];
const audit: AuditEventInput[] = [];
const logs: LogLine[] = [];
let listener: AdminTcpListener;
let entryId: string;
const AdminClient = (loadProto('agentid/admin/v1/admin.proto') as any).agentid.admin.v1.AgentIdAdmin as grpc.ServiceClientConstructor;
const clients: grpc.Client[] = [];

beforeAll(async () => {
  const d1 = tempDir();
  const d2 = tempDir();
  dirs.push(d1, d2);
  ca = (await openTestCa(d1.path, { clock })).ca;
  // Same trust domain, different root: its SVIDs name the right IDs but must not verify.
  foreignCa = (await openTestCa(d2.path, { clock })).ca;

  const datastore = createMemoryDatastore();
  const sink = { append: (e: AuditEventInput) => audit.push(e) };
  const state = await ReadModel.load({ datastore, logger: silentLogger(), pollIntervalMs: 60_000 });
  const revoker = new Revoker({ datastore, issuances: datastore.issuances, state, clock, audit: sink, maxSvidTtlMs: 3_600_000 });
  const entries = new EntryService({
    datastore,
    state,
    policy: { trustDomain: TD, defaultX509TtlMs: 900_000, defaultJwtTtlMs: 300_000, maxX509TtlMs: 3_600_000, maxJwtTtlMs: 3_600_000 },
    clock,
    audit: sink,
    revoker,
  });
  const tasks = new TaskService({
    trustDomain: TD,
    datastore,
    revoker,
    state,
    processes: { inspect: async () => undefined, isAlive: async () => true, cgroupExists: async () => true, cgroupProcessOwners: async () => new Set<number>() },
    policy: { defaultTtlMs: 600_000, maxTtlMs: 3_600_000, x509TtlMs: 900_000, jwtTtlMs: 300_000 },
    clock,
    audit: sink,
  });
  entryId = (await entries.create({ spiffeId: 'spiffe://example.org/agent/builder', selectors: ['unix:uid:1000'] }, SYSTEM)).id;
  await tasks.start({ agent: 'coder', id: 't-1', cgroup: '/agents/coder/t-1' }, SYSTEM);
  await tasks.start({ agent: 'reviewer', id: 't-2', cgroup: '/agents/reviewer/t-2' }, SYSTEM);

  const trust = new TrustState({ ca, issuances: datastore.issuances, clock });
  source = new ServerSvidSource({ spiffeId: SpiffeId.parse(SERVER_ID), ttlMs: 900_000, minter: ca, trust, clock });
  listener = await startAdminTcpListener({
    listen: { host: '127.0.0.1', port: 0 },
    source,
    trustDomain: TD,
    roles: ROLES,
    handlers: (callerOf) =>
      adminHandlers({ callerOf, entries, tasks, revoker, issuanceSummary: async () => ({ liveSerials: [], count: 0 }), audit: sink, logger: silentLogger() }),
    crls: () => crls,
    clock,
    logger: capturingLogger(logs),
  });
});

afterEach(() => {
  for (const c of clients.splice(0)) c.close();
});

afterAll(async () => {
  await listener?.close();
  for (const d of dirs) d.cleanup();
});

interface ClientSvid {
  chainDer: Buffer[];
  keyDer: Buffer;
  serial: string;
  issuerId: string;
}

function mint(authority: CertificateAuthority, id: string, ttlMs = 600_000): ClientSvid {
  const m = authority.mintX509Svid({ spiffeId: SpiffeId.parse(id), ttlMs });
  return { chainDer: m.chainDer, keyDer: m.privateKeyPkcs8.reveal(), serial: m.serial, issuerId: m.issuerId };
}

/** A fresh connection (own channel, so no sharing between tests) presenting `svid`, or no certificate. */
function connect(svid: ClientSvid | undefined, seenServerCerts: string[] = []): grpc.Client & Record<string, Function> {
  const roots = Buffer.from(ca.x509Bundle().map((d) => toPem(d)).join(''));
  const creds = grpc.credentials.createSsl(
    roots,
    svid ? Buffer.from(toPem(svid.keyDer, 'PRIVATE KEY')) : null,
    svid ? Buffer.from(svid.chainDer.map((d) => toPem(d)).join('')) : null,
    {
      // The server is named by its SPIFFE ID, not by a DNS name.
      checkServerIdentity: (_host, cert) => {
        seenServerCerts.push(cert.serialNumber.toLowerCase());
        return cert.subjectaltname === `URI:${SERVER_ID}` ? undefined : new Error(`unexpected server identity ${cert.subjectaltname}`);
      },
    },
  );
  const client = new AdminClient(`127.0.0.1:${listener.port}`, creds, {
    'grpc.use_local_subchannel_pool': 1,
    // SNI takes no IP address; the name is not checked (checkServerIdentity above is).
    'grpc.ssl_target_name_override': 'agentid-server',
  }) as grpc.Client & Record<string, Function>;
  clients.push(client);
  return client;
}

function call<T = any>(client: grpc.Client & Record<string, Function>, method: string, request: object = {}): Promise<T> {
  return new Promise((resolve, reject) => {
    client[method]!(request, { deadline: Date.now() + 5_000 }, (err: grpc.ServiceError | null, res: T) => (err ? reject(err) : resolve(res)));
  });
}

async function callError(client: grpc.Client & Record<string, Function>, method: string, request: object = {}): Promise<grpc.ServiceError> {
  try {
    await call(client, method, request);
  } catch (err) {
    return err as grpc.ServiceError;
  }
  throw new Error(`${method} unexpectedly succeeded`);
}

const lastDenial = () => audit.filter((e) => e.type === 'admin.denied').at(-1) as Record<string, unknown> | undefined;
const refusalsSince = (n: number) => logs.slice(n).filter((l) => l.msg === 'admin mTLS: client refused');

describe('admin mTLS listener', () => {
  it('lets a configured admin SPIFFE ID list entries', async () => {
    const client = connect(mint(ca, ADMIN_ID));
    const res = await call(client, 'ListEntries');
    expect(res.entries.map((e: { id: string }) => e.id)).toEqual([entryId]);
    expect(await call(client, 'WhoAmI')).toMatchObject({ role: 'admin', caller: `${ADMIN_ID} (admin)` });
  });

  it('scopes an orchestrator SPIFFE ID to its agents', async () => {
    const client = connect(mint(ca, ORCH_ID));
    expect(await call(client, 'WhoAmI')).toMatchObject({ role: 'orchestrator', agents: ['coder'] });
    const listed = await call(client, 'ListTasks', {});
    expect(listed.tasks.map((t: { agent: string; id: string }) => `${t.agent}/${t.id}`)).toEqual(['coder/t-1']);
    expect((await callError(client, 'ListTasks', { agent: 'reviewer' })).code).toBe(grpc.status.PERMISSION_DENIED);
    expect((await callError(client, 'ListEntries')).code).toBe(grpc.status.PERMISSION_DENIED);
    expect(lastDenial()).toMatchObject({ who: `${ORCH_ID} (orchestrator)`, action: 'ListEntries', reason: 'admin role required' });
  });

  it('answers PERMISSION_DENIED to a valid SVID that maps to no role, and audits it', async () => {
    const client = connect(mint(ca, UNMAPPED_ID));
    const err = await callError(client, 'WhoAmI');
    expect(err.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(lastDenial()).toMatchObject({ who: UNMAPPED_ID, role: 'none', action: 'WhoAmI', reason: 'SPIFFE ID has no admin role' });
  });

  it('never lets a per-task SVID act, even when configured as admin', async () => {
    const client = connect(mint(ca, TASK_ID_CONFIGURED_AS_ADMIN));
    const err = await callError(client, 'ListEntries');
    expect(err.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(lastDenial()).toMatchObject({ who: TASK_ID_CONFIGURED_AS_ADMIN, reason: 'per-task identities never hold an admin role' });
  });

  it('refuses at the TLS layer a client SVID from another CA of the same trust domain', async () => {
    const before = logs.length;
    const denials = audit.length;
    const err = await callError(connect(mint(foreignCa, ADMIN_ID)), 'ListEntries');
    expect(err.code).toBe(grpc.status.UNAVAILABLE);
    expect(refusalsSince(before).map((l) => l.reason)).toContain('untrusted');
    // Refused before gRPC saw the connection: no handler ran, so nothing reached the audit trail.
    expect(audit.length).toBe(denials);
  });

  it('refuses at the TLS layer a client without a certificate', async () => {
    const before = logs.length;
    const err = await callError(connect(undefined), 'WhoAmI');
    expect(err.code).toBe(grpc.status.UNAVAILABLE);
    expect(refusalsSince(before).map((l) => l.reason)).toContain('malformed');
  });

  it('refuses a revoked admin serial on new connections and on an open one', async () => {
    const revoked = mint(ca, ADMIN_ID);
    const open = connect(revoked);
    expect(await call(open, 'WhoAmI')).toMatchObject({ role: 'admin' });
    const other = mint(ca, ADMIN_ID);

    crls = ca.buildCrls([{ serial: revoked.serial, issuerId: revoked.issuerId, revokedAt: clock.now() }]);
    try {
      // The open connection was verified before the revocation; its next call is checked again.
      expect((await callError(open, 'WhoAmI')).code).toBe(grpc.status.PERMISSION_DENIED);
      expect(lastDenial()).toMatchObject({ who: ADMIN_ID, reason: 'client SVID no longer verifies (revoked)' });

      const before = logs.length;
      expect((await callError(connect(revoked), 'WhoAmI')).code).toBe(grpc.status.UNAVAILABLE);
      expect(refusalsSince(before).map((l) => l.reason)).toContain('revoked');

      // Same SPIFFE ID, serial not on the CRL: still an admin.
      expect(await call(connect(other), 'WhoAmI')).toMatchObject({ role: 'admin' });
    } finally {
      crls = [];
    }
  });

  it('stops honouring an open connection once its client SVID expired', async () => {
    const client = connect(mint(ca, ADMIN_ID, 5_000));
    expect(await call(client, 'WhoAmI')).toMatchObject({ role: 'admin' });
    await clock.advance(10_000);
    expect((await callError(client, 'WhoAmI')).code).toBe(grpc.status.PERMISSION_DENIED);
    expect(lastDenial()).toMatchObject({ who: ADMIN_ID, reason: 'client SVID no longer verifies (expired)' });
  });

  it('keeps its TLS context when the source reports a trust change but serves the same SVID (every revocation does)', async () => {
    const key = source.getX509Svid().keyPkcs8Der;
    const reveal = vi.spyOn(key, 'reveal');
    try {
      source.trustChanged();
      source.trustChanged();
      expect(reveal).not.toHaveBeenCalled();
      const seen: string[] = [];
      await call(connect(mint(ca, ADMIN_ID), seen), 'WhoAmI');
      expect(seen).toEqual([new X509Certificate(source.getX509Svid().chainDer[0]!).serialNumber.toLowerCase()]);
    } finally {
      reveal.mockRestore();
    }
  });

  it('serves the renewed server SVID to new connections', async () => {
    const firstSeen: string[] = [];
    await call(connect(mint(ca, ADMIN_ID), firstSeen), 'WhoAmI');
    const before = new X509Certificate(source.getX509Svid().chainDer[0]!).serialNumber.toLowerCase();
    expect(firstSeen).toEqual([before]);

    source.renew(true);
    const after = new X509Certificate(source.getX509Svid().chainDer[0]!).serialNumber.toLowerCase();
    expect(after).not.toBe(before);
    const secondSeen: string[] = [];
    await call(connect(mint(ca, ADMIN_ID), secondSeen), 'WhoAmI');
    expect(secondSeen).toEqual([after]);
  });
});
