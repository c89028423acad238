/**
 * The Workload API under random and mutated gRPC messages, sent as raw HTTP/2 over the real socket
 * to a real server: every call gets a well-formed gRPC status (never INTERNAL or UNKNOWN, never a
 * crash), and afterwards a well-behaved client is still served. Bounded by numRuns.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { connect as http2Connect, type ClientHttp2Session } from 'node:http2';
import { connect as netConnect } from 'node:net';
import { WorkloadApiClient } from '../src/client/workload-client.js';
import { startTestServer, type TestServer } from './support/server.js';

const td = 'fuzz.example';
const METHODS = ['FetchJWTSVID', 'ValidateJWTSVID', 'FetchX509SVID', 'FetchX509Bundles', 'FetchJWTBundles'] as const;

/** Valid request bodies to mutate: audience "a" (field 1), spiffe_id (field 2), svid (field 2). */
const VALID = [
  Buffer.from([0x0a, 0x01, 0x61]),
  Buffer.from([0x0a, 0x01, 0x61, 0x12, 0x14, ...Buffer.from(`spiffe://${td}/root`)]),
  Buffer.from([0x0a, 0x01, 0x61, 0x12, 0x05, ...Buffer.from('a.b.c')]),
  Buffer.alloc(0),
];

const body = fc.oneof(
  fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)),
  fc
    .tuple(fc.constantFrom(...VALID), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 }), fc.constantFrom('flip', 'insert', 'delete')), { minLength: 1, maxLength: 4 }))
    .map(([base, edits]) => {
      const bytes = [...base];
      for (const [at, value, op] of edits) {
        const i = bytes.length === 0 ? 0 : at % (bytes.length + 1);
        if (op === 'insert' || bytes.length === 0) bytes.splice(i, 0, value);
        else if (op === 'delete') bytes.splice(i % bytes.length, 1);
        else bytes[i % bytes.length] = value;
      }
      return Buffer.from(bytes);
    }),
);

/** The 5-byte gRPC frame header, sometimes lying about compression or length. */
const frame = fc.tuple(body, fc.constantFrom('ok', 'ok', 'ok', 'compressed', 'short', 'long', 'raw')).map(([payload, kind]) => {
  if (kind === 'raw') return payload;
  const header = Buffer.alloc(5);
  header[0] = kind === 'compressed' ? 1 : 0;
  header.writeUInt32BE(kind === 'short' ? Math.max(0, payload.length - 1) : kind === 'long' ? payload.length + 7 : payload.length, 1);
  return Buffer.concat([header, payload]);
});

function call(session: ClientHttp2Session, method: string, data: Buffer, withHeader: boolean): Promise<{ status: string | undefined; httpStatus: number | undefined }> {
  return new Promise((resolve) => {
    const headers: Record<string, string> = {
      ':method': 'POST',
      ':path': `/SpiffeWorkloadAPI/${method}`,
      'content-type': 'application/grpc',
      te: 'trailers',
    };
    if (withHeader) headers['workload.spiffe.io'] = 'true';
    const req = session.request(headers);
    let httpStatus: number | undefined;
    let status: string | undefined;
    const done = () => {
      clearTimeout(timer);
      if (!req.closed) req.close();
      resolve({ status, httpStatus });
    };
    // A stream that was accepted keeps going: one message (or a second) is enough to judge it.
    const timer = setTimeout(done, 2000);
    req.on('response', (h) => {
      httpStatus = Number(h[':status']);
      if (h['grpc-status'] !== undefined) status = String(h['grpc-status']);
    });
    req.on('trailers', (t) => {
      if (t['grpc-status'] !== undefined) status = String(t['grpc-status']);
    });
    req.on('data', () => {
      if (status === undefined) status = 'streaming';
      done();
    });
    req.on('end', done);
    req.on('close', done);
    req.on('error', done);
    req.end(data);
  });
}

describe('Workload API fuzz (raw HTTP/2 over the real socket)', () => {
  let t: TestServer;

  beforeAll(async () => {
    t = await startTestServer({ trustDomain: td, yaml: 'admin:\n  admin_uids: [0]\n' });
    await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/root`, selectors: ['unix:uid:0'] } });
  });
  afterAll(async () => t?.cleanup());

  it('answers every random or mutated message with a proper status and keeps serving', { timeout: 180_000 }, async () => {
    const session = http2Connect('http://localhost', { createConnection: () => netConnect(t.config.workloadSocket) });
    session.on('error', () => undefined);
    const seen = new Map<string, number>();
    try {
      await fc.assert(
        fc.asyncProperty(fc.constantFrom(...METHODS), frame, fc.boolean(), async (method, data, withHeader) => {
          const { status } = await call(session, method, data, withHeader);
          seen.set(String(status), (seen.get(String(status)) ?? 0) + 1);
          // 0 OK (a mutation can stay well-formed), 3 INVALID_ARGUMENT, 7 PERMISSION_DENIED,
          // 8 RESOURCE_EXHAUSTED, 14 UNAVAILABLE, 12 UNIMPLEMENTED (compressed frames), or a stream.
          expect(['0', '3', '7', '8', '12', '14', 'streaming']).toContain(status);
        }),
        { numRuns: 300 },
      );
    } finally {
      session.close();
    }
    if (process.env.AGENTID_FUZZ_REPORT) console.log(Object.fromEntries(seen));
    // Refusals were seen, not only successes: the fuzzer reached the validation paths.
    expect(seen.get('3') ?? 0).toBeGreaterThan(0);

    const client = new WorkloadApiClient({ socketPath: t.config.workloadSocket });
    try {
      const ctx = await client.fetchX509Context();
      expect(ctx.svids[0]!.spiffeId).toBe(`spiffe://${td}/root`);
      const jwt = await client.fetchJwtSvid({ audience: ['https://after.example'] });
      expect(jwt.spiffeId).toBe(`spiffe://${td}/root`);
    } finally {
      client.close();
    }
  });
});
