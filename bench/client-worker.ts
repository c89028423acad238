/*
 * A benchmark client process (started by bench/run.ts, driven over IPC). One process holds many
 * Workload API streams, each on its own connection, and reports when every one of them has been
 * served; it also runs unary-call loops, and plays the two roles of the revocation benchmark: the
 * holder of a task SVID that gets revoked, and a verifier (an mTLS server built on agentid/verify)
 * that must refuse it. Every message is checked after the timed part (check.ts).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createPrivateKey } from 'node:crypto';
import { rmSync } from 'node:fs';
import type net from 'node:net';
import { join } from 'node:path';
import tls from 'node:tls';
import { backoffDelay } from '../src/client/follow.js';
import { X509Source } from '../src/client/sources.js';
import type { X509Svid } from '../src/client/types.js';
import { toPem } from '../src/verify/der.js';
import { authorizeAny } from '../src/verify/authorize.js';
import { BundleSet } from '../src/verify/bundle.js';
import { isVerificationError } from '../src/verify/errors.js';
import { RevocationChecker } from '../src/verify/revocation.js';
import { serverTlsOptions } from '../src/verify/tls.js';
import { verifyX509Svid } from '../src/verify/x509.js';
import { checkJwtResponse, checkValidateResponse, checkX509Responses, decodeX509, jwtBundleOf } from './check.js';
import { connectUnix, RawConnection, Status, type CallEnd } from './grpc-raw.js';
import { serveIpc } from './ipc.js';

const EMPTY = new Uint8Array(0);
/**
 * Reconnect policy of every benchmark client: the ceiling doubles from 100 ms to 1 s and the delay
 * is drawn from [ceiling/2, ceiling) (the client library's jittered backoff, with a short ceiling so
 * the storm's measured time is the server's, not the clients' sleep).
 */
const BACKOFF = { initialMs: 100, maxMs: 1000 };

/**
 * Small processes (bench/holders.py) that each hold one task identity: holder i connects to the
 * Workload API itself, so the server attests the connection as holder i, and the connected
 * socket is passed to this process, which runs gRPC over it.
 */
class Holders {
  private nextTag = 1;
  private readonly waiting = new Map<number, { resolve: (s: net.Socket) => void; reject: (e: Error) => void }>();

  private constructor(
    readonly proc: ChildProcess,
    readonly pids: number[],
  ) {
    proc.on('message', (m: { tag?: number; failed?: number; error?: string }, handle?: net.Socket) => {
      const tag = m.tag ?? m.failed;
      const w = tag === undefined ? undefined : this.waiting.get(tag);
      if (!w) return;
      this.waiting.delete(tag!);
      if (handle) w.resolve(handle);
      else w.reject(Object.assign(new Error(`holder connect: ${m.error ?? 'no socket'}`), { code: m.error }));
    });
    proc.once('exit', () => {
      for (const w of this.waiting.values()) w.reject(new Error('holders process exited'));
      this.waiting.clear();
    });
  }

