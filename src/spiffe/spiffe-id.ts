import { invalidArgument } from '../common/errors.js';

/*
 * SPIFFE IDs and trust domains per the SPIFFE-ID standard:
 *   trust domain: [a-z0-9._-]+, at most 255 characters (lowercase only; no port, no userinfo)
 *   path segments: [a-zA-Z0-9._-]+, no empty, "." or ".." segment, no trailing slash
 *   whole ID: at most 2048 bytes, scheme exactly "spiffe", no query, fragment or percent-encoding
 * The character classes are written with "-" last on purpose (see shared/spec/pitfalls.md).
 */
const SCHEME_PREFIX = 'spiffe://';
const TRUST_DOMAIN_CHARS = /^[a-z0-9._-]+$/;
const SEGMENT_CHARS = /^[a-zA-Z0-9._-]+$/;
export const MAX_TRUST_DOMAIN_LENGTH = 255;
export const MAX_SPIFFE_ID_LENGTH = 2048;

function describeBadChar(text: string, allowed: RegExp): string {
  for (const ch of text) {
    if (!allowed.test(ch)) return JSON.stringify(ch);
  }
  return 'an unknown character';
}

function checkTrustDomainName(name: string, what: string): void {
  if (name.length === 0) throw invalidArgument(`${what}: trust domain is empty`);
  if (name.length > MAX_TRUST_DOMAIN_LENGTH) {
    throw invalidArgument(`${what}: trust domain is longer than ${MAX_TRUST_DOMAIN_LENGTH} characters`);
  }
  if (/[A-Z]/.test(name)) throw invalidArgument(`${what}: trust domain must be lowercase`);
  if (name.includes(':')) throw invalidArgument(`${what}: trust domain must not contain a port`);
  if (name.includes('@')) throw invalidArgument(`${what}: trust domain must not contain userinfo`);
  if (name.includes('%')) throw invalidArgument(`${what}: percent-encoding is not allowed`);
  if (!TRUST_DOMAIN_CHARS.test(name)) {
    throw invalidArgument(
      `${what}: trust domain contains ${describeBadChar(name, /[a-z0-9._-]/)}; only a-z, 0-9, ".", "_" and "-" are allowed`,
    );
  }
}

export class TrustDomain {
  private constructor(readonly name: string) {}

  /** Accepts a bare name ("example.org") or the trust domain's SPIFFE ID ("spiffe://example.org"). */
  static parse(text: string): TrustDomain {
    if (text.includes('://')) {
      const id = SpiffeId.parse(text);
      if (id.path !== '') throw invalidArgument(`trust domain "${text}": must not have a path`);
      return id.trustDomain;
    }
    checkTrustDomainName(text, `trust domain "${text}"`);
    return new TrustDomain(text);
  }

  /** @internal used by SpiffeId after it has validated the name. */
  static fromValidated(name: string): TrustDomain {
    return new TrustDomain(name);
  }

  /** spiffe://<name>, the form used as a Workload API map key. */
  get idString(): string {
    return `${SCHEME_PREFIX}${this.name}`;
  }

  equals(other: TrustDomain): boolean {
    return this.name === other.name;
  }

  toString(): string {
    return this.name;
  }

  toJSON(): string {
    return this.name;
  }
}

export class SpiffeId {
  /** The ID as text, made once: it keys maps and sets on every stream's recompute. */
  private readonly text: string;

  private constructor(
    readonly trustDomain: TrustDomain,
    /** "" for the trust domain itself, otherwise "/seg/seg". */
    readonly path: string,
  ) {
    this.text = `${SCHEME_PREFIX}${trustDomain.name}${path}`;
  }

  static parse(text: string): SpiffeId {
    const what = `SPIFFE ID "${text.length > 80 ? `${text.slice(0, 80)}...` : text}"`;
    if (text.length === 0) throw invalidArgument('SPIFFE ID is empty');
    if (Buffer.byteLength(text, 'utf8') > MAX_SPIFFE_ID_LENGTH) {
      throw invalidArgument(`${what}: longer than ${MAX_SPIFFE_ID_LENGTH} bytes`);
    }
    if (!text.startsWith(SCHEME_PREFIX)) {
      if (text.toLowerCase().startsWith(SCHEME_PREFIX)) throw invalidArgument(`${what}: scheme must be lowercase "spiffe"`);
      throw invalidArgument(`${what}: scheme must be "spiffe://"`);
    }
    const rest = text.slice(SCHEME_PREFIX.length);
    if (rest.includes('?')) throw invalidArgument(`${what}: query is not allowed`);
    if (rest.includes('#')) throw invalidArgument(`${what}: fragment is not allowed`);
    if (rest.includes('%')) throw invalidArgument(`${what}: percent-encoding is not allowed`);
    const slash = rest.indexOf('/');
    const tdName = slash === -1 ? rest : rest.slice(0, slash);
    const path = slash === -1 ? '' : rest.slice(slash);
    checkTrustDomainName(tdName, what);
    SpiffeId.checkPath(path, what);
    return new SpiffeId(TrustDomain.fromValidated(tdName), path);
  }

