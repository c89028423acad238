import { describe, expect, it } from 'vitest';
import { SpiffeId } from '../spiffe/spiffe-id.js';
import {
  allOf,
  anyOf,
  authorizeAny,
  authorizeId,
  authorizeMemberOf,
  authorizeOneOf,
  authorizePathPrefix,
  authorizeTaskOf,
  not,
  type Authorizer,
} from './authorize.js';

const check = (a: Authorizer, id: string) => a(SpiffeId.parse(id)).ok;

describe('authorizers', () => {
  it.each<[string, Authorizer, string, boolean]>([
    ['any', authorizeAny(), 'spiffe://x.org/a', true],
    ['id equal', authorizeId('spiffe://example.org/svc/api'), 'spiffe://example.org/svc/api', true],
    ['id other path', authorizeId('spiffe://example.org/svc/api'), 'spiffe://example.org/svc/api2', false],
    ['id other domain', authorizeId('spiffe://example.org/svc/api'), 'spiffe://other.org/svc/api', false],
    ['id path case-sensitive', authorizeId('spiffe://example.org/svc/api'), 'spiffe://example.org/svc/API', false],
    ['oneOf hit', authorizeOneOf('spiffe://example.org/a', 'spiffe://example.org/b'), 'spiffe://example.org/b', true],
    ['oneOf miss', authorizeOneOf('spiffe://example.org/a', 'spiffe://example.org/b'), 'spiffe://example.org/c', false],
    ['oneOf empty', authorizeOneOf(), 'spiffe://example.org/c', false],
    ['memberOf', authorizeMemberOf('example.org'), 'spiffe://example.org/anything', true],
    ['memberOf other', authorizeMemberOf('example.org'), 'spiffe://example.org.evil/anything', false],
    ['prefix equal', authorizePathPrefix('example.org', '/agent/a'), 'spiffe://example.org/agent/a', true],
    ['prefix below', authorizePathPrefix('example.org', '/agent/a'), 'spiffe://example.org/agent/a/task/t', true],
    ['prefix sibling ab', authorizePathPrefix('example.org', '/agent/a'), 'spiffe://example.org/agent/ab', false],
    ['prefix sibling a-b', authorizePathPrefix('example.org', '/agent/a'), 'spiffe://example.org/agent/a-b', false],
    ['prefix sibling a.b', authorizePathPrefix('example.org', '/agent/a'), 'spiffe://example.org/agent/a.b', false],
    ['prefix other domain', authorizePathPrefix('example.org', '/agent/a'), 'spiffe://other.org/agent/a', false],
    ['prefix root allows domain', authorizePathPrefix('example.org', '/'), 'spiffe://example.org/x', true],
    ['task exact', authorizeTaskOf('example.org', 'a1'), 'spiffe://example.org/agent/a1/task/t1', true],
    ['task of other agent', authorizeTaskOf('example.org', 'a1'), 'spiffe://example.org/agent/a12/task/t1', false],
    ['task agent itself', authorizeTaskOf('example.org', 'a1'), 'spiffe://example.org/agent/a1', false],
    ['task too deep', authorizeTaskOf('example.org', 'a1'), 'spiffe://example.org/agent/a1/task/t1/x', false],
    ['task wrong word', authorizeTaskOf('example.org', 'a1'), 'spiffe://example.org/agent/a1/tasks/t1', false],
    ['task other domain', authorizeTaskOf('example.org', 'a1'), 'spiffe://other.org/agent/a1/task/t1', false],
    ['allOf both', allOf(authorizeMemberOf('example.org'), authorizePathPrefix('example.org', '/agent')), 'spiffe://example.org/agent/x', true],
    ['allOf one fails', allOf(authorizeMemberOf('example.org'), authorizePathPrefix('example.org', '/agent')), 'spiffe://example.org/svc/x', false],
    ['allOf empty', allOf(), 'spiffe://example.org/svc/x', true],
    ['anyOf one', anyOf(authorizeId('spiffe://example.org/a'), authorizeId('spiffe://example.org/b')), 'spiffe://example.org/b', true],
    ['anyOf none', anyOf(authorizeId('spiffe://example.org/a'), authorizeId('spiffe://example.org/b')), 'spiffe://example.org/c', false],
    ['anyOf empty', anyOf(), 'spiffe://example.org/c', false],
    ['not excludes', allOf(authorizeMemberOf('example.org'), not(authorizeId('spiffe://example.org/bad'))), 'spiffe://example.org/bad', false],
    ['not passes others', allOf(authorizeMemberOf('example.org'), not(authorizeId('spiffe://example.org/bad'))), 'spiffe://example.org/good', true],
  ])('%s', (_name, authorizer, id, expected) => {
    expect(check(authorizer, id)).toBe(expected);
  });

  it('denials carry a reason naming the ID', () => {
    const r = authorizeTaskOf('example.org', 'a1')(SpiffeId.parse('spiffe://example.org/agent/a2/task/t'));
    expect(r).toEqual({ ok: false, reason: expect.stringContaining('spiffe://example.org/agent/a2/task/t') });
  });

  it('refuses malformed configuration at construction', () => {
    expect(() => authorizePathPrefix('example.org', '/agent/a/')).toThrow(/must not end with/);
    expect(() => authorizeTaskOf('example.org', 'a/b')).toThrow();
    expect(() => authorizeId('https://example.org/x')).toThrow();
    expect(() => authorizeMemberOf('Example.org')).toThrow();
  });
});