  static async start(count: number): Promise<Holders> {
    // The script sits next to this file in bench/ (this bundle runs from bench/.build/).
    const script = join(import.meta.dirname, '..', 'holders.py');
    const proc = spawn('python3', [script, String(count)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const pids = await new Promise<number[]>((resolve, reject) => {
      proc.once('message', (m: { holders?: number[] }) => (m.holders ? resolve(m.holders) : reject(new Error('holders: unexpected first message'))));
      proc.once('exit', (code) => reject(new Error(`holders process exited at start (${code})`)));
    });
    return new Holders(proc, pids);
  }

  connect(holder: number, path: string): Promise<net.Socket> {
    const tag = this.nextTag++;
    return new Promise((resolve, reject) => {
      this.waiting.set(tag, { resolve, reject });
      this.proc.send({ connect: holder, tag, path });
    });
  }

  close(): void {
    this.proc.kill();
  }
}

let holders: Holders | undefined;

interface StreamState {
  index: number;
  conn: RawConnection | undefined;
  latest: Buffer | undefined;
  attempts: number;
  /** Waiting for a message since the last arm(). */
  armed: boolean;
  lastEnd: CallEnd | undefined;
}

class Group {
  readonly streams: StreamState[] = [];
  closed = false;
  private pendingArmed = 0;
  private onAllServed: (() => void) | undefined;
  private watch: ((message: Buffer | undefined) => void) | undefined;
  private retryTimers = new Set<NodeJS.Timeout>();

  constructor(
    readonly name: string,
    readonly socket: string,
    readonly reconnect: boolean,
    /** Connects stream number i (through an identity holder, or from this process). */
    private readonly connect: (i: number) => Promise<net.Socket>,
  ) {}

  /** Opens `count` more streams, at most `concurrency` connecting at once; resolves when each has its first message. */
  async open(count: number, concurrency: number): Promise<void> {
    const fresh: StreamState[] = [];
    for (let i = 0; i < count; i++) fresh.push({ index: this.streams.length + i, conn: undefined, latest: undefined, attempts: 0, armed: true, lastEnd: undefined });
    this.streams.push(...fresh);
    let next = 0;
    const firstMessages: Promise<void>[] = [];
    const lane = async () => {
      while (next < fresh.length) {
        const s = fresh[next++]!;
        await new Promise<void>((resolve, reject) => {
          this.start(s, resolve, reject);
        });
      }
    };
    for (let i = 0; i < Math.min(concurrency, count); i++) firstMessages.push(lane());
    await Promise.all(firstMessages);
  }

  /** Connects (retrying with backoff when the group reconnects) and starts the stream. */
  private start(s: StreamState, served?: () => void, failed?: (err: Error) => void): void {
    if (this.closed) return;
    this.connect(s.index).then(
      (socket) => {
        const conn = new RawConnection(socket);
        if (this.closed) return conn.close();
        s.conn = conn;
        let first = true;
        conn.call(
          'FetchX509SVID',
          EMPTY,
          (m) => {
            s.latest = m;
            s.attempts = 0;
            if (first) {
              first = false;
              served?.();
            }
            if (s.armed) {
              s.armed = false;
              this.servedOne();
            }
            this.watch?.(m);
          },
          (end) => {
            s.lastEnd = end;
            conn.close();
            if (s.conn === conn) s.conn = undefined;
            if (this.closed) return;
            if (end.code === Status.PERMISSION_DENIED) this.watch?.(undefined);
            if (first && !this.reconnect) return failed?.(new Error(`${this.name}: stream ended before its first message: status ${end.code} ${end.details}`));
            if (this.reconnect) this.retry(s, first ? served : undefined, failed);
          },
        );
      },
      (err: NodeJS.ErrnoException) => {
        if (this.closed) return;
        if (!this.reconnect) return failed?.(new Error(`${this.name}: connect ${this.socket}: ${err.code ?? err.message}`));
        this.retry(s, served, failed);
      },
    );
  }

  private retry(s: StreamState, served?: () => void, failed?: (err: Error) => void): void {
    const timer = setTimeout(() => {
      this.retryTimers.delete(timer);
      this.start(s, served, failed);
    }, backoffDelay(s.attempts++, BACKOFF, Math.random));
    this.retryTimers.add(timer);
  }

  private servedOne(): void {
    this.pendingArmed--;
    if (this.pendingArmed === 0 && this.onAllServed) {
      const done = this.onAllServed;
      this.onAllServed = undefined;
      done();
    }
  }

  /** From now on, calls `done` once every stream has received a message. */
  arm(done: () => void): void {
    for (const s of this.streams) s.armed = true;
    this.pendingArmed = this.streams.length;
    this.onAllServed = done;
  }

  /** Calls `onMessage` for every message (undefined: the stream was refused), until replaced. */
  setWatch(onMessage: ((message: Buffer | undefined) => void) | undefined): void {
    this.watch = onMessage;
  }

  progress(): { streams: number; waiting: number; connected: number } {
    return {
      streams: this.streams.length,
      waiting: this.streams.filter((s) => s.armed).length,
      connected: this.streams.filter((s) => s.conn && !s.conn.isClosed).length,
    };
  }

  close(): void {
    this.closed = true;
    for (const t of this.retryTimers) clearTimeout(t);
    this.retryTimers.clear();
    for (const s of this.streams) s.conn?.close();
  }
}

const groups = new Map<string, Group>();
function groupOf(name: string): Group {
  const g = groups.get(name);
  if (!g) throw new Error(`no stream group "${name}"`);
  return g;
}

/** Chains and keys of the SVIDs this process was handed, by SPIFFE ID, for the TLS handshakes. */
const heldSvids = new Map<string, X509Svid>();

let verifierSource: X509Source | undefined;
let verifierServer: tls.Server | undefined;

const ipc = serveIpc({
  /** Starts `count` identity holders; returns their pids (the orchestrator binds a task to each). */
  async holders(a: { count: number }) {
    if (holders) throw new Error('holders already started');
    holders = await Holders.start(a.count);
    return { pids: holders.pids };
  },

  /** Opens streams; with holders, stream i connects through holder i modulo their count. */
  async open(a: { group: string; socket: string; count: number; reconnect: boolean; concurrency?: number; viaHolders?: boolean }) {
    let g = groups.get(a.group);
    if (!g) {
      const h = holders;
      if (a.viaHolders && !h) throw new Error('open: start the holders first');
      const connect = a.viaHolders ? (i: number) => h!.connect(i % h!.pids.length, a.socket) : () => connectUnix(a.socket);
      g = new Group(a.group, a.socket, a.reconnect, connect);
      groups.set(a.group, g);
    }
    const start = performance.now();
    await g.open(a.count, a.concurrency ?? 64);
    return { ms: performance.now() - start, streams: g.streams.length };
  },

  /** Emits "served" {group} once every stream of the group has had a message since this call. */
  arm(a: { group: string }) {
    const g = groupOf(a.group);
    g.arm(() => ipc.emit('served', { group: a.group }));
    return g.progress();
  },

  progress(a: { group: string }) {
    return groupOf(a.group).progress();
  },

  /**
   * Checks every stream's latest message (each distinct message in full); with `expectIds`,
   * stream i must carry expectIds[i modulo their count] (the identity of the holder it connected through).
   */
  collect(a: { group: string; expectIds?: string[] }) {
    const g = groupOf(a.group);
    const latest = g.streams.map((s) => s.latest);
    const missing = latest.filter((m) => m === undefined).length;
    if (missing > 0) throw new Error(`${a.group}: ${missing} of ${latest.length} streams never received a message`);
    const result = checkX509Responses(latest as Buffer[]);
    const ids = a.expectIds;
    if (ids && ids.length > 0) {
      const carried = new Map<Buffer, string[]>();
      (latest as Buffer[]).forEach((m, i) => {
        let got = carried.get(m);
        if (!got) carried.set(m, (got = decodeX509(m).svids.map((s) => s.spiffeId)));
        const want = ids[i % ids.length]!;
        if (!got.includes(want)) throw new Error(`${a.group}: stream ${i} carries ${got.join(', ')}, expected ${want}`);
      });
    }
    return { streams: latest.length, distinct: result.distinct, spiffeIds: [...result.spiffeIds] };
  },

  /** The latest message of the group's first stream, base64 (what the server sends now, at its current size). */
  latest(a: { group: string }) {
    const m = groupOf(a.group).streams[0]?.latest;
    if (!m) throw new Error(`${a.group}: no message yet`);
    return m.toString('base64');
  },

  closeGroup(a: { group: string }) {
    groups.get(a.group)?.close();
    groups.delete(a.group);
    return {};
  },

  /** The first message of a call (stream or unary), base64: the bare server replays these bytes. */
  async capture(a: { socket: string; method: string; request: string }) {
    const conn = await RawConnection.open(a.socket);
    try {
      const message = await new Promise<Buffer>((resolve, reject) => {
        let got: Buffer | undefined;
        const stream = conn.call(
          a.method,
          Buffer.from(a.request, 'base64'),
          (m) => {
            if (got) return;
            got = m;
            resolve(m);
            stream.close();
          },
          (end) => {
            if (!got) reject(new Error(`${a.method}: status ${end.code} ${end.details}`));
          },
        );
      });
      return message.toString('base64');
    } finally {
      conn.close();
    }
  },

  /**
   * `callers` closed loops of one unary call each, every caller on its own connection, for
   * durationMs after warmupMs. Every response of the timed window is checked afterwards.
   */
  async unaryRate(a: {
    socket: string;
    method: 'FetchJWTSVID' | 'ValidateJWTSVID';
    request: string;
    callers: number;
    warmupMs: number;
    durationMs: number;
    check: { kind: 'jwt'; jwtBundles: string; trustDomain: string; audience: string } | { kind: 'validate'; spiffeId: string };
  }) {
    const request = Buffer.from(a.request, 'base64');
    const conns = await Promise.all(Array.from({ length: a.callers }, () => RawConnection.open(a.socket)));
    const responses: Buffer[] = [];
    let timing = false;
    let stop = false;
    let allCalls = 0;
    const loops = conns.map(async (conn) => {
      while (!stop) {
        const r = await conn.unary(a.method, request);
        allCalls++;
        if (timing && !stop) responses.push(r);
      }
    });
    const failed = Promise.all(loops).then(() => undefined);
    await Promise.race([sleep(a.warmupMs), failed]);
    timing = true;
    const start = performance.now();
    await Promise.race([sleep(a.durationMs), failed]);
    stop = true;
    const ms = performance.now() - start;
    await failed;
    for (const c of conns) c.close();
    // Checked after the window; identical responses (the bare server's) are checked once.
    const checked = new Set<string>();
    const now = Date.now();
    const jwt = a.check.kind === 'jwt' ? jwtBundleOf(Buffer.from(a.check.jwtBundles, 'base64'), a.check.trustDomain) : undefined;
    for (const r of responses) {
      const key = r.toString('base64');
      if (checked.has(key)) continue;
      checked.add(key);
      if (a.check.kind === 'jwt') checkJwtResponse(r, jwt!, a.check.audience, now);
      else checkValidateResponse(r, a.check.spiffeId);
    }
    return { calls: responses.length, allCalls, ms, distinct: checked.size };
  },

  /**
   * Keeps the SVIDs of the group's messages (by SPIFFE ID) for handshakes, and emits "dropped"
   * {spiffeId} at the first message without `spiffeId` (or when the stream is refused).
   */
  watchDrop(a: { group: string; spiffeId: string }) {
    const g = groupOf(a.group);
    const onMessage = (m: Buffer | undefined) => {
      const ids = m ? remember(m) : [];
      if (!ids.includes(a.spiffeId)) {
        g.setWatch((next) => void (next && remember(next)));
        ipc.emit('dropped', { spiffeId: a.spiffeId });
      }
    };
    for (const s of g.streams) if (s.latest) remember(s.latest);
    if (!heldSvids.has(a.spiffeId)) throw new Error(`${a.group}: holds no SVID for ${a.spiffeId}`);
    g.setWatch(onMessage);
    const leaf = heldSvids.get(a.spiffeId)!.chainDer;
    return { chain: leaf.map((d) => d.toString('base64')) };
  },

  /** One mTLS handshake with the held SVID `spiffeId`: was it accepted by the verifier at `path`? */
  handshake(a: { path: string; spiffeId: string }) {
    const svid = heldSvids.get(a.spiffeId);
    if (!svid) throw new Error(`no held SVID for ${a.spiffeId}`);
    const key = createPrivateKey({ key: svid.keyPkcs8Der.reveal(), format: 'der', type: 'pkcs8' }).export({ format: 'pem', type: 'pkcs8' }) as string;
    const cert = svid.chainDer.map((d) => toPem(d, 'CERTIFICATE')).join('');
    return new Promise<{ accepted: boolean; detail: string }>((resolve) => {
      // The client does not judge the server here: only the verifier's decision is measured.
      const socket = tls.connect({ path: a.path, cert, key, rejectUnauthorized: false, minVersion: 'TLSv1.2' });
      let data = '';
      socket.setEncoding('utf8');
      socket.on('data', (d: string) => (data += d));
      socket.on('error', () => undefined);
      socket.on('close', () => resolve({ accepted: data === 'ok\n', detail: data === 'ok\n' ? 'accepted' : 'closed by the verifier' }));
    });
  },

  /**
   * An mTLS server on `listenPath` built on agentid/verify and following the Workload API at
   * `socket` (X509Source): accepted peers get "ok\n"; each refusal is emitted as "refused" {reason}.
   */
  async serveVerifier(a: { socket: string; listenPath: string }) {
    verifierSource = await X509Source.create({ socketPath: a.socket, backoff: BACKOFF });
    const tlsConfig = serverTlsOptions({
      source: verifierSource,
      authorize: authorizeAny(),
      logger: { warn: (obj: object) => ipc.emit('refused', obj) } as never,
    });
    rmSync(a.listenPath, { force: true });
    verifierServer = tlsConfig.attach(tls.createServer(tlsConfig.options, (socket) => socket.end('ok\n')));
    verifierServer.on('tlsClientError', () => undefined);
    await new Promise<void>((resolve) => verifierServer!.listen(a.listenPath, resolve));
    return {};
  },

  /** Emits "refuses" once the verifier's latest CRLs refuse `chain` (base64 DER, leaf first). */
  watchRevoked(a: { chain: string[] }) {
    const source = verifierSource;
    if (!source) throw new Error('serveVerifier first');
    const chain = a.chain.map((c) => Buffer.from(c, 'base64'));
    const check = () => {
      try {
        verifyX509Svid(chain, BundleSet.fromX509Map(source.getBundles()), { now: Date.now(), crls: new RevocationChecker({ crls: source.getCrls() }) });
        return false;
      } catch (err) {
        if (isVerificationError(err) && err.reason === 'revoked') {
          source.off('update', onUpdate);
          ipc.emit('refuses', {});
          return true;
        }
        throw err;
      }
    };
    const onUpdate = () => {
      try {
        check();
      } catch (err) {
        ipc.emit('verifierError', { message: (err as Error).message });
      }
    };
    if (!check()) source.on('update', onUpdate);
    return {};
  },
});

function remember(m: Buffer): string[] {
  const ctx = decodeX509(m);
  for (const s of ctx.svids) heldSvids.set(s.spiffeId, s);
  return ctx.svids.map((s) => s.spiffeId);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

ipc.emit('ready', { pid: process.pid });
