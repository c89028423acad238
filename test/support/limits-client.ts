/**
 * A Workload API client for the limits tests, run as a child process (possibly as another user).
 *   limits-client.ts <socket> streams <connections> <streamsEach>
 *       opens <connections> separate connections with <streamsEach> FetchJWTBundles streams each,
 *       prints {"codes":{"OK":n,"RESOURCE_EXHAUSTED":m,...}} once every stream has its first
 *       message or its error, then holds whatever is open until killed.
 *   limits-client.ts <socket> calls <count>
 *       starts <count> FetchJWTSVID calls at once on one connection, prints the codes, exits.
 *   limits-client.ts <socket> metadata <bytes>
 *       one FetchJWTSVID call with a metadata value of <bytes> bytes; prints the codes, exits.
 *   limits-client.ts <socket> stream-metadata <bytes>
 *       one FetchJWTBundles stream with a metadata value of <bytes> bytes; prints the code of its
 *       first message (OK) or its error, exits.
 *   limits-client.ts <socket> message <bytes>
 *       one FetchJWTSVID call whose request message is about <bytes> bytes; prints the codes, exits.
 */
import * as grpc from '@grpc/grpc-js';
import { workloadService } from '../../src/common/proto.js';

const [socket, mode, a = '1', b = '1'] = process.argv.slice(2);
const Ctor = workloadService();
const codes: Record<string, number> = {};
const record = (code: number) => {
  const name = grpc.status[code] ?? String(code);
  codes[name] = (codes[name] ?? 0) + 1;
};
const metadata = (extraBytes = 0) => {
  const md = new grpc.Metadata();
  md.set('workload.spiffe.io', 'true');
  if (extraBytes > 0) md.set('x-padding', 'p'.repeat(extraBytes));
  return md;
};
// A private subchannel pool per client: each one is its own connection.
const connect = () => new Ctor(`unix://${socket}`, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 }) as any;
const print = () => process.stdout.write(`${JSON.stringify({ codes })}\n`);

if (mode === 'streams') {
  const pending: Promise<void>[] = [];
  for (let i = 0; i < Number(a); i++) {
    const client = connect();
    for (let j = 0; j < Number(b); j++) {
      pending.push(
        new Promise<void>((resolve) => {
          const call = client.FetchJWTBundles({}, metadata());
          call.once('data', () => {
            record(grpc.status.OK);
            resolve();
          });
          call.on('error', (err: grpc.ServiceError) => {
            record(err.code);
            resolve();
          });
        }),
      );
    }
  }
  await Promise.all(pending);
  print();
  setInterval(() => undefined, 1 << 30);
} else if (mode === 'stream-metadata') {
  const client = connect();
  await new Promise<void>((resolve) => {
    const call = client.FetchJWTBundles({}, metadata(Number(a)));
    call.once('data', () => {
      record(grpc.status.OK);
      call.cancel();
      resolve();
    });
    call.on('error', (err: grpc.ServiceError) => {
      if (err.code !== grpc.status.CANCELLED) record(err.code);
      resolve();
    });
  });
  print();
  client.close();
} else if (mode === 'calls' || mode === 'metadata' || mode === 'message') {
  const client = connect();
  const count = mode === 'calls' ? Number(a) : 1;
  const md = metadata(mode === 'metadata' ? Number(a) : 0);
  await Promise.all(
    Array.from({ length: count }, () =>
      new Promise<void>((resolve) => {
        const audience = mode === 'message' ? Array.from({ length: Math.ceil(Number(a) / 1000) }, () => 'a'.repeat(1000)) : ['limits-test'];
        client.FetchJWTSVID({ audience }, md, (err: grpc.ServiceError | null) => {
          record(err ? err.code : grpc.status.OK);
          resolve();
        });
      }),
    ),
  );
  print();
  client.close();
} else {
  throw new Error(`unknown mode ${mode}`);
}
