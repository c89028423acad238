import { createHash } from 'node:crypto';

/** The `prev` of the first record in a file. */
export const GENESIS_HASH = '0'.repeat(64);

/**
 * Canonical JSON: object keys sorted (by UTF-16 code units, JavaScript's default sort) at every
 * depth, array order kept, no whitespace, strings and numbers as JSON.stringify writes them,
 * undefined members dropped. A record parsed back from its line gives the same text, so the
 * hash does not depend on the key order the writer happened to use.
 */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') {
    const text = JSON.stringify(value);
    if (text === undefined) throw new TypeError(`canonicalJson: ${typeof value} has no JSON form`);
    return text;
  }
  if (Array.isArray(value)) {
    return `[${value.map((v) => (v === undefined ? 'null' : canonicalJson(v))).join(',')}]`;
  }
  const obj = value as Record<string, unknown>;
  const members = Object.keys(obj)
    .filter((k) => obj[k] !== undefined)
    .sort()
    .map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`);
  return `{${members.join(',')}}`;
}

/** hash = SHA-256(prev || canonical JSON of the record without `hash`), lowercase hex. */
export function recordHash(recordWithoutHash: Record<string, unknown> & { prev: string }): string {
  return createHash('sha256').update(recordWithoutHash.prev).update(canonicalJson(recordWithoutHash)).digest('hex');
}
