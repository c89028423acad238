import type { X509BundlesState, JwtBundlesState, X509State } from '../issuer/hub.js';

/** Wire encodings of the Workload API messages (field names as in workload.proto). */

export function encodeX509SvidResponse(state: X509State, ownBundle: Buffer[]) {
  const bundle = Buffer.concat(ownBundle);
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
