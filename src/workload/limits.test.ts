/**
 * The limiter's timers and budgets on a manual clock, with real sockets: the deadlines close the
 * connection exactly when the clock passes them, never before. Refusal paths against real
 * clients are in test/workload-limits.test.ts.
 */
import { EventEmitter, once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import net, { type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { silentLogger } from '../common/logger.js';
import { DEFAULTS } from '../config/defaults.js';
import { loadConfig } from '../config/index.js';
import { DescriptorBudget } from './descriptors.js';
import { WorkloadLimiter } from './limits.js';
import { PeerRegistry } from './peers.js';
import { unreadBytes } from './unread.js';

const limits = { ...loadConfig({ env: {}, flags: { dataDir: '/tmp/unused-agentid' } }).limits, firstRequestTimeoutMs: 10_000, idleTimeoutMs: 60_000 };

let dir: string;
let server: net.Server;
let path: string;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agentid-limits-'));
  path = join(dir, 's.sock');
  server = net.createServer();
  server.listen(path);
  await once(server, 'listening');
});
afterAll(async () => {
  server.close();
  await rm(dir, { recursive: true, force: true });
});

async function accepted(): Promise<{ client: net.Socket; socket: net.Socket }> {
  const got = once(server, 'connection') as Promise<[net.Socket]>;
  const client = net.connect(path);
  client.on('error', () => undefined);
  const [socket] = await got;
  return { client, socket };
}

describe('WorkloadLimiter server options', () => {
  it('sets the message size and keepalive limits, and turns grpc-js channelz off (no channelz service reads it)', () => {
    const limiter = new WorkloadLimiter({ limits, peers: new PeerRegistry(), descriptors: new DescriptorBudget(10_000, 64, () => 10), clock: new ManualClock(0), logger: silentLogger() });
    expect(limiter.serverOptions()).toMatchObject({
      'grpc.max_receive_message_length': limits.maxMessageBytes,
      'grpc.keepalive_time_ms': limits.keepaliveTimeMs,
      'grpc.enable_channelz': 0,
    });
  });
});

