import { EventEmitter, once } from 'node:events';
import { rmSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { workloadService } from '../../common/proto.js';
import type {
  RawJwtBundlesResponse,
  RawJwtSvidResponse,
  RawStruct,
  RawValidateJwtSvidResponse,
  RawX509BundlesResponse,
  RawX509SvidResponse,
} from '../decode.js';
import { SECURITY_HEADER, type StreamMethod, type WorkloadMethod } from '../workload-client.js';

export interface FailStatus {
  code: grpc.status;
  details: string;
}

export interface RecordedCall {
  method: WorkloadMethod;
  /** Every value the client sent for workload.spiffe.io. */
  header: string[];
  request: Record<string, unknown>;
}

type StreamCall = grpc.ServerWritableStream<object, object>;

/**
 * A real grpc-js SpiffeWorkloadAPI server on a Unix socket, scripted by the test: it serves
 * whatever state the test sets, pushes every change to open streams, fails methods on demand,
 * and records headers, requests and cancellations. Like a conforming server it refuses calls
 * without the security header.
 */
export class FakeWorkloadServer extends EventEmitter<{ call: [RecordedCall]; cancelled: [StreamMethod] }> {
  readonly calls: RecordedCall[] = [];
  readonly cancelled: StreamMethod[] = [];
  readonly failures: Partial<Record<WorkloadMethod, FailStatus>> = {};
  jwtSvid: (req: { audience: string[]; spiffe_id: string }) => RawJwtSvidResponse = () => ({ svids: [] });
  validate: (req: { audience: string; svid: string }) => RawValidateJwtSvidResponse = () => ({ spiffe_id: '' });

  private readonly state: {
    FetchX509SVID?: RawX509SvidResponse;
    FetchX509Bundles?: RawX509BundlesResponse;
    FetchJWTBundles?: RawJwtBundlesResponse;
  } = {};
  private readonly open = new Map<StreamMethod, Set<StreamCall>>();
  private server: grpc.Server | undefined;

  private constructor(readonly socketPath: string) {
    super();
  }

  static async start(socketPath: string): Promise<FakeWorkloadServer> {
    const fake = new FakeWorkloadServer(socketPath);
    await fake.listen();
    return fake;
  }

  /** Sets the state a stream method serves and pushes it to every open stream of that method. */
  set<M extends StreamMethod>(method: M, value: NonNullable<FakeWorkloadServer['state'][M]>): void {
    this.state[method] = value;
    for (const call of this.open.get(method) ?? []) call.write(value);
  }

  openStreams(method: StreamMethod): number {
    return this.open.get(method)?.size ?? 0;
  }

  /** Ends the streams of `method` with a status, as a server does when an identity is revoked. */
  endStreams(method: StreamMethod, status: FailStatus): void {
    for (const call of this.open.get(method) ?? []) call.emit('error', status);
    this.open.get(method)?.clear();
  }

  /** Waits until the server has seen `count` calls of `method` in total. */
  async waitForCalls(method: WorkloadMethod, count: number): Promise<void> {
    while (this.calls.filter((c) => c.method === method).length < count) await once(this as EventEmitter, 'call');
  }

  async waitForCancel(method: StreamMethod): Promise<void> {
    while (!this.cancelled.includes(method)) await once(this as EventEmitter, 'cancelled');
  }

  /** Kills the server and every connection at once, like a crashed agent. */
  stop(): void {
    this.server?.forceShutdown();
    this.server = undefined;
    this.open.clear();
    rmSync(this.socketPath, { force: true });
  }

  /** Starts serving again on the same socket (state, failures and records are kept). */
  async restart(): Promise<void> {
    this.stop();
    await this.listen();
  }

  private record(method: WorkloadMethod, call: { metadata: grpc.Metadata; request: unknown }): FailStatus | undefined {
    const header = call.metadata.get(SECURITY_HEADER).map(String);
    const rec: RecordedCall = { method, header, request: call.request as Record<string, unknown> };
    this.calls.push(rec);
    this.emit('call', rec);
    if (header.length !== 1 || header[0] !== 'true') {
      return { code: grpc.status.INVALID_ARGUMENT, details: 'security header missing from request' };
    }
    return this.failures[method];
  }

  private stream(method: StreamMethod): grpc.handleServerStreamingCall<object, object> {
    return (call) => {
      const failure = this.record(method, call);
      if (failure) {
        call.emit('error', failure);
        return;
      }
      let set = this.open.get(method);
      if (!set) this.open.set(method, (set = new Set()));
      set.add(call);
      call.on('cancelled', () => {
        set.delete(call);
        this.cancelled.push(method);
        this.emit('cancelled', method);
      });
      const current = this.state[method];
      if (current) call.write(current);
    };
  }

  private listen(): Promise<void> {
    const server = new grpc.Server();
    server.addService(workloadService().service, {
      FetchX509SVID: this.stream('FetchX509SVID'),
      FetchX509Bundles: this.stream('FetchX509Bundles'),
      FetchJWTBundles: this.stream('FetchJWTBundles'),
      FetchJWTSVID: (call: grpc.ServerUnaryCall<{ audience: string[]; spiffe_id: string }, object>, cb: grpc.sendUnaryData<object>) => {
        const failure = this.record('FetchJWTSVID', call);
        if (failure) return cb(failure);
        cb(null, this.jwtSvid(call.request));
      },
      ValidateJWTSVID: (call: grpc.ServerUnaryCall<{ audience: string; svid: string }, object>, cb: grpc.sendUnaryData<object>) => {
        const failure = this.record('ValidateJWTSVID', call);
        if (failure) return cb(failure);
        cb(null, this.validate(call.request));
      },
    });
    this.server = server;
    return new Promise((resolve, reject) => {
      server.bindAsync(`unix://${this.socketPath}`, grpc.ServerCredentials.createInsecure(), (err) =>
        err ? reject(err) : resolve(),
      );
    });
  }
}

/**
 * Plain JSON -> google.protobuf.Struct as protobufjs serialises it: its bundled struct.proto
 * uses camelCase names (numberValue...) even under keepCase; snake_case fields are dropped silently.
 */
export function toStruct(obj: Record<string, unknown>): RawStruct {
  const value = (v: unknown): object => {
    if (v === null) return { nullValue: 'NULL_VALUE' };
    if (typeof v === 'number') return { numberValue: v };
    if (typeof v === 'string') return { stringValue: v };
    if (typeof v === 'boolean') return { boolValue: v };
    if (Array.isArray(v)) return { listValue: { values: v.map(value) } };
    return { structValue: toStruct(v as Record<string, unknown>) };
  };
  return { fields: Object.fromEntries(Object.entries(obj).map(([k, v]) => [k, value(v)])) };
}
