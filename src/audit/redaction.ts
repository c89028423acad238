import { internal, invalidArgument } from '../common/errors.js';

/*
 * The audit file is read by more people and kept longer than any key, so nothing secret may
 * reach it. Callers are supposed to pass IDs, serials and SPIFFE IDs only; this check is the
 * guard that turns a mistake into a loud internal error instead of a leaked key or token.
 * Error messages name the field and the rule, never the value.
 */

/** Limits on task metadata, exported so the admin API can refuse bad input with the same numbers. */
export const AUDIT_METADATA_LIMITS = Object.freeze({ maxPairs: 32, maxKeyLength: 64, maxValueLength: 256 });

/** Any other string is capped too (SPIFFE IDs go up to 2048 bytes) so one event cannot bloat the file. */
export const AUDIT_MAX_STRING_LENGTH = 4096;

const PEM = /-----BEGIN/;
// Three base64url parts whose header starts with '{"' (eyJ), the signature possibly empty (alg
// none); or one such part on its own (a JWT header or claims set cut out of a token).
const JWT = /eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*|eyJ[A-Za-z0-9_-]{16,}/;
// A long run of base64 / base64url characters. Real random data of this length contains
// upper case, lower case and digits; requiring all three keeps long human-made paths
// ("agent/builder/task/...") from tripping it.
const LONG_RUN = /[A-Za-z0-9+/_-]{201,}/g;

function looksLikeBlob(text: string): boolean {
  for (const run of text.match(LONG_RUN) ?? []) {
    if (/[A-Z]/.test(run) && /[a-z]/.test(run) && /[0-9]/.test(run)) return true;
  }
  return false;
}

function checkString(text: string, path: string, eventType: string): void {
  const refuse = (rule: string) => {
    throw internal(`audit event ${eventType}: ${path} ${rule}; secrets never go to the audit log`);
  };
  if (PEM.test(text)) refuse('looks like a PEM block');
  if (JWT.test(text)) refuse('looks like a JWT');
  if (looksLikeBlob(text)) refuse('looks like a base64 blob (over 200 characters)');
  if (text.length > AUDIT_MAX_STRING_LENGTH) {
    throw internal(`audit event ${eventType}: ${path} is longer than ${AUDIT_MAX_STRING_LENGTH} characters`);
  }
}

/**
 * Identifiers agentid makes itself (X.509 serials, JWT IDs) are random, and random text matches
 * the token patterns above now and then (a base64url jti contained "eyJ" plus 16 more characters
 * about once in 50,000 tokens, and the issuing call failed). So these fields are checked by what
 * they are, lowercase hex of a bounded length, and never by what they happen to look like; hex
 * cannot hold a PEM header, a JWT ("eyJ") or a mixed-case base64 run, so the check is also safe.
 */
const IDENTIFIER_FIELDS: ReadonlyMap<string, RegExp> = new Map([
  ['serial', /^[0-9a-f]{1,64}$/],
  ['previous_serial', /^[0-9a-f]{1,64}$/],
  ['jti', /^[0-9a-f]{32}$/],
]);

function checkIdentifier(value: unknown, field: string, format: RegExp, eventType: string): void {
  if (typeof value !== 'string' || !format.test(value)) {
    throw internal(`audit event ${eventType}: ${field} is not an agentid identifier (lowercase hex)`);
  }
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== 'object') return false;
  const proto = Object.getPrototypeOf(value);
  return proto === Object.prototype || proto === null;
}

function walk(value: unknown, path: string, eventType: string): void {
  if (value === undefined || value === null || typeof value === 'boolean') return;
  if (typeof value === 'string') return checkString(value, path, eventType);
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw internal(`audit event ${eventType}: ${path} is not a finite number`);
    return;
  }
  if (Array.isArray(value)) {
    value.forEach((v, i) => walk(v, `${path}[${i}]`, eventType));
    return;
  }
  // Buffers, Secrets, class instances, bigints, functions: none has a stable, safe JSON form.
  if (!isPlainObject(value)) {
    const kind = typeof value === 'object' ? (value.constructor?.name ?? 'object') : typeof value;
    throw internal(`audit event ${eventType}: ${path} is a ${kind}; only plain JSON data may be audited`);
  }
  for (const [key, member] of Object.entries(value)) {
    checkString(key, path === '' ? 'a field name' : `a key in ${path}`, eventType);
    const identifier = path === '' ? IDENTIFIER_FIELDS.get(key) : undefined;
    if (identifier !== undefined) {
      if (member !== undefined) checkIdentifier(member, key, identifier, eventType);
      continue;
    }
    walk(member, path === '' ? key : `${path}.${key}`, eventType);
  }
}

function checkMetadata(metadata: unknown, eventType: string): void {
  if (!isPlainObject(metadata)) throw internal(`audit event ${eventType}: metadata must be a string map`);
  const entries = Object.entries(metadata);
  const { maxPairs, maxKeyLength, maxValueLength } = AUDIT_METADATA_LIMITS;
  if (entries.length > maxPairs) throw internal(`audit event ${eventType}: metadata has more than ${maxPairs} pairs`);
  for (const [key, value] of entries) {
    if (key.length === 0 || key.length > maxKeyLength) {
      throw internal(`audit event ${eventType}: metadata key must be 1 to ${maxKeyLength} characters`);
    }
    if (typeof value !== 'string') throw internal(`audit event ${eventType}: metadata.${key} must be a string`);
    if (value.length > maxValueLength) {
      throw internal(`audit event ${eventType}: metadata.${key} is longer than ${maxValueLength} characters`);
    }
  }
}

/** Throws an internal AgentIdError when the event carries anything that must not be audited. */
export function assertAuditSafe(event: Record<string, unknown>): void {
  const eventType = typeof event.type === 'string' ? event.type : '(no type)';
  walk(event, '', eventType);
  if ('metadata' in event && event.metadata !== undefined) checkMetadata(event.metadata, eventType);
}

/**
 * For services, before they persist anything: caller input that the audit log would refuse (it
 * looks like a key or token) is the caller's bad argument, refused up front so that nothing is
 * stored without its audit line.
 */
export function assertAuditableInput(event: Record<string, unknown>, what: string): void {
  try {
    assertAuditSafe(event);
  } catch (err) {
    const rule = err instanceof Error ? err.message.replace(/^audit event [^:]+: /, '').replace(/; secrets never go to the audit log$/, '') : 'is not auditable';
    throw invalidArgument(`${what}: ${rule} (agentid never stores anything that looks like key material or a token)`);
  }
}