describe('WorkloadLimiter timers', () => {
  it('closes a connection that starts no call at first_request_timeout, not before', async () => {
    const clock = new ManualClock();
    const limiter = new WorkloadLimiter({ limits, peers: new PeerRegistry(), descriptors: new DescriptorBudget(10_000, 64, () => 10), clock, logger: silentLogger() });
    const { socket } = await accepted();
    limiter.accept(socket, { pid: 1, uid: 1000, gid: 1000 }, () => undefined);
    expect(limiter.stats().open.connections).toBe(1);
    await clock.advance(9_999);
    expect(socket.destroyed).toBe(false);
    await clock.advance(1);
    expect(socket.destroyed).toBe(true);
    await once(socket, 'close').catch(() => undefined);
    expect(limiter.stats()).toMatchObject({ closed: { firstRequestTimeout: 1, idleTimeout: 0 }, open: { connections: 0 } });
  });

  it('does not count a request this server has not read yet against first_request_timeout (a reconnect storm)', async () => {
    // A server that is behind has not read what the peer sent: here, a server that never reads
    // until told (pauseOnConnect), so the request waits in the kernel's buffer.
    const behind = net.createServer({ pauseOnConnect: true });
    const behindPath = join(dir, 'behind.sock');
    behind.listen(behindPath);
    await once(behind, 'listening');
    try {
      const got = once(behind, 'connection') as Promise<[net.Socket]>;
      const client = net.connect(behindPath);
      client.on('error', () => undefined);
      const [socket] = await got;
      const clock = new ManualClock();
      const limiter = new WorkloadLimiter({ limits, peers: new PeerRegistry(), descriptors: new DescriptorBudget(10_000, 64, () => 10), clock, logger: silentLogger() });
      limiter.accept(socket, { pid: 1, uid: 1000, gid: 1000 }, () => undefined);
      client.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
      while ((unreadBytes(socket) ?? 0) === 0) await new Promise((r) => setTimeout(r, 5));
      await clock.advance(10_000);
      expect(socket.destroyed).toBe(false);
      expect(limiter.stats().closed.firstRequestTimeout).toBe(0);
      // The server catches up and reads it, but no call starts: closed one timeout after the first deadline.
      socket.resume();
      while (socket.bytesRead === 0) await new Promise((r) => setTimeout(r, 5));
      await clock.advance(9_999);
      expect(socket.destroyed).toBe(false);
      await clock.advance(1);
      expect(socket.destroyed).toBe(true);
      expect(limiter.stats().closed.firstRequestTimeout).toBe(1);
      client.destroy();
    } finally {
      behind.close();
    }
  });

  it('gives the connection slot back when the peer leaves, and stops its timer', async () => {
    const clock = new ManualClock();
    const limiter = new WorkloadLimiter({ limits: { ...limits, maxConnectionsPerUid: 1 }, peers: new PeerRegistry(), descriptors: new DescriptorBudget(10_000, 64, () => 10), clock, logger: silentLogger() });
    const first = await accepted();
    limiter.accept(first.socket, { pid: 1, uid: 1000, gid: 1000 }, () => undefined);
    const closed = once(first.socket, 'close');
    first.client.destroy();
    await closed;
    expect(limiter.stats().open.connections).toBe(0);
    expect(clock.pendingSleeps()).toBe(0);
    // The slot is free again: a second connection of the same uid is admitted, not refused.
    const second = await accepted();
    limiter.accept(second.socket, { pid: 1, uid: 1000, gid: 1000 }, () => undefined);
    expect(limiter.stats()).toMatchObject({ refused: { connections: 0 }, open: { connections: 1 } });
    second.client.destroy();
  });

  it('drops connections without an answer inside the last quarter of the descriptor reserve', async () => {
    const clock = new ManualClock();
    let open = 10_000 - 64; // at the reserve: answered RESOURCE_EXHAUSTED (kept briefly)
    const descriptors = new DescriptorBudget(10_000, 64, () => open);
    const limiter = new WorkloadLimiter({ limits, peers: new PeerRegistry(), descriptors, clock, logger: silentLogger() });
    const a = await accepted();
    let injected = 0;
    limiter.accept(a.socket, { pid: 1, uid: 0, gid: 0 }, () => injected++);
    expect(injected).toBe(1);
    expect(a.socket.destroyed).toBe(false);
    open = 10_000 - 16; // in the last quarter: closed at once
    const b = await accepted();
    const fresh = new DescriptorBudget(10_000, 64, () => open);
    new WorkloadLimiter({ limits, peers: new PeerRegistry(), descriptors: fresh, clock, logger: silentLogger() }).accept(b.socket, { pid: 1, uid: 0, gid: 0 }, () => injected++);
    expect(injected).toBe(1);
    expect(b.socket.destroyed).toBe(true);
    expect(limiter.stats().refused.descriptors).toBe(1);
    a.client.destroy();
    b.client.destroy();
  });
});

describe('DescriptorBudget', () => {
  /** A stand-in for an accepted socket: the budget only listens for its close. */
  const socket = () => new EventEmitter() as unknown as Socket;

  it('re-counts /proc/self/fd in proportion to what is open far from the limit, and every 256 accepts near it', () => {
    let counts = 0;
    const far = new DescriptorBudget(1_000_000, 64, () => (counts++, 10));
    for (let i = 0; i < 10_000; i++) {
      expect(far.level()).toBe('ok');
      far.track(socket());
    }
    // A fixed interval of 256 accepts re-counted 39 times here (reading up to 10,000 entries each).
    expect(counts - 1).toBe(11);

    counts = 0;
    const near = new DescriptorBudget(12_000, 1_000, () => (counts++, 10));
    for (let i = 0; i < 8_000; i++) near.track(socket()); // within 4 reserves of the limit
    for (let i = 0; i < 1_024; i++) near.level();
    expect(counts - 1).toBe(4);
  });
});

it('DEFAULTS.limits documents every limit the loader builds', () => {
  expect(Object.keys(DEFAULTS.limits)).toHaveLength(Object.keys(limits).length);
});
