import type { Socket } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import type { Clock } from '../common/clock.js';
import type { Logger } from '../common/logger.js';
import type { WorkloadLimits } from '../config/types.js';
import type { PeerCredentialsLike, PeerRegistry } from './peers.js';
import type { DescriptorBudget } from './descriptors.js';
import { unreadBytes } from './unread.js';
import { MalformedRequest } from './strict-input.js';
import { TokenBucket } from '../common/token-bucket.js';

const ignore = (): void => undefined;

/*
 * Limits of the Workload API edge. Any local user may connect, so every resource a connection
 * can hold is bounded and charged to the uid the kernel reports for it:
 *  - connections per uid and in all, and descriptors (see DescriptorBudget);
 *  - open streams per uid and in all; calls started per second per uid and in all;
 *  - request metadata and message size;
 *  - time: a connection must start a call soon after connecting, is closed after a while with
 *    no call in progress, and is pinged when quiet (a peer that stops reading is cut off).
 * The connection timers destroy the socket outright: grpc-js cannot close a session whose peer
 * sent an HTTP/2 header block over 64 KiB (it stops reading and never sees the peer leave), and a
 * graceful close waits on a peer that may never answer.
 */

export type RefusalKind = 'connections' | 'descriptors' | 'streams' | 'requests' | 'headers';

export interface LimitCounters {
  /** Refusals since start, by limit: what metrics export. Refusals are not audited one by one. */
  refused: Record<RefusalKind, number>;
  /** Connections closed by the server's timers. */
  closed: { firstRequestTimeout: number; idleTimeout: number };
  open: { connections: number; streams: number };
}

interface UidUsage {
  connections: number;
  streams: number;
  bucket: TokenBucket;
}

interface Connection {
  uid: number;
  socket: Socket;
  acceptedAt: number;
  /** Set when the connection was accepted over a limit: every call on it gets RESOURCE_EXHAUSTED. */
  refusal: string | undefined;
  calls: number;
  startedAny: boolean;
  idleSince: number;
}

/** An admitted call's connection, opaque outside the limiter. */
export type CallTicket = object;

/** Limits fixed when the server starts (gRPC server options, the descriptor budget): a SIGHUP cannot change them. */
export const RESTART_ONLY_LIMITS: readonly (keyof WorkloadLimits)[] = ['maxMessageBytes', 'keepaliveTimeMs', 'keepaliveTimeoutMs', 'descriptorReserve'];

/** Connections over a limit that may wait for that answer at once; beyond this they are dropped unanswered. */
const MAX_REFUSED_OPEN = 256;
/** Refusals are logged in aggregate, at most once per this interval. */
const REFUSAL_LOG_INTERVAL_MS = 60_000;

export interface WorkloadLimiterDeps {
  limits: WorkloadLimits;
  peers: PeerRegistry;
  descriptors: DescriptorBudget;
  clock: Clock;
  logger: Logger;
  /** Bytes a peer sent that this process has not read yet (default: the kernel's count, unread.ts). */
  unreadBytes?: (socket: Socket) => number | undefined;
}

export class WorkloadLimiter {
  private readonly byUid = new Map<number, UidUsage>();
  private readonly byTag = new Map<string, Connection>();
  private connections = 0;
  private refusedOpen = 0;
  private streams = 0;
  private bucket: TokenBucket;
  /** The limits in force; SIGHUP may replace them (updateLimits). */
  private limits: WorkloadLimits;
  private readonly counters: LimitCounters = {
    refused: { connections: 0, descriptors: 0, streams: 0, requests: 0, headers: 0 },
    closed: { firstRequestTimeout: 0, idleTimeout: 0 },
    open: { connections: 0, streams: 0 },
  };
  private refusalsLogged = 0;
  private lastRefusalLog = -Infinity;
  private maxConnectionsPerUid: number;
  /** The shared connection timer: when it wakes (Infinity: not armed) and how to stop it. */
  private sweepAt = Infinity;
  private sweepStop: AbortController | undefined;
  private closing = false;

  constructor(private readonly deps: WorkloadLimiterDeps) {
    this.limits = deps.limits;
    this.bucket = new TokenBucket(deps.limits.requestsPerSecond, deps.clock.now());
    this.maxConnectionsPerUid = this.perUidConnections(deps.limits);
  }

  private perUidConnections(limits: WorkloadLimits): number {
    const { limit, reserve } = this.deps.descriptors;
    return limits.maxConnectionsPerUid ?? Math.max(1, Math.floor(((limit - reserve) * 3) / 4));
  }

