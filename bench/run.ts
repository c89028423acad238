/*
 * All benchmarks: minting throughput (bench/mint.ts), then end to end over a real Unix socket
 * against an in-process server: FetchX509SVID first-message latency, and a "rotation storm" in
 * which one workload becomes entitled to 2,000 identities and its next FetchX509SVID mints them
 * all. Prints a table, then one JSON line per result for machines.
 *
 *   npm run bench            (node --import tsx bench/run.ts)
 *
 * Run as root: the entries select unix:uid:0, the uid of this process.
 */
import { benchMint } from './mint.js';
import { startTestServer } from '../test/support/server.js';
import { WorkloadApiClient } from '../src/client/workload-client.js';
import * as grpc from '@grpc/grpc-js';
import { workloadService } from '../src/common/proto.js';

/** The first FetchX509SVID message through a bare gRPC client (no decoding); returns its SVID count. */
function rawFirstMessageSvidCount(socket: string): Promise<number> {
  const Ctor = workloadService();
  const raw = new Ctor(`unix://${socket}`, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': -1 }) as unknown as {
    FetchX509SVID(req: object, md: grpc.Metadata): grpc.ClientReadableStream<{ svids: unknown[] }>;
    close(): void;
  };
  const md = new grpc.Metadata();
  md.set('workload.spiffe.io', 'true');
  return new Promise((resolve, reject) => {
    const stream = raw.FetchX509SVID({}, md);
    stream.on('data', (msg) => {
      resolve(msg.svids.length);
      stream.cancel();
      raw.close();
    });
    stream.on('error', (err: grpc.ServiceError) => {
      if (err.code !== grpc.status.CANCELLED) reject(err);
    });
  });
}

const TD = 'bench.example';
const LATENCY_FETCHES = 200;
const STORM_ENTRIES = 2_000;

interface Row {
  bench: string;
  metric: string;
  value: number;
  unit: string;
}

const rows: Row[] = [];
const add = (bench: string, metric: string, value: number, unit: string) => rows.push({ bench, metric, value: Math.round(value * 1000) / 1000, unit });

function percentile(sorted: number[], p: number): number {
  // Nearest-rank: the smallest sample with at least p% of samples at or below it.
  const rank = Math.max(1, Math.ceil((p / 100) * sorted.length));
  return sorted[Math.min(rank, sorted.length) - 1]!;
}

async function benchEndToEnd(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('the end-to-end benchmark selects unix:uid:0: run it as root');
  const t = await startTestServer({ trustDomain: TD });
  // 2,000 SVIDs with chains and bundles exceed grpc-js's default 4 MiB receive limit.
  const client = new WorkloadApiClient({ socketPath: t.config.workloadSocket, channelOptions: { 'grpc.max_receive_message_length': -1 } });
  try {
    await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${TD}/bench/latency`, selectors: ['unix:uid:0'] } });

    // (a) The first fetch mints; the rest are served from the SVID cache, as for a restarting workload.
    const samples: number[] = [];
    let cold = 0;
    for (let i = 0; i < LATENCY_FETCHES; i++) {
      const start = performance.now();
      const ctx = await client.fetchX509Context();
      const ms = performance.now() - start;
      if (ctx.svids.length !== 1) throw new Error(`expected 1 SVID, got ${ctx.svids.length}`);
      if (i === 0) cold = ms;
      samples.push(ms);
    }
    const sorted = [...samples].sort((a, b) => a - b);
    const latency = `fetch-x509-first-message (n=${LATENCY_FETCHES}, 1 identity)`;
    add(latency, 'first fetch (mints)', cold, 'ms');
    add(latency, 'p50', percentile(sorted, 50), 'ms');
    add(latency, 'p99', percentile(sorted, 99), 'ms');
    add(latency, 'max', sorted[sorted.length - 1]!, 'ms');

    // (b) Rotation storm.
    const createStart = performance.now();
    for (let i = 0; i < STORM_ENTRIES; i++) {
      await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${TD}/bench/storm/${i}`, selectors: ['unix:uid:0'] } });
    }
    const createMs = performance.now() - createStart;
    // Server side: a raw gRPC call that does not decode, so the time is the server's minting,
    // recording, auditing and encoding (plus the transfer), not the client's certificate parsing.
    const start = performance.now();
    const rawCount = await rawFirstMessageSvidCount(t.config.workloadSocket);
    const stormMs = performance.now() - start;
    // The latency identity is cached; the storm identities are all new.
    if (rawCount !== STORM_ENTRIES + 1) throw new Error(`expected ${STORM_ENTRIES + 1} SVIDs, got ${rawCount}`);
    // Client side: the same state again, now cached on the server, decoded and checked by the client library.
    const decodeStart = performance.now();
    const ctx = await client.fetchX509Context();
    const decodeMs = performance.now() - decodeStart;
    if (ctx.svids.length !== STORM_ENTRIES + 1) throw new Error(`expected ${STORM_ENTRIES + 1} SVIDs, got ${ctx.svids.length}`);
    const storm = `rotation-storm (${STORM_ENTRIES} new identities, one FetchX509SVID)`;
    add(storm, 'first message, server side', stormMs, 'ms');
    add(storm, 'server throughput', STORM_ENTRIES / (stormMs / 1000), 'SVIDs/s');
    add(storm, 'cached state, decoded by the client library', decodeMs, 'ms');
    add(storm, 'entry creation (admin API, sequential)', STORM_ENTRIES / (createMs / 1000), 'entries/s');
  } finally {
    client.close();
    await t.cleanup();
  }
}

function printTable(): void {
  const cells = [['benchmark', 'metric', 'value', 'unit'], ...rows.map((r) => [r.bench, r.metric, String(r.value), r.unit])];
  const widths = cells[0]!.map((_, i) => Math.max(...cells.map((c) => c[i]!.length)));
  for (const [n, c] of cells.entries()) {
    console.log(c.map((v, i) => (i === 2 ? v.padStart(widths[i]!) : v.padEnd(widths[i]!))).join('  ').trimEnd());
    if (n === 0) console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  }
}

const started = performance.now();
for (const r of await benchMint()) add('mint (one core)', r.name, r.opsPerSec, 'ops/s');
await benchEndToEnd();
printTable();
console.log('');
for (const r of rows) console.log(JSON.stringify(r));
console.error(`bench finished in ${((performance.now() - started) / 1000).toFixed(1)} s`);
