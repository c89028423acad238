import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { formatJti, JTI_BYTES } from '../ca/jwt.js';
import { assertAuditSafe } from './redaction.js';

/**
 * 16 random bytes, half of the time starting with '{"': base64url spells that "eyJ", the start of
 * a JWT, which is how roughly one random base64url jti in 50,000 tripped the token guard.
 */
const jtiBytes = fc
  .tuple(fc.uint8Array({ minLength: JTI_BYTES, maxLength: JTI_BYTES }), fc.boolean())
  .map(([bytes, jsonStart]) => {
    const out = Buffer.from(bytes);
    if (jsonStart) out.set([0x7b, 0x22], 0);
    return out;
  });

const serialBytes = fc.uint8Array({ minLength: 1, maxLength: 20 }).map((b) => Buffer.from(b));

function jwtIssued(jti: string) {
  return {
    type: 'svid.issued', outcome: 'ok', kind: 'jwt', spiffe_id: 'spiffe://example.org/a', jti, audience: ['x'],
    pid: 1, uid: 0, selectors: ['unix:uid:0'], not_after: 0,
  };
}

describe('audit redaction of agentid identifiers', () => {
  it('never refuses a jti agentid mints (property)', () => {
    fc.assert(
      fc.property(jtiBytes, (bytes) => {
        expect(() => assertAuditSafe(jwtIssued(formatJti(bytes)))).not.toThrow();
      }),
      { numRuns: 2000 },
    );
  });

  it('never refuses an X.509 serial or previous serial (property)', () => {
    fc.assert(
      fc.property(serialBytes, serialBytes, (a, b) => {
        const event = { type: 'svid.rotated', kind: 'x509', spiffe_id: 'spiffe://example.org/a', serial: a.toString('hex'), previous_serial: b.toString('hex'), reason: 'half_life', not_after: 0 };
        expect(() => assertAuditSafe(event)).not.toThrow();
      }),
      { numRuns: 2000 },
    );
  });

  it.each([
    ['a JWT in the jti field', 'eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln'],
    ['base64url (the old jti format)', 'eyJ3ZXJ0eXVpb3Bhc2RmZw'],
    ['upper-case hex', 'ABCDEF0123456789ABCDEF0123456789'],
    ['a number', 12345],
  ])('checks identifier fields by their type: refuses %s', (_name, jti) => {
    expect(() => assertAuditSafe(jwtIssued(jti as string))).toThrow(/jti is not an agentid identifier/);
  });

  it('still applies the token patterns to every other field', () => {
    expect(() => assertAuditSafe({ ...jwtIssued(formatJti(Buffer.alloc(16))), audience: ['eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln'] })).toThrow(/looks like a JWT/);
  });
});
