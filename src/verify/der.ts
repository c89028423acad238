import { invalidArgument } from '../common/errors.js';
import { readTlv, type Tlv } from '../common/der.js';

export { readTlv, splitDer, pemBlocks, toPem, type Tlv } from '../common/der.js';

export interface SignedParts {
  /** The to-be-signed SEQUENCE, tag and length included. */
  tbs: Buffer;
  /** The outer AlgorithmIdentifier, tag and length included. */
  outerAlgorithm: Buffer;
  /** The AlgorithmIdentifier inside the TBS (must equal the outer one, RFC 5280 4.1.1.2 / 5.1.1.2). */
  innerAlgorithm: Buffer;
  signature: Buffer;
}

/** Certificate and CertificateList share the shape SEQUENCE { tbs, algorithm, BIT STRING }. */
export function signedParts(der: Uint8Array, what: string): SignedParts {
  const outer = readTlv(der, 0, what);
  if (outer.tag !== 0x30 || outer.end !== der.length) throw invalidArgument(`${what}: not a single DER SEQUENCE`);
  const tbs = readTlv(der, outer.contentStart, what);
  const alg = readTlv(der, tbs.end, what);
  const sig = readTlv(der, alg.end, what);
  if (tbs.tag !== 0x30 || alg.tag !== 0x30 || sig.tag !== 0x03 || sig.end !== outer.end) {
    throw invalidArgument(`${what}: not a signed X.509 structure`);
  }
  if (der[sig.contentStart] !== 0) throw invalidArgument(`${what}: signature has unused bits`);
  // Inside the TBS: an optional version (INTEGER for CRLs, [0] for certificates) precedes the algorithm.
  let inner = readTlv(der, tbs.contentStart, what);
  if (inner.tag === 0x02 || inner.tag === 0xa0) inner = readTlv(der, inner.end, what);
  // Certificates carry a serial INTEGER before the algorithm.
  if (inner.tag === 0x02) inner = readTlv(der, inner.end, what);
  if (inner.tag !== 0x30) throw invalidArgument(`${what}: TBS has no signature algorithm`);
  const slice = (t: Tlv) => Buffer.from(der.subarray(t.start, t.end));
  return {
    tbs: slice(tbs),
    outerAlgorithm: slice(alg),
    innerAlgorithm: slice(inner),
    signature: Buffer.from(der.subarray(sig.contentStart + 1, sig.end)),
  };
}
