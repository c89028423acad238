/*
 * A minimal gRPC client over node:http2, for the benchmark's client processes. It exists because
 * the benchmark needs what grpc-js clients do not offer: one connection per stream that it opens,
 * times and drops itself, thousands per process at a small cost, with the reconnect policy under
 * the benchmark's control rather than the channel's. Messages stay raw bytes; decoding and
 * checking happen after the timed part (see check.ts).
 */
import http2 from 'node:http2';
import net from 'node:net';

/** gRPC status codes the benchmark tells apart. */
export const Status = { OK: 0, CANCELLED: 1, PERMISSION_DENIED: 7, RESOURCE_EXHAUSTED: 8, UNAVAILABLE: 14 } as const;

export interface CallEnd {
  code: number;
  details: string;
}

/** Length-prefixed gRPC message framing (uncompressed). */
export function frameMessage(message: Uint8Array): Buffer {
  const out = Buffer.allocUnsafe(5 + message.length);
  out[0] = 0;
  out.writeUInt32BE(message.length, 1);
  out.set(message, 5);
  return out;
}

/** Splits a byte stream into gRPC messages; chunks may cut a message anywhere. */
export class MessageReader {
  private pending: Buffer[] = [];
  private pendingBytes = 0;

  push(chunk: Buffer): Buffer[] {
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    const out: Buffer[] = [];
    for (;;) {
      if (this.pendingBytes < 5) return out;
      const head = this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending);
      this.pending = [head];
      if (head[0] !== 0) throw new Error('compressed gRPC message: the benchmark never asks for compression');
      const length = head.readUInt32BE(1);
      if (head.length < 5 + length) return out;
      out.push(head.subarray(5, 5 + length));
      const rest = head.subarray(5 + length);
      this.pending = rest.length > 0 ? [rest] : [];
      this.pendingBytes = rest.length;
    }
  }
}

/** Connects to a Unix socket; rejects with the errno code (ENOENT, ECONNREFUSED, EAGAIN...). */
export function connectUnix(path: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ path });
    const onError = (err: Error) => {
      socket.destroy();
      reject(err);
    };
    socket.once('error', onError);
    socket.once('connect', () => {
      socket.off('error', onError);
      resolve(socket);
    });
  });
}

const WORKLOAD_HEADERS = {
  'content-type': 'application/grpc',
  te: 'trailers',
  'workload.spiffe.io': 'true',
};

/** One HTTP/2 connection to a Workload API server, carrying streams and unary calls. */
export class RawConnection {
  readonly session: http2.ClientHttp2Session;
  private closed = false;
  private readonly closeListeners = new Set<() => void>();

  constructor(socket: net.Socket) {
    this.session = http2.connect('http://localhost', { createConnection: () => socket });
    this.session.on('error', () => undefined); // reported through each call's end and 'close'
    this.session.once('close', () => {
      this.closed = true;
      for (const l of this.closeListeners) l();
    });
  }

  static async open(path: string): Promise<RawConnection> {
    return new RawConnection(await connectUnix(path));
  }

  get isClosed(): boolean {
    return this.closed || this.session.destroyed;
  }

  onClose(listener: () => void): void {
    if (this.isClosed) listener();
    else this.closeListeners.add(listener);
  }

  /**
   * Starts a call: sends one request message and reports each response message and the end
   * (status from the trailers; UNAVAILABLE when the connection drops first). Exactly one onEnd.
   */
  call(method: string, request: Uint8Array, onMessage: (message: Buffer) => void, onEnd: (end: CallEnd) => void): http2.ClientHttp2Stream {
    let ended = false;
    const finish = (end: CallEnd) => {
      if (ended) return;
      ended = true;
      onEnd(end);
    };
    let stream: http2.ClientHttp2Stream;
    try {
      stream = this.session.request({ ':method': 'POST', ':path': `/SpiffeWorkloadAPI/${method}`, ...WORKLOAD_HEADERS });
    } catch (err) {
      queueMicrotask(() => finish({ code: Status.UNAVAILABLE, details: (err as Error).message }));
      return undefined as unknown as http2.ClientHttp2Stream;
    }
    const reader = new MessageReader();
    let status: CallEnd | undefined;
    const takeStatus = (headers: http2.IncomingHttpHeaders) => {
      const code = headers['grpc-status'];
      if (code !== undefined) status = { code: Number(code), details: decodeURIComponent(String(headers['grpc-message'] ?? '')) };
    };
    stream.on('response', takeStatus); // a trailers-only response carries the status in the headers
    stream.on('trailers', takeStatus);
    stream.on('data', (chunk: Buffer) => {
      let messages: Buffer[];
      try {
        messages = reader.push(chunk);
      } catch (err) {
        finish({ code: -1, details: (err as Error).message });
        stream.close(http2.constants.NGHTTP2_CANCEL);
        return;
      }
      for (const m of messages) onMessage(m);
    });
    stream.on('error', (err) => finish({ code: Status.UNAVAILABLE, details: err.message }));
    stream.on('close', () => finish(status ?? { code: Status.UNAVAILABLE, details: `stream closed (http2 code ${stream.rstCode})` }));
    stream.end(frameMessage(request));
    return stream;
  }

  /** A unary call: resolves with the single response message, rejects with the status otherwise. */
  unary(method: string, request: Uint8Array): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      let response: Buffer | undefined;
      this.call(
        method,
        request,
        (m) => (response = m),
        (end) => {
          if (end.code === Status.OK && response) resolve(response);
          else reject(Object.assign(new Error(`${method}: status ${end.code} ${end.details}`), { grpcCode: end.code }));
        },
      );
    });
  }

  close(): void {
    this.closed = true;
    this.closeListeners.clear();
    this.session.destroy();
  }
}
