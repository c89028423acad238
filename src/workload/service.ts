import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../common/logger.js';
import { AgentIdError, invalidArgument, permissionDenied, unavailable } from '../common/errors.js';
import { toGrpcError } from '../common/grpc-errors.js';
import { assertAuditableInput } from '../audit/index.js';
import { SpiffeId } from '../spiffe/spiffe-id.js';
import { formatSelector, type Selector } from '../spiffe/selector.js';
import type { Caller, StreamHandle, StreamHub, StreamSink } from '../issuer/hub.js';
import type { MintCause } from '../issuer/svid-cache.js';
import type { Identity } from '../issuer/identity.js';
import type { PeerCredentialsLike, PeerRegistry } from './peers.js';
import { LatestWinsWriter } from './latest-writer.js';
import type { CallTicket, WorkloadLimiter } from './limits.js';
import { toStruct, unaryEncoders } from './encode.js';
import type { MintedJwt } from '../issuer/svid-cache.js';

export interface AttestationResult {
  peer: PeerCredentialsLike;
  process: { pid: number; startTime: string };
  selectors: Selector[];
  cgroup: string | null;
  ancestors: { pid: number; startTime: string }[];
  /** See CallerFacts.ancestorsKnown. */
  ancestorsKnown?: boolean;
}

export interface WorkloadDeps {
  peers: PeerRegistry;
  /** streaming: the result is kept for a long-lived stream. */
  attest: (peer: PeerCredentialsLike, call: { streaming: boolean }) => Promise<AttestationResult>;
  /**
   * The connection's earlier attestation when it is reusable now and can be told without waiting
   * (see AttestationCache.reuse); undefined: `attest`. Absent: always `attest`.
   */
  attestNow?: (peer: PeerCredentialsLike) => AttestationResult | undefined;
  hub: StreamHub;
  /**
   * The caller's identities for a unary call (empty: none); `connection` is the same object for
   * every call on one connection, so an answer may be remembered per connection.
   */
  identities: (connection: object, caller: Caller) => Identity[];
  /** The agent's minter is its server, so a JWT-SVID may arrive later (a Promise). */
  cache: { jwtFor(identity: Identity, audience: string[], cause: MintCause): MintedJwt | Promise<MintedJwt> };
  validateJwt: (token: string, audience: string) => { spiffeId: string; claims: Record<string, unknown> };
  onRefused: (peer: { pid: number; uid: number } | undefined, method: string, reason: string) => void;
  logger: Logger;
  /**
   * The Workload API limits, run by these handlers themselves (the interceptor lets their methods
   * through: see WorkloadLimiter.interceptor). Absent: calls are not limited here.
   */
  callLimits?: Pick<WorkloadLimiter, 'admit' | 'finished'>;
}

/**
 * The methods whose handlers run the limits themselves (with callLimits): a stream keeps no
 * interceptor layer for its life, and a unary call builds none.
 */
export const SELF_LIMITED_METHODS = ['FetchX509SVID', 'FetchX509Bundles', 'FetchJWTBundles', 'FetchJWTSVID', 'ValidateJWTSVID'] as const;

const SECURITY_HEADER = 'workload.spiffe.io';
/** Limits on FetchJWTSVID audiences: each becomes part of a token and of an audit line. */
const MAX_AUDIENCES = 16;
const MAX_AUDIENCE_LENGTH = 1024;

/**
 * What the last unary calls on one connection answered, so that a caller asking the same again
 * (the usual pattern: a token before each outgoing request, a check of each incoming one) gets the
 * same bytes without another protobuf encoding. Every check that decides the
 * answer (attestation, identities, the JWT cache, token validation) still runs on every call;
 * only the encoding of an identical answer is reused.
 */
interface ConnectionAnswers {
  fetch?: { identities: readonly Identity[]; jwts: readonly MintedJwt[]; response: Buffer };
  validate?: { token: string; spiffeId: string; response: Buffer };
}

/** Where a call keeps its OpenStream: the 'cancelled' and 'close' listeners are shared by every call. */
const OPEN_STREAM = Symbol('agentid.openStream');

/** Listener of every stream's call ('this' is the call): no closure per open stream. */
function onStreamCallEnded(this: { [OPEN_STREAM]?: OpenStream }): void {
  this[OPEN_STREAM]?.finish();
}

