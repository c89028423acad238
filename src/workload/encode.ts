import type * as grpc from '@grpc/grpc-js';
import { workloadService } from '../common/proto.js';
import type { X509BundlesState, JwtBundlesState, X509State, StateEncoders } from '../issuer/hub.js';

/** Wire encodings of the Workload API messages (field names as in workload.proto). */

/** The streaming methods, whose responses the hub encodes once and shares between streams. */
const STREAMING_METHODS = ['FetchX509SVID', 'FetchX509Bundles', 'FetchJWTBundles'] as const;

/** Protobuf encoders of the three stream responses, for the hub. */
export function workloadStateEncoders(): StateEncoders {
  const methods = workloadService().service;
  const serializer = (name: (typeof STREAMING_METHODS)[number]) => methods[name]!.responseSerialize as (value: unknown) => Buffer;
  const [x509, x509Bundles, jwtBundles] = STREAMING_METHODS.map(serializer) as [(v: unknown) => Buffer, (v: unknown) => Buffer, (v: unknown) => Buffer];
  return {
    x509: (state) => x509(encodeX509SvidResponse(state)),
    x509Bundles: (state) => x509Bundles(encodeX509BundlesResponse(state)),
    jwtBundles: (state) => jwtBundles(encodeJwtBundlesResponse(state)),
  };
}

/** The unary methods, whose handlers may answer with bytes encoded earlier (see UnaryEncoders). */
const UNARY_METHODS = ['FetchJWTSVID', 'ValidateJWTSVID'] as const;

/**
 * The Workload API service as the server registers it: the streaming methods write the hub's
 * pre-encoded bytes as they are (grpc-js frames whatever the serializer returns); the unary
 * methods serialize a response object, or pass a Buffer (a response encoded earlier) as it is.
 */
export function workloadServiceDefinition(): grpc.ServiceDefinition {
  const methods = workloadService().service;
  const out: Record<string, grpc.MethodDefinition<unknown, unknown>> = { ...methods };
  for (const name of STREAMING_METHODS) out[name] = { ...methods[name]!, responseSerialize: (encoded: Buffer) => encoded } as grpc.MethodDefinition<unknown, unknown>;
  for (const name of UNARY_METHODS) {
    const serialize = methods[name]!.responseSerialize as (value: unknown) => Buffer;
    out[name] = { ...methods[name]!, responseSerialize: (value: unknown) => (Buffer.isBuffer(value) ? value : serialize(value)) } as grpc.MethodDefinition<unknown, unknown>;
  }
  return out as grpc.ServiceDefinition;
}

/** Protobuf encoders of the unary responses, for handlers that keep an encoded answer to send again. */
export interface UnaryEncoders {
  fetchJwtSvid(response: { svids: { spiffe_id: string; svid: string; hint: string }[] }): Buffer;
  validateJwtSvid(response: { spiffe_id: string; claims: ReturnType<typeof toStruct> }): Buffer;
}

export function unaryEncoders(): UnaryEncoders {
  const methods = workloadService().service;
  const [fetchJwtSvid, validateJwtSvid] = UNARY_METHODS.map((name) => methods[name]!.responseSerialize as (value: unknown) => Buffer) as [
    (v: unknown) => Buffer,
    (v: unknown) => Buffer,
  ];
  return { fetchJwtSvid, validateJwtSvid };
}

export function encodeX509SvidResponse(state: X509State) {
  const bundle = Buffer.concat(state.bundle);
  return {
    svids: state.svids.map(({ identity, svid }) => ({
      spiffe_id: svid.spiffeId,
      x509_svid: Buffer.concat(svid.chainDer),
      x509_svid_key: svid.privateKeyPkcs8.reveal(),
      bundle,
      hint: identity.hint,
    })),
    crl: state.crls,
    federated_bundles: mapToObject(state.federatedBundles, (certs) => Buffer.concat(certs)),
  };
}

export function encodeX509BundlesResponse(state: X509BundlesState) {
  return { crl: state.crls, bundles: mapToObject(state.bundles, (certs) => Buffer.concat(certs)) };
}

export function encodeJwtBundlesResponse(state: JwtBundlesState) {
  return { bundles: mapToObject(state.bundles, (json) => json) };
}

function mapToObject<V, W>(map: Map<string, V>, f: (v: V) => W): Record<string, W> {
  const out: Record<string, W> = {};
  for (const [k, v] of map) out[k] = f(v);
  return out;
}

type StructValue =
  | { nullValue: 'NULL_VALUE' }
  | { numberValue: number }
  | { stringValue: string }
  | { boolValue: boolean }
  | { structValue: { fields: Record<string, StructValue> } }
  | { listValue: { values: StructValue[] } };

/**
 * JSON claims as a google.protobuf.Struct (numbers become doubles, as the spec says). The Struct
 * type comes from protobufjs's bundled descriptor, whose field names stay camelCase even with keepCase.
 */
export function toStruct(obj: Record<string, unknown>): { fields: Record<string, StructValue> } {
  const fields: Record<string, StructValue> = {};
  for (const [k, v] of Object.entries(obj)) fields[k] = toValue(v);
  return { fields };
}

function toValue(v: unknown): StructValue {
  if (v === null || v === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof v === 'number') return { numberValue: v };
  if (typeof v === 'string') return { stringValue: v };
  if (typeof v === 'boolean') return { boolValue: v };
  if (Array.isArray(v)) return { listValue: { values: v.map(toValue) } };
  if (typeof v === 'object') return { structValue: toStruct(v as Record<string, unknown>) };
  return { stringValue: String(v) };
}
