import type * as grpc from '@grpc/grpc-js';
import { abortError } from '../common/clock.js';
import { AgentIdError, failedPrecondition, invalidArgument, unavailable, type ErrorCode } from '../common/errors.js';
import { Secret } from '../common/secret.js';
import { SpiffeId } from '../spiffe/spiffe-id.js';
import { resolveEndpointAddress, type EndpointAddress } from './address.js';
import {
  decodeJwtBundles,
  decodeJwtSvids,
  decodeValidateResponse,
  decodeX509Bundles,
  decodeX509Context,
  type RawJwtBundlesResponse,
  type RawJwtSvidResponse,
  type RawValidateJwtSvidResponse,
  type RawX509BundlesResponse,
  type RawX509SvidResponse,
} from './decode.js';
import type { JwtBundles, JwtSvid, JwtSvidParams, ValidatedJwtSvid, X509Bundles, X509Context } from './types.js';

/** Required on every Workload API call (SPIFFE Workload Endpoint §3); servers refuse calls without it. */
export const SECURITY_HEADER = 'workload.spiffe.io';

export type StreamMethod = 'FetchX509SVID' | 'FetchX509Bundles' | 'FetchJWTBundles';
export type UnaryMethod = 'FetchJWTSVID' | 'ValidateJWTSVID';
export type WorkloadMethod = StreamMethod | UnaryMethod;

interface RawWorkloadClient {
  FetchX509SVID(req: object, md: grpc.Metadata): grpc.ClientReadableStream<RawX509SvidResponse>;
  FetchX509Bundles(req: object, md: grpc.Metadata): grpc.ClientReadableStream<RawX509BundlesResponse>;
  FetchJWTBundles(req: object, md: grpc.Metadata): grpc.ClientReadableStream<RawJwtBundlesResponse>;
  FetchJWTSVID(req: object, md: grpc.Metadata, cb: grpc.requestCallback<RawJwtSvidResponse>): grpc.ClientUnaryCall;
  ValidateJWTSVID(
    req: object,
    md: grpc.Metadata,
    cb: grpc.requestCallback<RawValidateJwtSvidResponse>,
  ): grpc.ClientUnaryCall;
  close(): void;
}

/** gRPC status codes (fixed by the gRPC protocol), so mapping them needs no grpc-js at import time. */
const STATUS_NAMES = [
  'OK', 'CANCELLED', 'UNKNOWN', 'INVALID_ARGUMENT', 'DEADLINE_EXCEEDED', 'NOT_FOUND', 'ALREADY_EXISTS', 'PERMISSION_DENIED',
  'RESOURCE_EXHAUSTED', 'FAILED_PRECONDITION', 'ABORTED', 'OUT_OF_RANGE', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS',
  'UNAUTHENTICATED',
] as const;
const STATUS = Object.fromEntries(STATUS_NAMES.map((name, code) => [name, code])) as Record<(typeof STATUS_NAMES)[number], number>;

const STATUS_TO_CODE: Partial<Record<number, ErrorCode>> = {
  [STATUS.INVALID_ARGUMENT]: 'invalid_argument',
  [STATUS.NOT_FOUND]: 'not_found',
  [STATUS.ALREADY_EXISTS]: 'already_exists',
  [STATUS.PERMISSION_DENIED]: 'permission_denied',
  [STATUS.UNAUTHENTICATED]: 'unauthenticated',
  [STATUS.FAILED_PRECONDITION]: 'failed_precondition',
  [STATUS.UNIMPLEMENTED]: 'unimplemented',
  // Transient conditions: the spec's advice for all of them is "retry with backoff".
  [STATUS.UNAVAILABLE]: 'unavailable',
  [STATUS.CANCELLED]: 'unavailable',
  [STATUS.DEADLINE_EXCEEDED]: 'unavailable',
  [STATUS.RESOURCE_EXHAUSTED]: 'unavailable',
  [STATUS.ABORTED]: 'unavailable',
};

type GrpcModule = typeof import('@grpc/grpc-js');

/*
 * grpc-js and the protobuf loader take several hundred milliseconds to load; a service that
 * imports agentid/client only to verify something, or before it needs the socket, should not pay
 * that at import time. They load on the first client construction, once per process.
 */