/**
 * One open Workload API stream: its latest-wins writer, the hub's sink for it and its end, in one
 * object. With 10,000 streams open, what each one keeps is paid 10,000 times: no closures here.
 */
class OpenStream extends LatestWinsWriter implements StreamSink {
  done = false;
  private handle: StreamHandle | undefined;

  constructor(
    call: grpc.ServerWritableStream<unknown, unknown>,
    private readonly hub: StreamHub,
    private readonly method: string,
    private readonly logger: Logger,
    private readonly limits: WorkloadDeps['callLimits'],
    private readonly ticket: CallTicket | undefined,
  ) {
    super(call);
    (call as { [OPEN_STREAM]?: OpenStream })[OPEN_STREAM] = this;
    call.on('cancelled', onStreamCallEnded);
    call.on('close', onStreamCallEnded);
  }

  /** The hub's handle, once subscribed (the first message is already written). */
  subscribed(handle: StreamHandle): void {
    if (this.done) this.hub.unsubscribe(handle);
    else this.handle = handle;
  }

  deliver(message: Buffer): void {
    this.write(message);
  }

  end(err: AgentIdError): void {
    this.finish(err);
  }

  finish(err?: unknown): void {
    if (this.done) return;
    this.done = true;
    this.limits?.finished(this.ticket, true);
    if (this.handle) this.hub.unsubscribe(this.handle);
    this.handle = undefined;
    this.close();
    if (err !== undefined) this.call.emit('error', toGrpcError(err, this.logger, { method: this.method }));
  }
}

/** f(value), now or once value settles. */
function after<T, R>(value: T | Promise<T>, f: (v: T) => R | Promise<R>): R | Promise<R> {
  return value instanceof Promise ? value.then(f) : f(value);
}

interface JwtSvidRequest {
  audience: string[];
  /** The SPIFFE ID asked for, normalized; undefined: every identity of the caller. */
  wanted: string | undefined;
}

/**
 * Checked requests, by the request object: a repeated request arrives as the same frozen object
 * (strict-input.ts remembers the last one decoded), so it is checked once, not on every call.
 */
const checkedJwtSvidRequests = new WeakMap<object, JwtSvidRequest>();

/** A FetchJWTSVID request's audience and SPIFFE ID, or INVALID_ARGUMENT. */
function jwtSvidRequest(request: { audience: string[]; spiffe_id: string }): JwtSvidRequest {
  const known = checkedJwtSvidRequests.get(request);
  if (known) return known;
  const audience = request.audience.filter((a) => a.length > 0);
  if (audience.length === 0) throw invalidArgument('audience must be specified');
  if (audience.length > MAX_AUDIENCES || audience.some((a) => a.length > MAX_AUDIENCE_LENGTH)) {
    throw invalidArgument(`audience: at most ${MAX_AUDIENCES} values of at most ${MAX_AUDIENCE_LENGTH} characters`);
  }
  // Audiences go into the audit trail with the issuance: refuse what it would refuse.
  assertAuditableInput({ type: 'svid.issued', audience }, 'audience');
  let wanted: string | undefined;
  if (request.spiffe_id) {
    try {
      wanted = SpiffeId.parse(request.spiffe_id).toString();
    } catch (err) {
      throw invalidArgument(`invalid requested SPIFFE ID: ${(err as Error).message}`);
    }
  }
  // Shared by every call that repeats the request (and a cache key by identity in svid-cache.ts).
  Object.freeze(audience);
  const checked = { audience, wanted };
  checkedJwtSvidRequests.set(request, checked);
  return checked;
}

/** SPIRE's rule: exactly one value, exactly "true"; checked before anything else happens. */
function checkSecurityHeader(metadata: grpc.Metadata): void {
  const values = metadata.get(SECURITY_HEADER);
  if (values.length !== 1 || values[0] !== 'true') throw invalidArgument('security header missing from request');
}