  /**
   * New caps and rates (SIGHUP). They apply to the next connection and call; nothing open is cut.
   * What the server fixed at start stays: RESTART_ONLY_LIMITS.
   */
  updateLimits(limits: WorkloadLimits): void {
    const now = this.deps.clock.now();
    if (limits.requestsPerSecond !== this.limits.requestsPerSecond) this.bucket = new TokenBucket(limits.requestsPerSecond, now);
    if (limits.requestsPerSecondPerUid !== this.limits.requestsPerSecondPerUid) {
      for (const usage of this.byUid.values()) usage.bucket = new TokenBucket(limits.requestsPerSecondPerUid, now);
    }
    this.limits = limits;
    this.maxConnectionsPerUid = this.perUidConnections(limits);
  }

  /** grpc-js server options for the Workload API server (message size and keepalive). */
  serverOptions(): grpc.ServerOptions {
    const { limits } = this;
    return {
      'grpc.max_receive_message_length': limits.maxMessageBytes,
      'grpc.keepalive_time_ms': limits.keepaliveTimeMs,
      'grpc.keepalive_timeout_ms': limits.keepaliveTimeoutMs,
      'grpc.keepalive_permit_without_calls': 1,
      // channelz (grpc-js's per-call and per-session counters and timestamps, read only by a
      // channelz service, which this server does not offer) costs every call a few closures and clock reads.
      'grpc.enable_channelz': 0,
    };
  }

  /**
   * Takes a new Workload API connection: drops it (over the descriptor limit), or registers it
   * (possibly marked as refused) and hands it to `inject`.
   */
  accept(socket: Socket, creds: PeerCredentialsLike, inject: (socket: Socket) => void): void {
    const level = this.deps.descriptors.level();
    if (level === 'drop' || (level === 'refuse' && this.refusedOpen >= MAX_REFUSED_OPEN)) {
      this.refuse('descriptors');
      socket.destroy();
      return;
    }
    this.deps.descriptors.track(socket);
    const refusal = level === 'refuse' ? this.refuseDescriptors() : this.admitConnection(creds.uid);
    if (refusal !== undefined && this.refusedOpen >= MAX_REFUSED_OPEN) {
      socket.destroy();
      return;
    }
    const now = this.deps.clock.now();
    const conn: Connection = {
      uid: creds.uid, socket, acceptedAt: now, refusal, calls: 0, startedAny: false, idleSince: now,
    };
    if (refusal !== undefined) this.refusedOpen++;
    else this.usage(creds.uid).connections++;
    const tag = this.deps.peers.register(socket, creds, () => this.closed(tag, conn));
    this.byTag.set(tag, conn);
    this.armSweep(this.deadline(conn).due);
    inject(socket);
  }

  /**
   * The one interceptor of the Workload API server: charges every call to its uid and answers
   * RESOURCE_EXHAUSTED over a limit (metadata too large included), and INVALID_ARGUMENT for a
   * request strictRequests() marked as malformed (a throwing deserializer would make grpc-js answer
   * INTERNAL, which tells the client it did nothing wrong). One layer, not one per concern: a
   * stream keeps its interceptor state for its whole life, and 10,000 open streams pay it 10,000 times.
   */
  interceptor(checkedByHandler: ReadonlySet<string> = new Set()): grpc.ServerInterceptor {
    return (method, call) => {
      // These handlers call admit/finished themselves: no interceptor layer kept per stream, none built per unary call.
      // grpc-js chains interceptors through the call interface alone, so the call itself may be handed on.
      if (checkedByHandler.has(method.path)) return call as grpc.ServerInterceptingCall;
      const conn = this.byTag.get(call.getPeer());
      // 0: not admitted (or no connection record), 1: admitted, 2: admitted and ended.
      let state = 0;
      const end = () => {
        if (state !== 1) return;
        state = 2;
        this.callEnded(conn!, method.responseStream);
      };
      return new grpc.ServerInterceptingCall(call, {
        start: (next) => {
          const refusal = conn && this.admitCall(conn, method.responseStream);
          if (refusal !== undefined) {
            // Nothing reaches the handler: without the metadata it never starts reading the request.
            next({ onReceiveMetadata: ignore, onReceiveMessage: ignore, onReceiveHalfClose: ignore });
            call.sendStatus({ code: grpc.status.RESOURCE_EXHAUSTED, details: refusal });
            return;
          }
          if (conn) state = 1;
          next({
            onReceiveMetadata: (metadata, nextMetadata) => {
              if (headerListBytes(metadata) > this.limits.maxHeaderListBytes) {
                this.refuse('headers');
                call.sendStatus({ code: grpc.status.RESOURCE_EXHAUSTED, details: `request metadata larger than ${this.limits.maxHeaderListBytes} bytes` });
                return;
              }
              nextMetadata(metadata);
            },
            onReceiveMessage: (message, nextMessage) => {
              if (message instanceof MalformedRequest) {
                call.sendStatus({ code: grpc.status.INVALID_ARGUMENT, details: `malformed request: ${message.reason}` });
                return;
              }
              nextMessage(message);
            },
            onCancel: end,
          });
        },
        sendStatus: (status, next) => {
          end();
          next(status);
        },
      });
    };
  }

