/**
 * Malformed Workload API requests over a real socket to a real server: refused with
 * INVALID_ARGUMENT before any handler runs, and nothing is issued or audited as issued.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { startTestServer, type TestServer } from './support/server.js';

/** A client that sends the given bytes as the request message, unchanged. */
function rawCall(socket: string, method: string, body: Buffer, streaming: boolean): Promise<{ code: number; details: string; messages: number }> {
  const Ctor = grpc.makeGenericClientConstructor({}, 'Raw');
  const client = new Ctor(`unix://${socket}`, grpc.credentials.createInsecure());
  const md = new grpc.Metadata();
  md.set('workload.spiffe.io', 'true');
  const path = `/SpiffeWorkloadAPI/${method}`;
  const same = (b: Buffer) => b;
  return new Promise((resolve) => {
    let messages = 0;
    const done = (err: grpc.ServiceError | null) => {
      client.close();
      resolve({ code: err?.code ?? grpc.status.OK, details: err?.details ?? '', messages });
    };
    if (streaming) {
      const call = client.makeServerStreamRequest(path, same, same, body, md);
      call.on('data', () => {
        messages++;
        call.cancel();
      });
      call.on('error', (err: grpc.ServiceError) => done(messages > 0 ? null : err));
      call.on('end', () => done(null));
    } else {
      client.makeUnaryRequest(path, same, same, body, md, (err) => {
        if (!err) messages++;
        done(err);
      });
    }
  });
}

describe('strict Workload API input', () => {
  let t: TestServer;
  const td = 'it.example';

  beforeAll(async () => {
    t = await startTestServer({ trustDomain: td });
    await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/root-workload`, selectors: ['unix:uid:0'] } });
  });
  afterAll(async () => t?.cleanup());

  it('issues a JWT-SVID for a well-formed request (also with an unknown, well-formed field)', async () => {
    const ok = await rawCall(t.config.workloadSocket, 'FetchJWTSVID', Buffer.from('0a0361756418 96 01'.replace(/ /g, ''), 'hex'), false);
    expect(ok).toMatchObject({ code: grpc.status.OK, messages: 1 });
  });

  it.each([
    ['FetchJWTSVID', 'audience sent as a varint', '0802', false],
    ['FetchJWTSVID', 'a truncated audience', '0a0561', false],
    ['FetchJWTSVID', 'a group wire type', '0a03617564 0b', false],
    ['FetchJWTSVID', 'audience that is not UTF-8', '0a02c328', false],
    ['FetchJWTSVID', 'two SPIFFE IDs', '0a03617564 1201611201 62', false],
    ['ValidateJWTSVID', 'svid sent as fixed64', '0a03617564 110102030405060708', false],
    ['FetchX509SVID', 'garbage', 'ffffffff', true],
    ['FetchX509Bundles', 'a truncated unknown field', '0a05', true],
    ['FetchJWTBundles', 'wire type 7', '0f', true],
  ])('%s: refuses %s with INVALID_ARGUMENT', async (method, _name, bytes, streaming) => {
    const before = readFileSync(t.config.audit.file, 'utf8').split('\n').length;
    const res = await rawCall(t.config.workloadSocket, method, Buffer.from(bytes.replace(/ /g, ''), 'hex'), streaming);
    expect(res.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(res.details).toMatch(/^malformed request: /);
    expect(res.messages).toBe(0);
    // Nothing was issued for it.
    expect(readFileSync(t.config.audit.file, 'utf8').split('\n').length).toBe(before);
  });

  it('keeps serving well-formed requests after malformed ones', async () => {
    const ok = await rawCall(t.config.workloadSocket, 'FetchX509SVID', Buffer.alloc(0), true);
    expect(ok).toMatchObject({ code: grpc.status.OK, messages: 1 });
  });
});