/** Handlers of /SpiffeWorkloadAPI/*. WIT methods have no handler, so grpc-js answers UNIMPLEMENTED. */
export function workloadHandlers(deps: WorkloadDeps): grpc.UntypedServiceImplementation {
  const { hub, logger } = deps;
  const encode = unaryEncoders();
  /** Per connection (the peer registry's object for it), dropped with it. */
  const answers = new WeakMap<object, ConnectionAnswers>();
  const answersOf = (connection: object) => {
    let a = answers.get(connection);
    if (!a) answers.set(connection, (a = {}));
    return a;
  };

  type AttestedCaller = Caller & { connection: object };

  function callerOf(peer: PeerCredentialsLike, a: AttestationResult): AttestedCaller {
    return {
      connection: peer,
      pid: a.process.pid,
      uid: a.peer.uid,
      startTime: a.process.startTime,
      ancestors: a.ancestors,
      ancestorsKnown: a.ancestorsKnown,
      cgroup: a.cgroup,
      selectors: a.selectors,
    };
  }

  function peerOf(call: { getPeer(): string }, method: string): PeerCredentialsLike {
    const peer = deps.peers.lookup(call.getPeer());
    if (!peer) {
      deps.onRefused(undefined, method, 'no peer credentials');
      throw unavailable('workload attestation failed');
    }
    return peer;
  }

  async function attestCaller(call: { getPeer(): string }, method: string, streaming = false, known?: PeerCredentialsLike): Promise<AttestedCaller> {
    const peer = known ?? peerOf(call, method);
    try {
      return callerOf(peer, await deps.attest(peer, { streaming }));
    } catch (err) {
      deps.onRefused(peer, method, err instanceof AgentIdError ? err.message : 'attestation error');
      logger.warn({ err, pid: peer.pid, uid: peer.uid }, 'attestation failed');
      throw unavailable('workload attestation failed');
    }
  }

  /** A unary call's caller: without waiting when its connection's attestation is reused as it is (the usual repeat call). */
  function unaryCaller(call: { getPeer(): string }, method: string): AttestedCaller | Promise<AttestedCaller> {
    const peer = peerOf(call, method);
    const reused = deps.attestNow?.(peer);
    return reused ? callerOf(peer, reused) : attestCaller(call, method, false, peer);
  }

  function refuseNoIdentity(caller: Caller, method: string): never {
    deps.onRefused(caller, method, `no identity for selectors ${caller.selectors.map(formatSelector).join(' ')}`);
    throw permissionDenied('no identity issued');
  }

  function fetchJwtSvid(caller: AttestedCaller, audience: string[], wanted: string | undefined): Buffer | Promise<Buffer> {
    const connection = answersOf(caller.connection);
    let identities = deps.identities(caller.connection, caller);
    if (identities.length === 0) refuseNoIdentity(caller, 'FetchJWTSVID');
    if (wanted !== undefined) {
      identities = identities.filter((i) => i.spiffeId.toString() === wanted);
      if (identities.length === 0) {
        deps.onRefused(caller, 'FetchJWTSVID', `not entitled to ${wanted}`);
        throw permissionDenied(`no identity issued for ${wanted}`);
      }
    }
    const minted = identities.map((identity) => deps.cache.jwtFor(identity, audience, caller));
    // An agent's minter is its server, so a token may arrive later; the server's own cache answers at once (no await).
    if (minted.some((j) => j instanceof Promise)) return Promise.all(minted).then((jwts) => jwtSvidResponse(connection, identities, jwts));
    return jwtSvidResponse(connection, identities, minted as MintedJwt[]);
  }

  function jwtSvidResponse(connection: ConnectionAnswers, identities: Identity[], jwts: readonly MintedJwt[]): Buffer {
    // The same identities given the same cached tokens: the same bytes as last time.
    const last = connection.fetch;
    if (last && last.identities === identities && last.jwts.length === jwts.length && last.jwts.every((j, i) => j === jwts[i])) return last.response;
    const response = encode.fetchJwtSvid({
      svids: jwts.map((jwt, i) => ({ spiffe_id: jwt.spiffeId, svid: jwt.token.reveal(), hint: identities[i]!.hint })),
    });
    connection.fetch = { identities, jwts, response };
    return response;
  }

  function validateJwtSvid(caller: AttestedCaller, token: string, audience: string): Buffer {
    if (deps.identities(caller.connection, caller).length === 0) refuseNoIdentity(caller, 'ValidateJWTSVID');
    let result;
    try {
      result = deps.validateJwt(token, audience);
    } catch (err) {
      // As SPIRE does: any token that fails validation is the caller's bad argument.
      throw invalidArgument(err instanceof AgentIdError ? err.message : 'JWT-SVID is not valid');
    }
    // Validated again just now; the answer (its SPIFFE ID and claims) comes from the token alone.
    const connection = answersOf(caller.connection);
    const last = connection.validate;
    if (last && last.token === token && last.spiffeId === result.spiffeId) return last.response;
    const response = encode.validateJwtSvid({ spiffe_id: result.spiffeId, claims: toStruct(result.claims) });
    connection.validate = { token, spiffeId: result.spiffeId, response };
    return response;
  }

  /**
   * Runs a unary call's work and answers it: at once when the work needed no waiting (a repeat
   * call on an open connection), else when its Promise settles. Errors become gRPC statuses.
   */
  function answer(call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>, method: string, work: () => Buffer | Promise<Buffer>): void {
    const admission = deps.callLimits?.admit(call.getPeer(), call.metadata, call.request, false) ?? { ticket: undefined };
    if ('refused' in admission) {
      callback(Object.assign(new Error(admission.refused.details), admission.refused));
      return;
    }
    const done = (err: Parameters<grpc.sendUnaryData<unknown>>[0], res?: Buffer) => {
      deps.callLimits?.finished(admission.ticket, false);
      callback(err, res);
    };
    let result: Buffer | Promise<Buffer>;
    try {
      result = work();
    } catch (err) {
      done(toGrpcError(err, logger, { method }));
      return;
    }
    if (result instanceof Promise) result.then((res) => done(null, res), (err: unknown) => done(toGrpcError(err, logger, { method })));
    else done(null, result);
  }

  /** Streams write the hub's pre-encoded responses (see workloadServiceDefinition). */
  function stream(kind: 'x509' | 'x509-bundles' | 'jwt-bundles', method: string): grpc.handleServerStreamingCall<unknown, unknown> {
    return (call) => {
      const admission = deps.callLimits?.admit(call.getPeer(), call.metadata, call.request, true) ?? { ticket: undefined };
      if ('refused' in admission) {
        call.emit('error', Object.assign(new Error(admission.refused.details), admission.refused));
        return;
      }
      const open = new OpenStream(call, hub, method, logger, deps.callLimits, admission.ticket);
      (async () => {
        checkSecurityHeader(call.metadata);
        const caller = await attestCaller(call, method, true);
        if (open.done) return;
        try {
          open.subscribed(hub.subscribe(kind, caller, open));
        } catch (err) {
          if (err instanceof AgentIdError && err.code === 'permission_denied') refuseNoIdentity(caller, method);
          throw err;
        }
      })().catch((err: unknown) => open.finish(err));
    };
  }

  return {
    FetchX509SVID: stream('x509', 'FetchX509SVID'),
    FetchX509Bundles: stream('x509-bundles', 'FetchX509Bundles'),
    FetchJWTBundles: stream('jwt-bundles', 'FetchJWTBundles'),

    FetchJWTSVID: ((call: grpc.ServerUnaryCall<{ audience: string[]; spiffe_id: string }, unknown>, callback: grpc.sendUnaryData<unknown>) => {
      answer(call, callback, 'FetchJWTSVID', () => {
        checkSecurityHeader(call.metadata);
        const { audience, wanted } = jwtSvidRequest(call.request);
        return after(unaryCaller(call, 'FetchJWTSVID'), (caller) => fetchJwtSvid(caller, audience, wanted));
      });
    }) as grpc.handleUnaryCall<unknown, unknown>,

    ValidateJWTSVID: ((call: grpc.ServerUnaryCall<{ audience: string; svid: string }, unknown>, callback: grpc.sendUnaryData<unknown>) => {
      answer(call, callback, 'ValidateJWTSVID', () => {
        checkSecurityHeader(call.metadata);
        if (!call.request.audience) throw invalidArgument('audience must be specified');
        if (!call.request.svid) throw invalidArgument('svid must be specified');
        return after(unaryCaller(call, 'ValidateJWTSVID'), (caller) => validateJwtSvid(caller, call.request.svid, call.request.audience));
      });
    }) as grpc.handleUnaryCall<unknown, unknown>,
  };
}
