import { describe, expect, it } from 'vitest';
import { isAgentIdError } from '../common/errors.js';
import { TrustDomain } from '../spiffe/spiffe-id.js';
import { validateEntryInput, type EntryInput, type EntryValidationOptions } from './validate.js';

const NOW = Date.UTC(2026, 0, 1);
const OPTS: EntryValidationOptions = {
  trustDomain: TrustDomain.parse('example.org'),
  maxX509TtlMs: 24 * 3_600_000,
  maxJwtTtlMs: 3_600_000,
  defaultX509TtlMs: 3_600_000,
  defaultJwtTtlMs: 300_000,
  now: NOW,
  newId: () => 'fixed-id',
};

const valid: EntryInput = {
  spiffeId: 'spiffe://example.org/agent/a1',
  selectors: ['unix:uid:1000', 'unix:path:/usr/bin/python3'],
};

function problemsOf(input: Partial<EntryInput>, opts: Partial<EntryValidationOptions> = {}): string {
  try {
    validateEntryInput({ ...valid, ...input }, { ...OPTS, ...opts });
  } catch (err) {
    if (isAgentIdError(err, 'invalid_argument')) return err.message;
    throw err;
  }
  throw new Error('expected the input to be rejected');
}

describe('validateEntryInput', () => {
  it('returns the canonical record with defaults filled in', () => {
    expect(validateEntryInput(valid, OPTS)).toEqual({
      id: 'fixed-id',
      spiffeId: 'spiffe://example.org/agent/a1',
      selectors: [
        { type: 'unix', value: 'path:/usr/bin/python3' },
        { type: 'unix', value: 'uid:1000' },
      ],
      x509TtlMs: 3_600_000,
      jwtTtlMs: 300_000,
      hint: '',
      dnsNames: [],
      federatesWith: [],
      includeTasks: false,
      expiresAt: null,
      node: null,
    });
  });

  it('keeps given values, accepts parsed selectors, and de-duplicates lists', () => {
    const entry = validateEntryInput(
      {
        id: 'existing-entry',
        spiffeId: 'spiffe://example.org/svc/web',
        selectors: [{ type: 'unix', value: 'uid:1000' }, 'unix:uid:1000'],
        x509TtlMs: 60_000,
        jwtTtlMs: 0,
        hint: 'external',
        dnsNames: ['web.example.org', 'web.example.org', 'localhost'],
        federatesWith: ['partner.org', 'spiffe://partner.org', 'other.net'],
        expiresAt: NOW + 1,
      },
      OPTS,
    );
    expect(entry).toEqual({
      id: 'existing-entry',
      spiffeId: 'spiffe://example.org/svc/web',
      selectors: [{ type: 'unix', value: 'uid:1000' }],
      x509TtlMs: 60_000,
      jwtTtlMs: 300_000,
      hint: 'external',
      dnsNames: ['web.example.org', 'localhost'],
      federatesWith: ['partner.org', 'other.net'],
      includeTasks: false,
      expiresAt: NOW + 1,
      node: null,
    });
  });

  it('mints a fresh UUID when no id is given and no generator is pinned', () => {
    const { newId: _, ...opts } = OPTS;
    const a = validateEntryInput(valid, opts).id;
    expect(a).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(validateEntryInput(valid, opts).id).not.toBe(a);
  });

  // [defect, input, options, expected rule in the message]
  const cases: Array<[string, Partial<EntryInput>, Partial<EntryValidationOptions>, RegExp]> = [
    ['spiffe-id-unparsable', { spiffeId: 'https://example.org/a' }, {}, /spiffe_id: SPIFFE ID .*scheme must be "spiffe:\/\/"/],
    ['spiffe-id-foreign-trust-domain', { spiffeId: 'spiffe://evil.org/a' }, {}, /spiffe_id must be in trust domain example\.org/],
    ['spiffe-id-is-trust-domain', { spiffeId: 'spiffe://example.org' }, {}, /spiffe_id must have a path/],
    ['spiffe-id-task-identity', { spiffeId: 'spiffe://example.org/agent/a1/task/t1' }, {}, /must not be under \/agent\/<agent>\/task/],
    ['spiffe-id-below-task-identity', { spiffeId: 'spiffe://example.org/agent/a1/task/t1/x' }, {}, /must not be under \/agent/],
    ['spiffe-id-task-prefix-itself', { spiffeId: 'spiffe://example.org/agent/a1/task' }, {}, /must not be under \/agent/],
    ['no-selectors', { selectors: [] }, {}, /at least one selector is required/],
    ['selector-without-type', { selectors: ['uid1000'] }, {}, /selector "uid1000": must be type:value/],
    ['selector-object-with-bad-type', { selectors: [{ type: 'Unix', value: 'uid:1' }] }, {}, /type "Unix" must be lowercase/],
    // Selectors the attestor can never produce would never match: refused, naming the known kinds.
    ['selector-kind-missing', { selectors: ['uid:0'] }, {}, /selector "uid:0": unknown kind; known: unix:uid:<value>, unix:gid:<value>/],
    ['selector-unknown-key', { selectors: ['unix:uidd:0'] }, {}, /selector "unix:uidd:0": unknown kind; known: .*unix:cgroup:<value>/],
    ['selector-unknown-type', { selectors: ['k8s:ns:default'] }, {}, /selector "k8s:ns:default": unknown kind/],
    ['selector-uid-not-a-number', { selectors: ['unix:uid:abc'] }, {}, /selector "unix:uid:abc": the value must be a decimal user ID/],
    ['selector-uid-leading-zero', { selectors: ['unix:uid:0100'] }, {}, /must be a decimal user ID/],
    ['selector-uid-out-of-range', { selectors: ['unix:uid:4294967295'] }, {}, /must be a decimal user ID/],
    ['selector-gid-negative', { selectors: ['unix:gid:-1'] }, {}, /must be a decimal group ID/],
    ['selector-path-relative', { selectors: ['unix:path:python3'] }, {}, /must be an absolute executable path/],
    ['selector-sha256-uppercase', { selectors: [`unix:sha256:${'A'.repeat(64)}`] }, {}, /64 lowercase hex digits/],
    ['selector-cgroup-relative', { selectors: ['unix:cgroup:agents/a1'] }, {}, /absolute cgroup v2 path/],
    ['x509-ttl-over-cap', { x509TtlMs: 25 * 3_600_000 }, {}, /x509_ttl 90000000ms exceeds the maximum of 86400000ms/],
    ['jwt-ttl-over-cap', { jwtTtlMs: 2 * 3_600_000 }, {}, /jwt_ttl 7200000ms exceeds the maximum/],
    ['x509-ttl-negative', { x509TtlMs: -1000 }, {}, /x509_ttl must be a whole number of milliseconds of at least 1s/],
    ['x509-ttl-fractional', { x509TtlMs: 1500.5 }, {}, /x509_ttl must be a whole number/],
    ['jwt-ttl-sub-second', { jwtTtlMs: 999 }, {}, /jwt_ttl must be a whole number of milliseconds of at least 1s/],
    ['ttl-missing-without-default', {}, { defaultX509TtlMs: undefined }, /x509_ttl is required/],
    ['hint-too-long', { hint: 'é'.repeat(513) }, {}, /hint must be at most 1024 bytes/],
    ['hint-control-character', { hint: 'a\nb' }, {}, /hint must not contain control characters/],
    ['dns-uppercase', { dnsNames: ['Web.example.org'] }, {}, /dns_name "Web.example.org" must be lowercase/],
    ['dns-wildcard', { dnsNames: ['*.example.org'] }, {}, /must not be a wildcard/],
    ['dns-empty-label', { dnsNames: ['a..b'] }, {}, /has an empty label/],
    ['dns-trailing-dot', { dnsNames: ['a.b.'] }, {}, /has an empty label/],
    ['dns-leading-hyphen', { dnsNames: ['-a.example.org'] }, {}, /label "-a" must be/],
    ['dns-underscore', { dnsNames: ['a_b.example.org'] }, {}, /label "a_b" must be/],
    ['dns-label-64', { dnsNames: [`${'a'.repeat(64)}.org`] }, {}, /label longer than 63/],
    ['dns-name-254', { dnsNames: [`${'a'.repeat(63)}.`.repeat(4).slice(0, 254)] }, {}, /longer than 253/],
    ['dns-ip-address', { dnsNames: ['10.0.0.1'] }, {}, /must not be an IP address/],
    ['dns-empty', { dnsNames: [''] }, {}, /dns_name "" is empty/],
    ['federates-with-own', { federatesWith: ['spiffe://example.org'] }, {}, /must not name the own trust domain/],
    ['federates-with-bad', { federatesWith: ['Partner.org'] }, {}, /federates_with: trust domain .*must be lowercase/],
    ['expires-at-past', { expiresAt: NOW - 1 }, {}, /expires_at must be in the future/],
    ['expires-at-now', { expiresAt: NOW }, {}, /expires_at must be in the future/],
    ['id-with-slash', { id: 'a/b' }, {}, /id must be 1-128 characters/],
    ['too-many-selectors', { selectors: Array.from({ length: 65 }, (_, i) => `unix:uid:${i}`) }, {}, /at most 64 selectors/],
  ];

  it.each(cases)('rejects %s', (_defect, input, opts, rule) => {
    const message = problemsOf(input, opts);
    expect(message.startsWith('entry: ')).toBe(true);
    expect(message).toMatch(rule);
  });

  it('accepts the edges of every limit', () => {
    const entry = validateEntryInput(
      {
        ...valid,
        spiffeId: 'spiffe://example.org/agent/a1/tasks/t1',
        x509TtlMs: OPTS.maxX509TtlMs,
        jwtTtlMs: 1000,
        hint: 'é'.repeat(512),
        dnsNames: [`${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(63)}.${'d'.repeat(61)}`, 'xn--bcher-kva.example', '1a.example.org'],
        expiresAt: NOW + 1,
      },
      OPTS,
    );
    expect(entry.dnsNames[0]).toHaveLength(253);
    expect(entry.x509TtlMs).toBe(OPTS.maxX509TtlMs);
  });

  it('reports every problem at once', () => {
    const message = problemsOf({
      spiffeId: 'spiffe://evil.org/x',
      selectors: ['bad', 'unix:'],
      x509TtlMs: -1,
      dnsNames: ['UPPER'],
      federatesWith: ['example.org'],
      expiresAt: NOW - 1,
    });
    const problems = message.slice('entry: '.length).split('; ');
    expect(problems).toHaveLength(7);
    expect(message).toMatch(/spiffe_id must be in trust domain/);
    expect(message).toMatch(/selector "bad"/);
    expect(message).toMatch(/selector "unix:"/);
    expect(message).toMatch(/x509_ttl/);
    expect(message).toMatch(/dns_name "UPPER"/);
    expect(message).toMatch(/federates_with/);
    expect(message).toMatch(/expires_at/);
  });
});
