/**
 * A workload holding many Workload API streams, for fan-out tests, run as a child process (possibly
 * as another Unix user). Each stream keeps the raw bytes of every message it receives.
 *   stream-watcher.ts <socket> <x509 streams> <x509-bundle streams> <jwt-bundle streams>
 * Commands on stdin, one per line:
 *   open    opens the streams, prints {"opened":true} once every stream has its first message
 *           (or has ended)
 *   report  prints one JSON line: per stream, its kind, message count, how many messages were
 *           byte-identical to the one before, the error that ended it, and digests of its last
 *           two messages (SPIFFE IDs, SVID certificate digests, CRL digest)
 */
import { createHash } from 'node:crypto';
import { createInterface } from 'node:readline';
import * as grpc from '@grpc/grpc-js';
import { workloadService } from '../../src/common/proto.js';

const [socket, x509Count, bundleCount, jwtCount] = process.argv.slice(2);
const methods = workloadService().service;
const client = new grpc.Client(`unix:${socket}`, grpc.credentials.createInsecure());

type Kind = 'x509' | 'x509-bundles' | 'jwt-bundles';
const METHOD: Record<Kind, 'FetchX509SVID' | 'FetchX509Bundles' | 'FetchJWTBundles'> = {
  x509: 'FetchX509SVID',
  'x509-bundles': 'FetchX509Bundles',
  'jwt-bundles': 'FetchJWTBundles',
};

interface Digest {
  ids?: string[];
  svids?: string[];
  crls: string;
  bundles?: string;
}

interface Watched {
  kind: Kind;
  messages: Buffer[];
  identical: number;
  ended: string | null;
}

const digest = (b: Buffer | Uint8Array) => createHash('sha256').update(b).digest('hex').slice(0, 16);

function describe(kind: Kind, raw: Buffer): Digest {
  const msg = methods[METHOD[kind]]!.responseDeserialize(raw) as {
    svids?: { spiffe_id: string; x509_svid: Buffer }[];
    crl?: Buffer[];
    bundles?: Record<string, Buffer>;
  };
  const crls = digest(Buffer.concat(msg.crl ?? []));
  const bundles = msg.bundles ? digest(Buffer.from(JSON.stringify(Object.entries(msg.bundles).map(([k, v]) => [k, digest(v)])))) : undefined;
  if (kind !== 'x509') return { crls, bundles };
  return { ids: msg.svids!.map((s) => s.spiffe_id), svids: msg.svids!.map((s) => digest(s.x509_svid)), crls };
}

const streams: Watched[] = [];

function open(kind: Kind): Promise<void> {
  const w: Watched = { kind, messages: [], identical: 0, ended: null };
  streams.push(w);
  const metadata = new grpc.Metadata();
  metadata.set('workload.spiffe.io', 'true');
  const call = client.makeServerStreamRequest(
    `/SpiffeWorkloadAPI/${METHOD[kind]}`,
    () => Buffer.alloc(0), // the requests of the three streaming methods are empty messages
    (raw: Buffer) => raw,
    {},
    metadata,
  );
  return new Promise((resolve) => {
    call.on('data', (raw: Buffer) => {
      const previous = w.messages.at(-1);
      if (previous?.equals(raw)) w.identical++;
      w.messages.push(raw);
      resolve();
    });
    call.on('error', (err: grpc.ServiceError) => {
      w.ended = grpc.status[err.code] ?? String(err.code);
      resolve();
    });
  });
}

createInterface({ input: process.stdin }).on('line', (line) => {
  if (line === 'open') {
    const kinds: Kind[] = [
      ...Array<Kind>(Number(x509Count)).fill('x509'),
      ...Array<Kind>(Number(bundleCount)).fill('x509-bundles'),
      ...Array<Kind>(Number(jwtCount)).fill('jwt-bundles'),
    ];
    void Promise.all(kinds.map(open)).then(() => process.stdout.write(`${JSON.stringify({ opened: true })}\n`));
  } else if (line === 'report') {
    const report = streams.map((w) => ({
      kind: w.kind,
      count: w.messages.length,
      identical: w.identical,
      ended: w.ended,
      last: w.messages.length > 0 ? describe(w.kind, w.messages.at(-1)!) : null,
      previous: w.messages.length > 1 ? describe(w.kind, w.messages.at(-2)!) : null,
    }));
    process.stdout.write(`${JSON.stringify({ pid: process.pid, streams: report })}\n`);
  }
});