  /** Builds an ID from a trust domain and path segments, validating each segment. */
  static fromSegments(trustDomain: TrustDomain, ...segments: string[]): SpiffeId {
    const path = segments.map((s) => `/${s}`).join('');
    const what = `SPIFFE ID path "${path}"`;
    SpiffeId.checkPath(path, what);
    const id = new SpiffeId(trustDomain, path);
    if (Buffer.byteLength(id.toString(), 'utf8') > MAX_SPIFFE_ID_LENGTH) {
      throw invalidArgument(`${what}: longer than ${MAX_SPIFFE_ID_LENGTH} bytes`);
    }
    return id;
  }

  private static checkPath(path: string, what: string): void {
    if (path === '') return;
    if (path === '/') throw invalidArgument(`${what}: path must not end with "/"`);
    const segments = path.slice(1).split('/');
    segments.forEach((segment, i) => {
      if (segment === '') {
        throw invalidArgument(
          i === segments.length - 1 ? `${what}: path must not end with "/"` : `${what}: path has an empty segment`,
        );
      }
      if (segment === '.' || segment === '..') {
        throw invalidArgument(`${what}: path must not contain "${segment}" segments`);
      }
      if (!SEGMENT_CHARS.test(segment)) {
        throw invalidArgument(
          `${what}: path contains ${describeBadChar(segment, /[a-zA-Z0-9._-]/)}; only letters, digits, ".", "_" and "-" are allowed`,
        );
      }
    });
  }

  get segments(): string[] {
    return this.path === '' ? [] : this.path.slice(1).split('/');
  }

  isMemberOf(td: TrustDomain): boolean {
    return this.trustDomain.equals(td);
  }

  /** True when this ID equals `prefix` or lies below it on a segment boundary (/agent/a never matches /agent/ab). */
  hasPathPrefix(prefix: string): boolean {
    return this.path === prefix || this.path.startsWith(prefix.endsWith('/') ? prefix : `${prefix}/`);
  }

  equals(other: SpiffeId): boolean {
    return this.trustDomain.equals(other.trustDomain) && this.path === other.path;
  }

  toString(): string {
    return this.text;
  }

  toJSON(): string {
    return this.toString();
  }
}

/** Per-task identity path: /agent/<agent>/task/<task-id>. */
export function taskSpiffeId(td: TrustDomain, agent: string, taskId: string): SpiffeId {
  return SpiffeId.fromSegments(td, 'agent', agent, 'task', taskId);
}

/** Reads back the agent and task of a per-task SPIFFE ID, or undefined for any other ID. */
export function parseTaskSpiffeId(id: SpiffeId): { agent: string; task: string } | undefined {
  const s = id.segments;
  if (s.length === 4 && s[0] === 'agent' && s[2] === 'task') return { agent: s[1]!, task: s[3]! };
  return undefined;
}

/** A node name: one SPIFFE ID path segment (letters, digits, ".", "_", "-"; not "." or ".."), at most 128 characters. */
export function isNodeName(name: string): boolean {
  return name.length <= 128 && SEGMENT_CHARS.test(name) && name !== '.' && name !== '..';
}

/** A per-host agent's identity: /agentid/node/<name>. */
export function nodeSpiffeId(td: TrustDomain, node: string): SpiffeId {
  return SpiffeId.fromSegments(td, 'agentid', 'node', node);
}

/** Reads back the node name of a node SPIFFE ID, or undefined for any other ID. */
export function parseNodeSpiffeId(id: SpiffeId): string | undefined {
  const s = id.segments;
  if (s.length === 3 && s[0] === 'agentid' && s[1] === 'node') return s[2]!;
  return undefined;
}
