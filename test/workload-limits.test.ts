/**
 * Workload API limits against real clients: child processes running as other Unix users on the
 * real socket, hostile raw connections, and a server child process with a low open-file limit
 * whose descriptors are counted in /proc/<pid>/fd. Each test fails when its limit is removed
 * (an admitted call where a refusal is expected, or a connection that never closes, which ends
 * the test at its timeout). No assertion depends on how fast anything runs.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import * as grpc from '@grpc/grpc-js';
import { asUser, ensureTestUser, killAll, type TestUser } from '../src/attest/testing.js';
import { AdminClient } from '../src/cli/admin-client.js';
import { workloadService } from '../src/common/proto.js';
import { cliArgv, REPO } from './support/cli.js';
import { oversizedHeaderBytes } from './support/raw-http2.js';
import { makeTempDir, startTestServer, type TestServer } from './support/server.js';

const LIMITS_CLIENT = join(import.meta.dirname, 'support', 'limits-client.ts');
const children: ChildProcess[] = [];

type Codes = Record<string, number>;

/** Runs limits-client.ts (as `user` when given) and resolves with its first JSON line; the child may keep running. */
function limitsClient(socket: string, args: string[], user?: TestUser): Promise<Codes> {
  const argv = [process.execPath, '--import', 'tsx', LIMITS_CLIENT, socket, ...args];
  const { command, args: a } = user ? asUser(user, argv) : { command: argv[0]!, args: argv.slice(1) };
  const child = spawn(command, a, { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    child.stderr!.on('data', (d) => (err += d));
    child.stdout!.on('data', (d) => {
      out += d;
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve((JSON.parse(out.slice(0, nl)) as { codes: Codes }).codes);
    });
    child.on('exit', (code) => reject(new Error(`limits client exited (${code}) without a result: ${err}`)));
  });
}

/** Polls `cond` until it holds; a protection that is missing leaves it false and the test times out. */
async function until(cond: () => boolean | Promise<boolean>): Promise<void> {
  while (!(await cond())) await delay(20);
}

function closedByServer(socket: net.Socket): Promise<void> {
  return new Promise((resolve) => {
    socket.on('error', () => undefined);
    socket.on('data', () => undefined);
    if (socket.destroyed) resolve();
    else socket.once('close', () => resolve());
  });
}

function connectRaw(path: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(path, () => resolve(s));
    s.once('error', reject);
  });
}

afterAll(async () => killAll(children));

describe('Workload API limits (per uid, sizes, deadlines)', () => {
  let t: TestServer;
  const td = 'limits.example';
  const users: TestUser[] = [];

  beforeAll(async () => {
    for (const name of ['agentid-test-u1', 'agentid-test-u2', 'agentid-test-u3']) users.push(ensureTestUser(name));
    t = await startTestServer({
      trustDomain: td,
      yaml: [
        'limits:',
        '  first_request_timeout: 1s',
        '  idle_timeout: 2s',
        '  max_connections_per_uid: 3',
        '  max_streams_per_uid: 4',
        '  requests_per_second_per_uid: 5',
        '  max_header_list_bytes: 4096',
        '  max_message_bytes: 8192',
      ].join('\n'),
    });
    await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/root`, selectors: ['unix:uid:0'] } });
    for (const u of users) await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/${u.name}`, selectors: [`unix:uid:${u.uid}`] } });
  });
  afterAll(async () => {
    await killAll(children);
    await t?.cleanup();
  });

  it('caps connections per uid with RESOURCE_EXHAUSTED while another uid is served', async () => {
    const codes = await limitsClient(t.config.workloadSocket, ['streams', '5', '1'], users[0]);
    expect(codes).toEqual({ OK: 3, RESOURCE_EXHAUSTED: 2 });
    expect(await limitsClient(t.config.workloadSocket, ['calls', '1'])).toEqual({ OK: 1 });
    expect(t.server.workloadLimits().refused.connections).toBeGreaterThanOrEqual(2);
  });

  it('caps open streams per uid with RESOURCE_EXHAUSTED while another uid is served', async () => {
    const codes = await limitsClient(t.config.workloadSocket, ['streams', '1', '6'], users[1]);
    expect(codes).toEqual({ OK: 4, RESOURCE_EXHAUSTED: 2 });
    expect(await limitsClient(t.config.workloadSocket, ['calls', '1'])).toEqual({ OK: 1 });
    expect(t.server.workloadLimits().refused.streams).toBe(2);
  });

  it('caps the call rate per uid with RESOURCE_EXHAUSTED while another uid is served', async () => {
    const flood = limitsClient(t.config.workloadSocket, ['calls', '200'], users[2]);
    expect(await limitsClient(t.config.workloadSocket, ['calls', '1'])).toEqual({ OK: 1 });
    const codes = await flood;
    expect(codes.OK).toBeGreaterThanOrEqual(5);
    expect(codes.RESOURCE_EXHAUSTED).toBeGreaterThanOrEqual(100);
    expect((codes.OK ?? 0) + (codes.RESOURCE_EXHAUSTED ?? 0)).toBe(200);
  });

  it('refuses request metadata over max_header_list_bytes, and a request message over max_message_bytes', async () => {
    expect(await limitsClient(t.config.workloadSocket, ['metadata', '1000'])).toEqual({ OK: 1 });
    expect(await limitsClient(t.config.workloadSocket, ['metadata', '6000'])).toEqual({ RESOURCE_EXHAUSTED: 1 });
    expect(await limitsClient(t.config.workloadSocket, ['message', '4000'])).toEqual({ OK: 1 });
    expect(await limitsClient(t.config.workloadSocket, ['message', '12000'])).toEqual({ RESOURCE_EXHAUSTED: 1 });
  });

  it('refuses request metadata over max_header_list_bytes on a stream too (its handler checks it, not the interceptor)', async () => {
    const before = t.server.workloadLimits().refused.headers;
    expect(await limitsClient(t.config.workloadSocket, ['stream-metadata', '1000'])).toEqual({ OK: 1 });
    expect(await limitsClient(t.config.workloadSocket, ['stream-metadata', '6000'])).toEqual({ RESOURCE_EXHAUSTED: 1 });
    expect(t.server.workloadLimits().refused.headers).toBe(before + 1);
  });

  it('closes a connection that never sends a byte (first_request_timeout)', async () => {
    const before = t.server.workloadLimits().closed.firstRequestTimeout;
    const s = await connectRaw(t.config.workloadSocket);
    await closedByServer(s);
    expect(t.server.workloadLimits().closed.firstRequestTimeout).toBe(before + 1);
  });

  it('closes a connection with no call in progress (idle_timeout)', async () => {
    const before = t.server.workloadLimits().closed.idleTimeout;
    const Ctor = workloadService();
    const client = new Ctor(`unix://${t.config.workloadSocket}`, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 }) as any;
    const md = new grpc.Metadata();
    md.set('workload.spiffe.io', 'true');
    await new Promise<void>((resolve, reject) => client.FetchJWTSVID({ audience: ['idle'] }, md, (err: Error | null) => (err ? reject(err) : resolve())));
    const channel = client.getChannel() as grpc.Channel;
    expect(channel.getConnectivityState(false)).toBe(grpc.connectivityState.READY);
    await until(() => channel.getConnectivityState(false) !== grpc.connectivityState.READY);
    client.close();
    expect(t.server.workloadLimits().closed.idleTimeout).toBe(before + 1);
  });
});