let grpcLoading: Promise<{ grpc: GrpcModule; Ctor: grpc.ServiceClientConstructor }> | undefined;
function loadGrpc() {
  grpcLoading ??= Promise.all([import('@grpc/grpc-js'), import('../common/proto.js')]).then(([g, proto]) => ({
    grpc: g,
    Ctor: proto.workloadService(),
  }));
  return grpcLoading;
}

/** An AgentIdError that also carries the gRPC status it came from, for callers that need the number. */
export class WorkloadApiError extends AgentIdError {
  constructor(
    code: ErrorCode,
    message: string,
    readonly grpcCode: grpc.status,
  ) {
    super(code, message);
    this.name = 'WorkloadApiError';
  }
}

/** Maps a gRPC failure of `method` to an AgentIdError with a stable code. */
export function fromGrpcError(method: WorkloadMethod, err: unknown): AgentIdError {
  if (err instanceof AgentIdError) return err;
  const e = err as Partial<grpc.ServiceError> | undefined;
  if (typeof e?.code === 'number') {
    const name = STATUS_NAMES[e.code] ?? String(e.code);
    const details = e.details ? `: ${e.details}` : '';
    return new WorkloadApiError(STATUS_TO_CODE[e.code] ?? 'internal', `Workload API ${method}: ${name}${details}`, e.code);
  }
  return new AgentIdError('internal', `Workload API ${method}: ${err instanceof Error ? err.message : String(err)}`);
}

export interface WorkloadApiClientOptions {
  /** unix:///abs/path, unix:/abs/path or /abs/path; defaults to $SPIFFE_ENDPOINT_SOCKET. */
  socketPath?: string;
  /** Where SPIFFE_ENDPOINT_SOCKET is read from (default process.env). */
  env?: Readonly<Record<string, string | undefined>>;
  /** Extra grpc-js channel options; they override the defaults below. */
  channelOptions?: grpc.ChannelOptions;
}

/*
 * grpc-js backs off reconnects up to 120 s by default, and calls made during that window fail at
 * once; the sources' own backoff caps at 30 s, so the channel is held to the same cap.
 */
const DEFAULT_CHANNEL_OPTIONS: grpc.ChannelOptions = {
  'grpc.initial_reconnect_backoff_ms': 250,
  'grpc.max_reconnect_backoff_ms': 30_000,
};

export interface CallOptions {
  /** Cancels the call; the promise rejects with an AbortError. */
  signal?: AbortSignal;
}

/**
 * A Workload API client in the manner of go-spiffe's workloadapi.Client: one gRPC channel to
 * the local endpoint, every call tagged with the security header, every response decoded into
 * checked types, every failure an AgentIdError with a stable code.
 *
 * Watch methods follow one stream and do not retry; X509Source / BundleSource add reconnects.
 */
export class WorkloadApiClient {
  readonly address: EndpointAddress;
  private readonly raw: Promise<{ grpc: GrpcModule; client: RawWorkloadClient }>;
  private closed = false;

  constructor(options: WorkloadApiClientOptions = {}) {
    this.address = resolveEndpointAddress(options.socketPath, options.env);
    const target = this.address.grpcTarget;
    this.raw = loadGrpc().then(({ grpc: g, Ctor }) => {
      const client = new Ctor(target, g.credentials.createInsecure(), { ...DEFAULT_CHANNEL_OPTIONS, ...options.channelOptions }) as unknown as RawWorkloadClient;
      if (this.closed) client.close();
      return { grpc: g, client };
    });
    // A failure to load surfaces on the first call; never as an unhandled rejection.
    this.raw.catch(() => undefined);
  }

  /** The first message of FetchX509SVID: every SVID the caller is entitled to, CRLs, federated bundles. */
  fetchX509Context(options: CallOptions = {}): Promise<X509Context> {
    return this.first('FetchX509SVID', decodeX509Context, options.signal);
  }

  /**
   * Follows FetchX509SVID. `onUpdate` gets each decoded message (the full current state);
   * `onError` gets messages that fail to decode, while the stream stays open and the last good
   * state stands. The promise resolves when `signal` aborts (the stream is cancelled) and
   * rejects with an AgentIdError when the stream ends any other way, including a clean end by
   * the server, since a Workload API stream is meant to stay open.
   */
  watchX509Context(
    onUpdate: (ctx: X509Context) => void,
    onError: (err: AgentIdError) => void,
    signal?: AbortSignal,
  ): Promise<void> {
    return this.watch('FetchX509SVID', decodeX509Context, onUpdate, onError, signal);
  }

