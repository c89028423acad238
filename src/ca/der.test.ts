import { describe, expect, it } from 'vitest';
import { AsnConvert } from '@peculiar/asn1-schema';
import { Time } from '@peculiar/asn1-x509';
import * as der from './der.js';

describe('der', () => {
  it.each([
    [0, '0400'],
    [0x7f, '047f'],
    [0x80, '048180'],
    [0xff, '0481ff'],
    [0x100, '04820100'],
    [0x10000, '0483010000'],
  ])('encodes a %i-byte content length minimally', (length, headerHex) => {
    const encoded = der.octetString(Buffer.alloc(length));
    expect(encoded.subarray(0, headerHex.length / 2).toString('hex')).toBe(headerHex);
    expect(encoded.length).toBe(headerHex.length / 2 + length);
    const t = der.readTlv(encoded);
    expect([t.contentStart, t.end]).toEqual([headerHex.length / 2, encoded.length]);
  });

  it.each([
    ['00', '020100'],
    ['0000', '020100'],
    ['7f', '02017f'],
    ['80', '02020080'],
    ['000080', '02020080'],
    ['0001', '020101'],
  ])('encodes unsigned integer %s as positive minimal DER', (mag, hex) => {
    expect(der.unsignedInteger(Buffer.from(mag, 'hex')).toString('hex')).toBe(hex);
  });

  it.each([
    ['1.2.840.10045.4.3.2', '06082a8648ce3d040302'],
    ['2.5.29.17', '0603551d11'],
    ['1.3.6.1.5.5.7.3.1', '06082b06010505070301'],
    ['2.999.3', '0603883703'],
  ])('encodes OID %s', (oid, hex) => {
    expect(der.oid(oid).toString('hex')).toBe(hex);
  });

  it.each(['1', '3.1', '1.40', 'a.b', '1..2'])('refuses malformed OID %s', (oid) => {
    expect(() => der.oid(oid)).toThrow(RangeError);
  });

  // RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050.
  it.each([
    [Date.UTC(1950, 0, 1), 0x17, '500101000000Z'],
    [Date.UTC(1999, 11, 31, 23, 59, 59), 0x17, '991231235959Z'],
    [Date.UTC(2026, 0, 2, 3, 4, 5, 999), 0x17, '260102030405Z'],
    [Date.UTC(2049, 11, 31, 23, 59, 59), 0x17, '491231235959Z'],
    [Date.UTC(2050, 0, 1, 0, 0, 0), 0x18, '20500101000000Z'],
    [Date.UTC(9999, 11, 31, 23, 59, 59), 0x18, '99991231235959Z'],
  ])('encodes time %i with tag %i as %s', (ms, tag, text) => {
    const t = der.time(ms);
    expect(t[0]).toBe(tag);
    expect(t.subarray(2).toString('latin1')).toBe(text);
  });

  it.each([Date.UTC(1949, 11, 31, 23, 59, 59), Date.UTC(10000, 0, 1), Number.NaN])('refuses time %s', (ms) => {
    expect(() => der.time(ms)).toThrow(RangeError);
  });

  it.each([Date.UTC(2049, 11, 31, 23, 59, 59), Date.UTC(2050, 0, 1), Date.UTC(2026, 5, 15, 8, 9, 10, 500)])(
    'time %i parses back to the same whole second with a strict ASN.1 parser',
    (ms) => {
      expect(AsnConvert.parse(der.time(ms), Time).getTime().getTime()).toBe(Math.floor(ms / 1000) * 1000);
    },
  );

  it('omits the critical flag when false, as DER forbids encoding a DEFAULT', () => {
    expect(der.extension('2.5.29.37', false, Buffer.from([0x30, 0])).toString('hex')).toBe('30090603551d2504023000');
    expect(der.extension('2.5.29.19', true, Buffer.from([0x30, 0])).toString('hex')).toBe('300c0603551d130101ff04023000');
  });

  it('rejects truncated input and over-long lengths when reading', () => {
    expect(() => der.readTlv(Buffer.from('3005020101', 'hex'))).toThrow(/truncated/);
    expect(() => der.readTlv(Buffer.from('3085000000000100', 'hex'))).toThrow(/length/);
    expect(() => der.readTlv(Buffer.from('30', 'hex'))).toThrow(/truncated/);
  });

  it('refuses non-ASCII IA5 strings', () => {
    expect(() => der.ia5String('spiffe://ex.org/é')).toThrow(RangeError);
  });
});
