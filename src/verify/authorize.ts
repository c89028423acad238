import { invalidArgument } from '../common/errors.js';
import { SpiffeId, TrustDomain } from '../spiffe/spiffe-id.js';

export type AuthorizeResult = { ok: true } | { ok: false; reason: string };
/** Decides whether an authenticated peer may proceed. Pure and synchronous. */
export type Authorizer = (id: SpiffeId) => AuthorizeResult;

const OK: AuthorizeResult = Object.freeze({ ok: true });
const deny = (reason: string): AuthorizeResult => ({ ok: false, reason });

const toId = (id: SpiffeId | string) => (typeof id === 'string' ? SpiffeId.parse(id) : id);
const toTd = (td: TrustDomain | string) => (typeof td === 'string' ? TrustDomain.parse(td) : td);

/** Any authenticated SPIFFE ID. Authentication still applies; use only where identity is merely logged. */
export function authorizeAny(): Authorizer {
  return () => OK;
}

export function authorizeId(expected: SpiffeId | string): Authorizer {
  const want = toId(expected);
  return (id) => (id.equals(want) ? OK : deny(`${id} is not ${want}`));
}

export function authorizeOneOf(...expected: (SpiffeId | string)[]): Authorizer {
  const wants = expected.map(toId);
  return (id) => (wants.some((w) => w.equals(id)) ? OK : deny(`${id} is not one of the allowed IDs`));
}

export function authorizeMemberOf(trustDomain: TrustDomain | string): Authorizer {
  const td = toTd(trustDomain);
  return (id) => (id.isMemberOf(td) ? OK : deny(`${id} is not in trust domain ${td.name}`));
}

/**
 * IDs in `trustDomain` whose path is `prefix` or lies below it on a segment boundary:
 * "/agent/a" matches /agent/a and /agent/a/task/t, never /agent/ab or /agent/a-b.
 */
export function authorizePathPrefix(trustDomain: TrustDomain | string, prefix: string): Authorizer {
  const td = toTd(trustDomain);
  // Validates the prefix as a path; a trailing slash would make it match nothing sensible.
  const normalised = prefix === '/' || prefix === '' ? '' : SpiffeId.parse(`${td.idString}${prefix}`).path;
  return (id) => {
    if (!id.isMemberOf(td)) return deny(`${id} is not in trust domain ${td.name}`);
    if (normalised === '') return OK;
    return id.path === normalised || id.path.startsWith(`${normalised}/`) ? OK : deny(`${id} is not under ${normalised}`);
  };
}

/** Exactly spiffe://<td>/agent/<agent>/task/<task>, for any single task segment. */
export function authorizeTaskOf(trustDomain: TrustDomain | string, agent: string): Authorizer {
  const td = toTd(trustDomain);
  if (agent.includes('/')) throw invalidArgument(`authorizeTaskOf: agent "${agent}" must be a single path segment`);
  SpiffeId.fromSegments(td, 'agent', agent);
  return (id) => {
    const s = id.segments;
    if (id.isMemberOf(td) && s.length === 4 && s[0] === 'agent' && s[1] === agent && s[2] === 'task') return OK;
    return deny(`${id} is not a task of agent ${agent} in ${td.name}`);
  };
}

export function allOf(...authorizers: Authorizer[]): Authorizer {
  return (id) => {
    for (const a of authorizers) {
      const r = a(id);
      if (!r.ok) return r;
    }
    return OK;
  };
}

/** At least one must allow; with none given, nothing is allowed. */
export function anyOf(...authorizers: Authorizer[]): Authorizer {
  return (id) => {
    const reasons: string[] = [];
    for (const a of authorizers) {
      const r = a(id);
      if (r.ok) return OK;
      reasons.push(r.reason);
    }
    return deny(reasons.length === 0 ? 'no authorizer allows it' : reasons.join('; '));
  };
}

export function not(authorizer: Authorizer, reason = 'explicitly excluded'): Authorizer {
  return (id) => (authorizer(id).ok ? deny(`${id}: ${reason}`) : OK);
}