  fetchX509Bundles(options: CallOptions = {}): Promise<X509Bundles> {
    return this.first('FetchX509Bundles', decodeX509Bundles, options.signal);
  }

  watchX509Bundles(
    onUpdate: (bundles: X509Bundles) => void,
    onError: (err: AgentIdError) => void,
    signal?: AbortSignal,
  ): Promise<void> {
    return this.watch('FetchX509Bundles', decodeX509Bundles, onUpdate, onError, signal);
  }

  fetchJwtBundles(options: CallOptions = {}): Promise<JwtBundles> {
    return this.first('FetchJWTBundles', decodeJwtBundles, options.signal);
  }

  watchJwtBundles(
    onUpdate: (bundles: JwtBundles) => void,
    onError: (err: AgentIdError) => void,
    signal?: AbortSignal,
  ): Promise<void> {
    return this.watch('FetchJWTBundles', decodeJwtBundles, onUpdate, onError, signal);
  }

  /** Every JWT-SVID the server returns for these audiences (just one when spiffeId is set). */
  async fetchJwtSvids(params: JwtSvidParams, options: CallOptions = {}): Promise<JwtSvid[]> {
    const request = jwtSvidRequest(params);
    return this.unary<RawJwtSvidResponse, JwtSvid[]>(
      'FetchJWTSVID',
      (raw, md, cb) => raw.FetchJWTSVID(request, md, cb),
      (raw) => {
        const svids = decodeJwtSvids(raw);
        if (request.spiffe_id !== '' && svids.some((s) => s.spiffeId !== request.spiffe_id)) {
          throw new AgentIdError('internal', `Workload API FetchJWTSVID: server returned an SVID for another identity than ${request.spiffe_id}`);
        }
        return svids;
      },
      options.signal,
    );
  }

  /** The default JWT-SVID (the first one) for these audiences, or the one for `spiffeId`. */
  async fetchJwtSvid(params: JwtSvidParams, options: CallOptions = {}): Promise<JwtSvid> {
    const svids = await this.fetchJwtSvids(params, options);
    return svids[0]!;
  }

  /** Asks the server to validate a token for one audience; INVALID_ARGUMENT means the token was refused. */
  async validateJwtSvid(
    token: string | Secret<string>,
    audience: string,
    options: CallOptions = {},
  ): Promise<ValidatedJwtSvid> {
    const svid = token instanceof Secret ? token.reveal() : token;
    if (svid === '') throw invalidArgument('validateJwtSvid: token must not be empty');
    if (audience === '') throw invalidArgument('validateJwtSvid: audience must not be empty');
    return this.unary<RawValidateJwtSvidResponse, ValidatedJwtSvid>(
      'ValidateJWTSVID',
      (raw, md, cb) => raw.ValidateJWTSVID({ audience, svid }, md, cb),
      decodeValidateResponse,
      options.signal,
    );
  }

