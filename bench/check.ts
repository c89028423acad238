/*
 * The benchmark checks its own work: every response it timed is decoded and verified afterwards,
 * with the project's public verifier library, so a fast wrong answer cannot score.
 */
import { createHash, createPrivateKey, createPublicKey, X509Certificate } from 'node:crypto';
import { decodeJwtSvids, decodeValidateResponse, decodeX509Context, type RawJwtSvidResponse, type RawValidateJwtSvidResponse, type RawX509SvidResponse } from '../src/client/decode.js';
import type { X509Context } from '../src/client/types.js';
import { workloadService } from '../src/common/proto.js';
import { BundleSet, JwtBundle, X509Bundle } from '../src/verify/bundle.js';
import { verifyJwtSvid } from '../src/verify/jwt.js';
import { RevocationChecker } from '../src/verify/revocation.js';
import { verifyX509Svid } from '../src/verify/x509.js';
import { SpiffeId } from '../src/spiffe/spiffe-id.js';

const service = workloadService().service;

export function decodeX509(bytes: Buffer): X509Context {
  return decodeX509Context(service.FetchX509SVID!.responseDeserialize(bytes) as RawX509SvidResponse);
}

export function hashOf(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('base64');
}

export interface CheckedX509 {
  spiffeIds: string[];
  /** Leaf serials, hex as node:crypto prints them. */
  serials: string[];
}

/**
 * One FetchX509SVID message: decodes; every SVID's chain verifies against the bundle it came with
 * (SPIFFE rules, validity now, the message's own CRLs), and its private key matches its leaf.
 * Throws with the reason otherwise.
 */
export function checkX509Response(bytes: Buffer, now = Date.now()): CheckedX509 {
  const ctx = decodeX509(bytes);
  const crls = new RevocationChecker({ crls: ctx.crls });
  const out: CheckedX509 = { spiffeIds: [], serials: [] };
  for (const svid of ctx.svids) {
    const td = SpiffeId.parse(svid.spiffeId).trustDomain;
    const verified = verifyX509Svid(svid.chainDer, new BundleSet([X509Bundle.fromDer(td, svid.bundleDer)]), { now, crls });
    if (verified.spiffeId.toString() !== svid.spiffeId) throw new Error(`SVID for ${svid.spiffeId} carries ${verified.spiffeId.toString()}`);
    const leaf = new X509Certificate(svid.chainDer[0]!);
    const fromKey = createPublicKey(createPrivateKey({ key: svid.keyPkcs8Der.reveal(), format: 'der', type: 'pkcs8' })).export({ format: 'der', type: 'spki' });
    if (!fromKey.equals(leaf.publicKey.export({ format: 'der', type: 'spki' }))) throw new Error(`SVID for ${svid.spiffeId}: private key does not match the certificate`);
    out.spiffeIds.push(svid.spiffeId);
    out.serials.push(leaf.serialNumber);
  }
  return out;
}

/** Checks each distinct message once (streams of one identity share their bytes); returns the SPIFFE IDs seen. */
export function checkX509Responses(messages: Iterable<Buffer>, now = Date.now()): { distinct: number; spiffeIds: Set<string> } {
  const seen = new Set<string>();
  const spiffeIds = new Set<string>();
  for (const m of messages) {
    const h = hashOf(m);
    if (seen.has(h)) continue;
    seen.add(h);
    for (const id of checkX509Response(m, now).spiffeIds) spiffeIds.add(id);
  }
  return { distinct: seen.size, spiffeIds };
}

/** A FetchJWTSVID response: every token's signature verifies with the JWT bundle, for the audience. */
export function checkJwtResponse(bytes: Buffer, bundle: JwtBundle, audience: string, now = Date.now()): string[] {
  const svids = decodeJwtSvids(service.FetchJWTSVID!.responseDeserialize(bytes) as RawJwtSvidResponse);
  return svids.map((s) => {
    const verified = verifyJwtSvid(s.token.reveal(), bundle, { audience, now });
    if (verified.spiffeId.toString() !== s.spiffeId) throw new Error(`JWT-SVID for ${s.spiffeId} has sub ${verified.spiffeId.toString()}`);
    return s.spiffeId;
  });
}

/** A ValidateJWTSVID response names the expected SPIFFE ID. */
export function checkValidateResponse(bytes: Buffer, expectedSpiffeId: string): void {
  const v = decodeValidateResponse(service.ValidateJWTSVID!.responseDeserialize(bytes) as RawValidateJwtSvidResponse);
  if (v.spiffeId !== expectedSpiffeId) throw new Error(`ValidateJWTSVID answered ${v.spiffeId}, expected ${expectedSpiffeId}`);
}

export function serialize(method: 'FetchJWTSVID' | 'ValidateJWTSVID' | 'FetchJWTBundles' | 'FetchX509SVID', request: object): Buffer {
  return service[method]!.requestSerialize(request);
}

export function jwtBundleOf(bytes: Buffer, trustDomain: string): JwtBundle {
  const raw = service.FetchJWTBundles!.responseDeserialize(bytes) as { bundles: Record<string, Buffer> };
  const jwks = raw.bundles[`spiffe://${trustDomain}`];
  if (!jwks) throw new Error(`FetchJWTBundles has no bundle for ${trustDomain}`);
  return JwtBundle.fromJwkSet(trustDomain, jwks);
}

/** The first token of a FetchJWTSVID response. */
export function firstJwt(bytes: Buffer): string {
  return decodeJwtSvids(service.FetchJWTSVID!.responseDeserialize(bytes) as RawJwtSvidResponse)[0]!.token.reveal();
}