  /**
   * The interceptor's checks, for a handler that runs them itself (see interceptor): the call is
   * charged to its uid, its metadata and request are checked, in the interceptor's order.
   * Admitted: a ticket to give back to finished() exactly once when the call ends.
   */
  admit(peer: string, metadata: grpc.Metadata, request: unknown, streaming: boolean): { ticket: CallTicket | undefined } | { refused: { code: grpc.status; details: string } } {
    const conn = this.byTag.get(peer);
    if (conn) {
      const refusal = this.admitCall(conn, streaming);
      if (refusal !== undefined) return { refused: { code: grpc.status.RESOURCE_EXHAUSTED, details: refusal } };
      if (headerListBytes(metadata) > this.limits.maxHeaderListBytes) {
        this.callEnded(conn, streaming);
        this.refuse('headers');
        return { refused: { code: grpc.status.RESOURCE_EXHAUSTED, details: `request metadata larger than ${this.limits.maxHeaderListBytes} bytes` } };
      }
    }
    if (request instanceof MalformedRequest) {
      if (conn) this.callEnded(conn, streaming);
      return { refused: { code: grpc.status.INVALID_ARGUMENT, details: `malformed request: ${request.reason}` } };
    }
    return { ticket: conn };
  }

  /** An admitted call ended (a stream closed, a unary call answered; `streaming` as admitted): its slot is free again. */
  finished(ticket: CallTicket | undefined, streaming: boolean): void {
    if (ticket) this.callEnded(ticket as Connection, streaming);
  }

  stats(): LimitCounters {
    return {
      refused: { ...this.counters.refused },
      closed: { ...this.counters.closed },
      open: { connections: this.connections, streams: this.streams },
    };
  }

  /** Stops the connection timer (the sockets themselves are closed by the listener). */
  close(): void {
    this.closing = true;
    this.disarmSweep();
  }

  private usage(uid: number): UidUsage {
    let u = this.byUid.get(uid);
    if (!u) {
      u = { connections: 0, streams: 0, bucket: new TokenBucket(this.limits.requestsPerSecondPerUid, this.deps.clock.now()) };
      this.byUid.set(uid, u);
    }
    return u;
  }

  private admitConnection(uid: number): string | undefined {
    const { limits } = this;
    if ((this.byUid.get(uid)?.connections ?? 0) >= this.maxConnectionsPerUid) {
      this.refuse('connections');
      return `too many Workload API connections for uid ${uid} (limit ${this.maxConnectionsPerUid})`;
    }
    if (limits.maxConnections !== null && this.connections >= limits.maxConnections) {
      this.refuse('connections');
      return `too many Workload API connections (limit ${limits.maxConnections})`;
    }
    this.connections++;
    return undefined;
  }

  private refuseDescriptors(): string {
    this.refuse('descriptors');
    return 'server is near its open-file limit; retry later';
  }

  private admitCall(conn: Connection, streaming: boolean): string | undefined {
    if (conn.refusal !== undefined) return conn.refusal;
    const { limits } = this;
    const { clock } = this.deps;
    const now = clock.now();
    const usage = this.usage(conn.uid);
    if (streaming && usage.streams >= limits.maxStreamsPerUid) {
      this.refuse('streams');
      return `too many open Workload API streams for uid ${conn.uid} (limit ${limits.maxStreamsPerUid})`;
    }
    if (streaming && this.streams >= limits.maxStreams) {
      this.refuse('streams');
      return `too many open Workload API streams (limit ${limits.maxStreams})`;
    }
    if (!usage.bucket.take(now)) {
      this.refuse('requests');
      return `too many Workload API calls per second for uid ${conn.uid} (limit ${limits.requestsPerSecondPerUid})`;
    }
    if (!this.bucket.take(now)) {
      this.refuse('requests');
      return `too many Workload API calls per second (limit ${limits.requestsPerSecond})`;
    }
    if (streaming) {
      usage.streams++;
      this.streams++;
    }
    conn.calls++;
    conn.startedAny = true;
    return undefined;
  }

  private callEnded(conn: Connection, streaming: boolean): void {
    if (streaming) {
      this.streams--;
      const u = this.byUid.get(conn.uid);
      if (u) u.streams--;
    }
    conn.calls--;
    if (conn.calls === 0) {
      conn.idleSince = this.deps.clock.now();
      this.armSweep(conn.idleSince + this.limits.idleTimeoutMs);
    }
  }

  private closed(tag: string, conn: Connection): void {
    this.byTag.delete(tag);
    if (this.byTag.size === 0) this.disarmSweep();
    if (conn.refusal !== undefined) {
      this.refusedOpen--;
      return;
    }
    this.connections--;
    const u = this.byUid.get(conn.uid);
    if (!u) return;
    u.connections--;
    // Forget a uid that holds nothing and has its full rate again: the map stays as small as the set of active uids.
    if (u.connections === 0 && u.streams === 0 && u.bucket.full(this.deps.clock.now())) this.byUid.delete(conn.uid);
  }

