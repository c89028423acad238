import { invalidArgument } from '../common/errors.js';
import * as der from './der.js';
import type { SigningKey } from './keys.js';
import { OID } from './x509-template.js';

/*
 * X.509 v2 CRLs (RFC 5280 §5), encoded here rather than with @peculiar/x509's async generator so
 * that building them is synchronous and uses the same signer handle as the leaves.
 *   version v2, signature, issuer (the CA subject bytes), thisUpdate, nextUpdate,
 *   revokedCertificates (omitted when empty, as §5.1.2.6 requires),
 *   crlExtensions: authorityKeyIdentifier, cRLNumber.
 */

export interface CrlIssuer {
  key: SigningKey;
  certDer: Buffer;
  subjectKeyId: Buffer;
}

export interface CrlEntry {
  /** Hex serial (case and leading zeros do not matter). */
  serial: string;
  /** Epoch ms. */
  revokedAt: number;
}

export interface CrlParams {
  /** Monotonically increasing per issuer; up to 20 octets (RFC 5280 §5.2.3). */
  crlNumber: bigint;
  thisUpdate: number;
  nextUpdate: number;
  entries: readonly CrlEntry[];
}

export function serialBytes(hex: string): Buffer {
  const clean = hex.replace(/^0x/i, '').toLowerCase();
  if (!/^[0-9a-f]+$/.test(clean) || clean.length > 40) {
    throw invalidArgument(`serial ${JSON.stringify(hex.slice(0, 48))}: must be 1-40 hex digits`);
  }
  return Buffer.from(clean.length % 2 ? `0${clean}` : clean, 'hex');
}

/** Lowercase hex with redundant leading zero bytes removed, the form a parsed INTEGER has. */
export function normalizeSerial(hex: string): string {
  const bytes = serialBytes(hex);
  let i = 0;
  while (i < bytes.length - 1 && bytes[i] === 0) i++;
  return bytes.subarray(i).toString('hex');
}

function integerFromBigint(n: bigint): Buffer {
  if (n < 0n) throw invalidArgument('CRL number must not be negative');
  let hex = n.toString(16);
  if (hex.length % 2) hex = `0${hex}`;
  if (hex.length > 40) throw invalidArgument('CRL number must fit in 20 octets');
  return der.unsignedInteger(Buffer.from(hex, 'hex'));
}

export function buildCrl(issuer: CrlIssuer, params: CrlParams): Buffer {
  if (!(params.nextUpdate > params.thisUpdate)) throw invalidArgument('CRL: nextUpdate must be after thisUpdate');
  const subject = der.certificateParts(issuer.certDer).subject;
  // One entry per serial; if a serial is listed twice the earliest revocation wins.
  const bySerial = new Map<string, number>();
  for (const e of params.entries) {
    const serial = normalizeSerial(e.serial);
    const prev = bySerial.get(serial);
    bySerial.set(serial, prev === undefined ? e.revokedAt : Math.min(prev, e.revokedAt));
  }
  const revoked = [...bySerial.entries()]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([serial, at]) => der.sequence(der.unsignedInteger(Buffer.from(serial, 'hex')), der.time(at)));
  const extensions = der.explicit(
    0,
    der.sequence(
      der.extension(OID.authorityKeyIdentifier, false, der.sequence(der.implicitPrimitive(0, issuer.subjectKeyId))),
      der.extension(OID.crlNumber, false, integerFromBigint(params.crlNumber)),
    ),
  );
  const tbs = der.sequence(
    der.smallInteger(1),
    issuer.key.signatureAlgorithmDer,
    subject,
    der.time(params.thisUpdate),
    der.time(params.nextUpdate),
    ...(revoked.length > 0 ? [der.sequence(...revoked)] : []),
    extensions,
  );
  return der.sequence(tbs, issuer.key.signatureAlgorithmDer, der.bitString(issuer.key.sign(tbs)));
}
