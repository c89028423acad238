import { describe, expect, it } from 'vitest';
import { workloadServiceDefinition } from './encode.js';
import { malformation, MalformedRequest, strictRequests } from './strict-input.js';

/** JWTSVIDRequest's rules: repeated string audience = 1; string spiffe_id = 2. */
const JWT_SVID_REQUEST = new Map([
  [1, { name: 'audience', repeated: true }],
  [2, { name: 'spiffe_id', repeated: false }],
]);

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

describe('strict Workload API request bytes', () => {
  it.each([
    ['an empty message', ''],
    ['two audiences and a SPIFFE ID', '0a 01 61  0a 01 62  12 03 61 62 63'],
    ['a well-formed unknown varint field', '0a 01 61  18 96 01'],
    ['well-formed unknown fixed32, fixed64 and bytes fields', '25 01 02 03 04  29 0102030405060708  32 02 ff ff'],
  ])('accepts %s', (_name, bytes) => {
    expect(malformation(hex(bytes), JWT_SVID_REQUEST)).toBeUndefined();
  });

  it.each([
    ['a known string field sent as a varint (became audience "\\x02")', '08 02', /audience: wrong wire type 0/],
    ['a known field as fixed32', '0d 01 02 03 04', /wrong wire type 5/],
    ['a truncated length-delimited field', '0a 05 61 62', /truncated length-delimited/],
    ['a truncated tag', '80', /truncated field tag/],
    ['a truncated varint', '18 ff', /truncated varint/],
    ['a truncated fixed64', '29 01 02', /truncated fixed-width/],
    ['an over-long varint', '18 ff ff ff ff ff ff ff ff ff ff 01', /truncated varint/],
    ['field number 0', '02 00', /invalid field number/],
    ['a start-group wire type', '1b', /wire type 3/],
    ['an end-group wire type', '1c', /wire type 4/],
    ['wire type 6', '1e', /wire type 6/],
    ['wire type 7', '1f', /wire type 7/],
    ['invalid UTF-8 in a string', '0a 02 c3 28', /audience: not valid UTF-8/],
    ['a singular field sent twice', '12 01 61  12 01 62', /spiffe_id: sent more than once/],
  ])('refuses %s', (_name, bytes, reason) => {
    expect(malformation(hex(bytes), JWT_SVID_REQUEST)).toMatch(reason);
  });

  it('answers a repeated request with the same frozen decoding, and checks any other bytes again', () => {
    const decode = strictRequests(workloadServiceDefinition()).FetchJWTSVID!.requestDeserialize;
    const bytes = hex('0a 01 61  0a 01 62');
    const first = decode(bytes) as { audience: string[] };
    expect(first.audience).toEqual(['a', 'b']);
    expect(Object.isFrozen(first) && Object.isFrozen(first.audience)).toBe(true);
    expect(decode(Buffer.from(bytes))).toBe(first);
    // The remembered bytes are a copy: the receive buffer they came from may be reused.
    bytes.write('0d010203', 'hex');
    expect(decode(bytes)).toBeInstanceOf(MalformedRequest);
    expect(decode(hex('0a 01 61'))).toEqual({ audience: ['a'], spiffe_id: '' });
  });
});