  /**
   * When the connection's timer is due and why; `due` is Infinity while a call is in progress
   * (nothing to time then: the idle time starts when the last call ends).
   */
  private deadline(conn: Connection): { due: number; reason: 'firstRequestTimeout' | 'idleTimeout' } {
    // A connection accepted over a limit stays this long to deliver its RESOURCE_EXHAUSTED
    // answers (a client that got one backs off and reconnects later), then closes.
    if (conn.refusal !== undefined || !conn.startedAny) return { due: conn.acceptedAt + this.limits.firstRequestTimeoutMs, reason: 'firstRequestTimeout' };
    if (conn.calls === 0) return { due: conn.idleSince + this.limits.idleTimeoutMs, reason: 'idleTimeout' };
    return { due: Infinity, reason: 'idleTimeout' };
  }

  /**
   * One timer for all connections, not one per connection (a timer, an AbortController and a
   * pending promise each, times 10,000 connections): it sleeps until the earliest deadline, then
   * closes every connection that is due (see `sweep`). Arming it earlier than it is armed replaces it.
   */
  private armSweep(due: number): void {
    if (this.closing || due === Infinity || due >= this.sweepAt) return;
    this.disarmSweep();
    const stop = new AbortController();
    this.sweepStop = stop;
    this.sweepAt = due;
    this.deps.clock.sleep(Math.max(0, due - this.deps.clock.now()), stop.signal).then(
      () => {
        if (this.sweepStop !== stop) return;
        this.sweepStop = undefined;
        this.sweepAt = Infinity;
        this.sweep();
      },
      () => undefined, // disarmed
    );
  }

  private disarmSweep(): void {
    this.sweepStop?.abort();
    this.sweepStop = undefined;
    this.sweepAt = Infinity;
  }

  /**
   * Closes the connections past their deadline and arms the timer for the next one. Each visit is
   * over every connection, so when deadlines crowd together (a connection storm) the next visit
   * is at least a twentieth of the shorter timeout later: a deadline is then met that much late
   * at worst, never early, and the cost stays one pass per interval however many connections come.
   */
  private sweep(): void {
    const now = this.deps.clock.now();
    let next = Infinity;
    for (const conn of this.byTag.values()) {
      if (conn.socket.destroyed) continue; // closed, its 'close' not handled yet
      const { due, reason } = this.deadline(conn);
      if (due > now) {
        next = Math.min(next, due);
        continue;
      }
      if (reason === 'firstRequestTimeout' && conn.refusal === undefined && this.serverIsBehind(conn)) {
        // The peer sent its request and this server has not read a byte of it yet (a reconnect
        // storm): the peer did its part. Closing it would throw away its place in the queue and
        // bring it back later as one more connection to serve; its time starts again instead.
        conn.acceptedAt = now;
        next = Math.min(next, now + this.limits.firstRequestTimeoutMs);
        continue;
      }
      if (conn.refusal === undefined) this.counters.closed[reason]++;
      // Destroying emits 'close' later, which takes the connection out of byTag.
      conn.socket.destroy();
    }
    const crowded = Math.min(this.limits.firstRequestTimeoutMs, this.limits.idleTimeoutMs) / 20;
    if (next !== Infinity) this.armSweep(this.byTag.size > 1 ? Math.max(next, now + crowded) : next);
  }

  /** Nothing read from the connection yet, while the kernel holds bytes its peer sent. */
  private serverIsBehind(conn: Connection): boolean {
    if (conn.socket.bytesRead > 0) return false;
    return ((this.deps.unreadBytes ?? unreadBytes)(conn.socket) ?? 0) > 0;
  }

  private refuse(kind: RefusalKind): void {
    this.counters.refused[kind]++;
    const now = this.deps.clock.now();
    if (now - this.lastRefusalLog >= REFUSAL_LOG_INTERVAL_MS) {
      const total = Object.values(this.counters.refused).reduce((a, b) => a + b, 0);
      this.deps.logger.warn({ refused: { ...this.counters.refused }, sinceLastLog: total - this.refusalsLogged }, 'Workload API limits refused work');
      this.refusalsLogged = total;
      this.lastRefusalLog = now;
    }
  }
}

/** Size of a header list as HTTP/2 counts it (RFC 7541 section 4.1: name + value + 32 per entry). */
function headerListBytes(metadata: grpc.Metadata): number {
  let n = 0;
  for (const [key, values] of Object.entries(metadata.toHttp2Headers())) {
    for (const v of Array.isArray(values) ? values : [values]) n += key.length + String(v).length + 32;
  }
  return n;
}
