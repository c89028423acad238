import { randomUUID } from 'node:crypto';
import { ProblemList, isAgentIdError } from '../common/errors.js';
import { checkSelectorKind, formatSelector, normalizeSelectors, parseSelector, type Selector } from '../spiffe/selector.js';
import { SpiffeId, TrustDomain, isNodeName } from '../spiffe/spiffe-id.js';
import type { NewRegistrationEntry } from '../datastore/types.js';

/** An entry as an operator submits it. Times and durations in milliseconds. */
export interface EntryInput {
  /** Set when replacing an existing entry; a new entry gets a fresh UUID. */
  id?: string;
  spiffeId: string;
  /** "unix:uid:1000" strings or parsed selectors; either way each one is (re)checked. */
  selectors: readonly (Selector | string)[];
  /** Undefined (or 0): the default from the options. */
  x509TtlMs?: number;
  jwtTtlMs?: number;
  hint?: string;
  dnsNames?: readonly string[];
  federatesWith?: readonly string[];
  /** Also serve processes bound to a task (default false: they hold only their task's identity). */
  includeTasks?: boolean;
  /** Null or undefined: never expires. */
  expiresAt?: number | null;
  /** Limits the entry to this node's agent (never the server's own socket); null or undefined: everywhere. */
  node?: string | null;
}

export interface EntryValidationOptions {
  trustDomain: TrustDomain;
  maxX509TtlMs: number;
  maxJwtTtlMs: number;
  now: number;
  defaultX509TtlMs?: number;
  defaultJwtTtlMs?: number;
  /** Source of new entry IDs; randomUUID unless a test pins it. */
  newId?: () => string;
}

export const MAX_HINT_BYTES = 1024;
export const MAX_DNS_NAME_LENGTH = 253;
export const MAX_SELECTORS = 64;
const ENTRY_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const DNS_LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/*
 * Task identities (/agent/<agent>/task/...) are minted only through the task lifecycle, which binds
 * them to one process or cgroup for a bounded time and records who started them. An entry for such
 * an ID would be a standing, unbounded grant under the same name, and verifiers that trust "a task
 * of agent X" (a path-prefix check on /agent/X/task) would accept it. /agent/<agent>/task itself
 * is refused too because a prefix check on that path matches the path itself.
 */
function isTaskNamespace(id: SpiffeId): boolean {
  const s = id.segments;
  return s.length >= 3 && s[0] === 'agent' && s[2] === 'task';
}

function ruleOf(err: unknown): string {
  if (isAgentIdError(err)) return err.message;
  throw err;
}

/** RFC 1123 host name, lowercase only; wildcards and IP addresses are not DNS names here. */
export function dnsNameProblem(name: string): string | undefined {
  if (name.length === 0) return 'is empty';
  if (name.length > MAX_DNS_NAME_LENGTH) return `is longer than ${MAX_DNS_NAME_LENGTH} characters`;
  if (name !== name.toLowerCase()) return 'must be lowercase';
  if (name.startsWith('*')) return 'must not be a wildcard';
  const labels = name.split('.');
  if (labels.some((l) => l === '')) return 'has an empty label';
  const bad = labels.find((l) => !DNS_LABEL.test(l));
  if (bad !== undefined) {
    return bad.length > 63
      ? 'has a label longer than 63 characters'
      : `label "${bad}" must be a-z, 0-9 and "-", not starting or ending with "-"`;
  }
  if (/^[0-9]+$/.test(labels[labels.length - 1]!)) return 'must not be an IP address or end in an all-numeric label';
  return undefined;
}

function checkTtl(
  problems: ProblemList,
  field: string,
  given: number | undefined,
  fallback: number | undefined,
  max: number,
): number {
  const ttl = given === undefined || given === 0 ? fallback : given;
  if (ttl === undefined) {
    problems.add(`${field} is required`);
    return 0;
  }
  // Validity is counted in whole seconds; a sub-second TTL would mint an SVID that is born expired.
  if (!Number.isSafeInteger(ttl) || ttl < 1000) problems.add(`${field} must be a whole number of milliseconds of at least 1s`);
  else if (ttl > max) problems.add(`${field} ${ttl}ms exceeds the maximum of ${max}ms`);
  return ttl;
}

