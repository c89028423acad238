import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isAgentIdError } from '../common/errors.js';
import { splitDer, toPem } from './der.js';
import { backoffDelay, DEFAULT_BACKOFF } from './follow.js';
import { createTestPki, type TestPki, type TestSvid } from './test-support/pki.js';

let pki: TestPki;
let svid: TestSvid;
let dir: string;

beforeAll(async () => {
  pki = await createTestPki();
  svid = await pki.issue('spiffe://example.org/agent/a');
  dir = mkdtempSync(join(tmpdir(), 'agentid-der-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('splitDer', () => {
  it('splits a concatenated chain back into the original certificates, byte for byte', () => {
    const parts = splitDer(Buffer.concat(svid.chain), 'chain');
    expect(parts).toHaveLength(2);
    expect(parts[0]!.equals(svid.chain[0]!)).toBe(true);
    expect(parts[1]!.equals(svid.chain[1]!)).toBe(true);
  });

  it('returns nothing for empty input', () => {
    expect(splitDer(Buffer.alloc(0), 'chain')).toEqual([]);
  });

  it('handles short-form lengths', () => {
    expect(splitDer(Buffer.from([0x30, 0x02, 0x05, 0x00, 0x30, 0x00]), 'x')).toHaveLength(2);
  });

  const cert = () => svid.chain[0]!;
  it.each<[string, () => Buffer, RegExp]>([
    ['trailing-garbage', () => Buffer.concat([cert(), Buffer.from([0x00])]), /element 1 at byte \d+ is not a DER SEQUENCE/],
    ['truncated-last-cert', () => Buffer.concat([cert(), cert().subarray(0, 40)]), /element 1 is truncated/],
    ['pem-instead-of-der', () => Buffer.from(toPem(cert(), 'CERTIFICATE')), /element 0 at byte 0 is not a DER SEQUENCE/],
    ['indefinite-length', () => Buffer.from([0x30, 0x80, 0x00, 0x00]), /indefinite length/],
    ['non-minimal-long-length', () => Buffer.from([0x30, 0x81, 0x05, 1, 2, 3, 4, 5]), /non-minimal length/],
    ['leading-zero-length-byte', () => Buffer.from([0x30, 0x82, 0x00, 0x85, ...new Array(0x85).fill(0)]), /non-minimal length/],
    ['oversized-length-field', () => Buffer.from([0x30, 0x85, 1, 0, 0, 0, 0]), /oversized length field/],
    ['length-bytes-cut-off', () => Buffer.from([0x30, 0x82, 0x01]), /truncated/],
    ['tag-only', () => Buffer.from([0x30]), /truncated/],
  ])('rejects %s', (_name, make, message) => {
    let caught: unknown;
    try {
      splitDer(make(), 'chain');
    } catch (err) {
      caught = err;
    }
    expect(isAgentIdError(caught, 'invalid_argument')).toBe(true);
    expect((caught as Error).message).toMatch(message);
  });
});

describe('toPem', () => {
  it('writes a chain that openssl reads back as the same certificates', () => {
    const file = join(dir, 'chain.pem');
    writeFileSync(file, toPem(svid.chain, 'CERTIFICATE'));
    const out = execFileSync('openssl', ['storeutl', '-noout', '-certs', file], { encoding: 'utf8' });
    expect(out).toMatch(/Total found: 2/);
    const der = execFileSync('openssl', ['x509', '-in', file, '-outform', 'DER']);
    expect(der.equals(svid.chain[0]!)).toBe(true);
  });

  it('writes a PKCS#8 key openssl accepts, and a CRL openssl accepts', () => {
    const keyFile = join(dir, 'key.pem');
    writeFileSync(keyFile, toPem(svid.keyPkcs8, 'PRIVATE KEY'));
    execFileSync('openssl', ['pkey', '-in', keyFile, '-noout']);
    const crlFile = join(dir, 'crl.pem');
    writeFileSync(crlFile, toPem([pki.crl], 'X509 CRL'));
    expect(execFileSync('openssl', ['crl', '-in', crlFile, '-noout', '-text'], { encoding: 'utf8' })).toMatch(/FF01/);
  });

  it('wraps base64 at 64 characters', () => {
    const pem = toPem(svid.chain[0]!, 'CERTIFICATE');
    const body = pem.split('\n').slice(1, -2);
    expect(body.slice(0, -1).every((l) => l.length === 64)).toBe(true);
    expect(body.at(-1)!.length).toBeLessThanOrEqual(64);
  });
});

describe('backoffDelay', () => {
  const opts = DEFAULT_BACKOFF;
  it.each([
    [0, 0, 125],
    [0, 0.999999, 249],
    [1, 0, 250],
    [3, 0.5, 1500],
    [7, 0, 15_000],
    [8, 0, 15_000], // 250 * 2^8 = 64 s is capped at 30 s
    [8, 1, 30_000],
    [1000, 0.5, 22_500], // huge attempt counts do not overflow
  ])('attempt %d, random %d -> %d ms', (attempt, random, expected) => {
    expect(backoffDelay(attempt, opts, () => random)).toBe(expected);
  });

  it('clamps a misbehaving random source into [ceiling/2, ceiling]', () => {
    expect(backoffDelay(0, opts, () => -5)).toBe(125);
    expect(backoffDelay(0, opts, () => 7)).toBe(250);
  });
});