  /** Closes the channel; open streams end with CANCELLED and later calls fail with failed_precondition. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.raw.then(({ client }) => client.close(), () => undefined);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  private metadata(g: GrpcModule): grpc.Metadata {
    const md = new g.Metadata();
    md.set(SECURITY_HEADER, 'true');
    return md;
  }

  private checkOpen(method: WorkloadMethod): void {
    if (this.closed) throw failedPrecondition(`Workload API ${method}: client is closed`);
  }

  private async openStream<Raw>(method: StreamMethod): Promise<grpc.ClientReadableStream<Raw>> {
    this.checkOpen(method);
    const { grpc: g, client } = await this.raw;
    this.checkOpen(method);
    const md = this.metadata(g);
    return (client[method] as (req: object, md: grpc.Metadata) => grpc.ClientReadableStream<Raw>).call(client, {}, md);
  }

  private async first<Raw, T>(method: StreamMethod, decode: (raw: Raw) => T, signal?: AbortSignal): Promise<T> {
    if (signal?.aborted) throw abortError();
    let call: grpc.ClientReadableStream<Raw>;
    try {
      call = await this.openStream<Raw>(method);
    } catch (err) {
      throw err instanceof AgentIdError ? err : fromGrpcError(method, err);
    }
    return new Promise<T>((resolve, reject) => {
      let settled = false;
      const settle = (fn: () => void) => {
        if (settled) return;
        settled = true;
        signal?.removeEventListener('abort', onAbort);
        fn();
      };
      const onAbort = () => {
        settle(() => reject(abortError()));
        call.cancel();
      };
      if (signal?.aborted) return onAbort();
      signal?.addEventListener('abort', onAbort, { once: true });
      call.on('data', (msg: Raw) => {
        settle(() => {
          try {
            resolve(decode(msg));
          } catch (err) {
            reject(err);
          }
        });
        // One message is all a fetch needs; cancelling tells the server to drop its subscription.
        call.cancel();
      });
      call.on('error', (err) => settle(() => reject(fromGrpcError(method, err))));
      call.on('status', () =>
        settle(() => reject(unavailable(`Workload API ${method}: stream ended before the first message`))),
      );
    }).catch((err: unknown) => {
      throw err instanceof AgentIdError || (err as Error)?.name === 'AbortError' ? err : fromGrpcError(method, err);
    });
  }

  private watch<Raw, T>(
    method: StreamMethod,
    decode: (raw: Raw) => T,
    onUpdate: (value: T) => void,
    onError: (err: AgentIdError) => void,
    signal?: AbortSignal,
  ): Promise<void> {
    if (signal?.aborted) return Promise.resolve();
    return this.openStream<Raw>(method).then((call) => this.follow(method, call, decode, onUpdate, onError, signal), (err) => {
      throw err instanceof AgentIdError ? err : fromGrpcError(method, err);
    });
  }

  private follow<Raw, T>(
    method: StreamMethod,
    call: grpc.ClientReadableStream<Raw>,
    decode: (raw: Raw) => T,
    onUpdate: (value: T) => void,
    onError: (err: AgentIdError) => void,
    signal?: AbortSignal,
  ): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      let settled = false;
      const settle = (fn: () => void) => {
        if (settled) return;
        settled = true;
        signal?.removeEventListener('abort', onAbort);
        fn();
      };
      const onAbort = () => {
        settle(resolve);
        call.cancel();
      };
      if (signal?.aborted) return onAbort();
      signal?.addEventListener('abort', onAbort, { once: true });
      call.on('data', (msg: Raw) => {
        if (settled) return;
        let value: T;
        try {
          value = decode(msg);
        } catch (err) {
          onError(fromGrpcError(method, err));
          return;
        }
        onUpdate(value);
      });
      call.on('error', (err) => settle(() => reject(fromGrpcError(method, err))));
      call.on('status', (status: grpc.StatusObject) => {
        if (status.code === STATUS.OK) {
          settle(() => reject(unavailable(`Workload API ${method}: server ended the stream`)));
        }
      });
    });
  }

  private async unary<Raw, T>(
    method: UnaryMethod,
    start: (raw: RawWorkloadClient, md: grpc.Metadata, cb: grpc.requestCallback<Raw>) => grpc.ClientUnaryCall,
    decode: (raw: Raw) => T,
    signal?: AbortSignal,
  ): Promise<T> {
    if (signal?.aborted) throw abortError();
    this.checkOpen(method);
    const { grpc: g, client } = await this.raw;
    this.checkOpen(method);
    return new Promise<T>((resolve, reject) => {
      let settled = false;
      const settle = (fn: () => void) => {
        if (settled) return;
        settled = true;
        signal?.removeEventListener('abort', onAbort);
        fn();
      };
      const call = start(client, this.metadata(g), (err, response) => {
        settle(() => {
          if (err) return reject(fromGrpcError(method, err));
          try {
            resolve(decode(response ?? ({} as Raw)));
          } catch (decodeErr) {
            reject(fromGrpcError(method, decodeErr));
          }
        });
      });
      const onAbort = () => {
        settle(() => reject(abortError()));
        call.cancel();
      };
      if (signal?.aborted) return onAbort();
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }
}

function jwtSvidRequest(params: JwtSvidParams): { audience: string[]; spiffe_id: string } {
  const audience = params.audience;
  if (!Array.isArray(audience) || audience.length === 0) {
    throw invalidArgument('fetchJwtSvid: audience must hold at least one value');
  }
  if (audience.some((a) => typeof a !== 'string' || a === '')) {
    throw invalidArgument('fetchJwtSvid: audience values must be non-empty strings');
  }
  const spiffeId = params.spiffeId === undefined ? '' : SpiffeId.parse(params.spiffeId).toString();
  return { audience: [...audience], spiffe_id: spiffeId };
}