/**
 * Checks an operator's entry against every rule and returns the canonical record to store, or
 * throws invalid_argument listing all problems ("entry: spiffe_id ...; selectors ...").
 * Pure apart from minting a new ID when input.id is absent.
 */
export function validateEntryInput(input: EntryInput, opts: EntryValidationOptions): NewRegistrationEntry {
  const problems = new ProblemList();
  const td = opts.trustDomain;

  let id = input.id ?? (opts.newId ?? randomUUID)();
  if (!ENTRY_ID.test(id)) {
    problems.add('id must be 1-128 characters of letters, digits, ".", "_" or "-", starting with a letter or digit');
    id = '';
  }

  let spiffeId = '';
  try {
    const parsed = SpiffeId.parse(input.spiffeId);
    spiffeId = parsed.toString();
    if (!parsed.isMemberOf(td)) problems.add(`spiffe_id must be in trust domain ${td.name}`);
    else if (parsed.path === '') problems.add('spiffe_id must have a path (the trust domain itself is not a workload)');
    else if (isTaskNamespace(parsed)) {
      problems.add('spiffe_id must not be under /agent/<agent>/task: task identities are issued only by starting a task');
    }
  } catch (err) {
    problems.add(`spiffe_id: ${ruleOf(err)}`);
  }

  const selectors: Selector[] = [];
  if (input.selectors.length === 0) problems.add('at least one selector is required (an entry without selectors would match every process)');
  if (input.selectors.length > MAX_SELECTORS) problems.add(`at most ${MAX_SELECTORS} selectors are allowed`);
  for (const s of input.selectors) {
    try {
      const parsed = parseSelector(typeof s === 'string' ? s : formatSelector(s));
      checkSelectorKind(parsed);
      selectors.push(parsed);
    } catch (err) {
      problems.add(ruleOf(err));
    }
  }

  const x509TtlMs = checkTtl(problems, 'x509_ttl', input.x509TtlMs, opts.defaultX509TtlMs, opts.maxX509TtlMs);
  const jwtTtlMs = checkTtl(problems, 'jwt_ttl', input.jwtTtlMs, opts.defaultJwtTtlMs, opts.maxJwtTtlMs);

  const hint = input.hint ?? '';
  if (Buffer.byteLength(hint, 'utf8') > MAX_HINT_BYTES) problems.add(`hint must be at most ${MAX_HINT_BYTES} bytes`);
  if (/[\u0000-\u001f\u007f]/.test(hint)) problems.add('hint must not contain control characters');

  const dnsNames: string[] = [];
  for (const name of input.dnsNames ?? []) {
    const problem = dnsNameProblem(name);
    if (problem) problems.add(`dns_name "${name.length > 80 ? `${name.slice(0, 80)}...` : name}" ${problem}`);
    else if (!dnsNames.includes(name)) dnsNames.push(name);
  }

  const federatesWith: string[] = [];
  for (const text of input.federatesWith ?? []) {
    try {
      const other = TrustDomain.parse(text);
      // Our own bundle under federated_bundles would overwrite the real one in go-spiffe.
      if (other.equals(td)) problems.add(`federates_with must not name the own trust domain ${td.name}`);
      else if (!federatesWith.includes(other.name)) federatesWith.push(other.name);
    } catch (err) {
      problems.add(`federates_with: ${ruleOf(err)}`);
    }
  }

  const expiresAt = input.expiresAt ?? null;
  if (expiresAt !== null && (!Number.isSafeInteger(expiresAt) || expiresAt <= opts.now)) {
    problems.add('expires_at must be in the future');
  }

  const node = input.node ?? null;
  if (node !== null && !isNodeName(node)) problems.add(`node "${node.slice(0, 140)}" must be a SPIFFE ID path segment (letters, digits, ".", "_", "-")`);

  problems.throwIfAny('entry');
  return {
    id,
    spiffeId,
    selectors: normalizeSelectors(selectors),
    x509TtlMs,
    jwtTtlMs,
    hint,
    dnsNames,
    federatesWith,
    includeTasks: input.includeTasks === true,
    expiresAt,
    node,
  };
}