describe('descriptors: a server child process with a low open-file limit', () => {
  const td = 'fd.example';
  let dir: string;
  let server: ChildProcess;
  let admin: AdminClient;
  let socket: string;
  const OPEN_FILES = 400;

  const serverFds = () => readdirSync(`/proc/${server.pid}/fd`).length;

  beforeAll(async () => {
    dir = makeTempDir('agentid-fd-');
    const dataDir = join(dir, 'data');
    socket = join(dataDir, 'workload.sock');
    writeFileSync(join(dir, 'agentid.yaml'), [
      `trust_domain: ${td}`, `data_dir: ${dataDir}`, 'log:', '  level: warn',
      'limits:', '  first_request_timeout: 5s', '  descriptor_reserve: 64',
    ].join('\n'));
    // prlimit execs the server in place, so server.pid is the server's own PID.
    const argv = cliArgv('server', '--config', join(dir, 'agentid.yaml'));
    server = spawn('prlimit', [`--nofile=${OPEN_FILES}:${OPEN_FILES}`, '--', ...argv], { cwd: REPO, stdio: ['ignore', 'ignore', 'inherit'] });
    children.push(server);
    await until(() => existsSync(join(dataDir, 'admin.sock')) && existsSync(socket));
    admin = new AdminClient(join(dataDir, 'admin.sock'));
    await admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/root`, selectors: ['unix:uid:0'] } });
    // Warm up whatever the first call opens once (the CA key, the audit log).
    expect(await limitsClient(socket, ['calls', '1'])).toEqual({ OK: 1 });
  });
  afterAll(async () => {
    admin?.close();
    await killAll(children);
  });

  it('holds at most 1.1 descriptors per open connection, and gives them all back', async () => {
    const idle = serverFds();
    expect(await limitsClient(socket, ['streams', '200', '1'])).toEqual({ OK: 200 });
    const held = serverFds();
    await killAll(children.filter((c) => c !== server));
    await until(() => serverFds() <= idle);
    // Against the count once they are gone, so a file the server opened meanwhile is not charged to them.
    expect((held - serverFds()) / 200).toBeLessThanOrEqual(1.1);
  });

  it('answers RESOURCE_EXHAUSTED near the open-file limit while the admin socket still answers', async () => {
    const idle = serverFds();
    const codes = await limitsClient(socket, ['streams', String(OPEN_FILES), '1']);
    expect(codes.OK).toBeGreaterThan(0);
    expect(codes.OK).toBeLessThan(OPEN_FILES - 64);
    expect(codes.RESOURCE_EXHAUSTED).toBeGreaterThan(0);
    // Never at the limit itself: the reserve is there for the admin socket and the server's files.
    expect(serverFds()).toBeLessThan(OPEN_FILES - 16);
    const { entries } = await admin.call('ListEntries', {});
    expect(entries).toHaveLength(1);
    await killAll(children.filter((c) => c !== server));
    await until(() => serverFds() <= idle);
    // And the Workload API serves again once the holder is gone.
    expect(await limitsClient(socket, ['calls', '1'])).toEqual({ OK: 1 });
  });

  it('leaks nothing when clients send one oversized HTTP/2 header block and leave', async () => {
    const idle = serverFds();
    const sockets = await Promise.all(Array.from({ length: 50 }, () => connectRaw(socket)));
    for (const s of sockets) s.end(oversizedHeaderBytes(100_000));
    await Promise.all(sockets.map(closedByServer));
    await until(() => serverFds() <= idle);
    expect(await limitsClient(socket, ['calls', '1'])).toEqual({ OK: 1 });
  });
});
