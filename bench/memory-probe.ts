/*
 * Where the memory of open Workload API streams goes, agentid against the bare grpc-js server:
 *
 *   node --import tsx bench/memory-probe.ts [--streams 2000] [--identities 200] [--workers 2] [--keep DIR]
 *
 * Starts `agentid server` (dist/, as the benchmark does) and bench/bare-server.ts, each with
 * --heapsnapshot-signal; binds one task per identity holder (bench/holders.py); then, for each
 * server, takes its memory (RSS, anonymous RSS, and a heap snapshot, which runs a full GC first)
 * with no stream open, and again with the streams open. Prints the growth per connection: RSS
 * before and after the snapshot's GC, the JS heap, and the heap's growth by node type and
 * constructor (the top entries), side by side. A development tool (not part of `npm run bench`):
 * run it under the benchmark lock like any benchmark.
 */
import { execFileSync, spawn } from 'node:child_process';
import { createReadStream, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { AdminClient } from '../src/cli/admin-client.js';
import { type ChildHandle, spawnWithIpc } from './ipc.js';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const BUILD_DIR = join(REPO, 'bench', '.build-probe');
const NOFILE = Number(execFileSync('sh', ['-c', 'ulimit -Hn'], { encoding: 'utf8' }).trim());

function option(name: string, fallback: number): number {
  const i = process.argv.indexOf(name);
  return i >= 0 ? Number(process.argv[i + 1]) : fallback;
}
const STREAMS = option('--streams', 2000);
const IDENTITIES = option('--identities', 200);
const WORKERS = option('--workers', 2);
const keepAt = process.argv.indexOf('--keep');
/** --inspect: no heap snapshots; process.memoryUsage() through the inspector, before and after a full GC. */
const INSPECT = process.argv.includes('--inspect');
const PORTS = { a: 9341, bare: 9342 };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A DevTools-protocol session with a server started with --inspect=127.0.0.1:PORT. */
async function inspector(port: number): Promise<{ call<T = any>(method: string, params?: object): Promise<T>; close(): void }> {
  let list: { webSocketDebuggerUrl: string }[] = [];
  for (let i = 0; i < 100 && list.length === 0; i++) {
    list = await fetch(`http://127.0.0.1:${port}/json/list`).then((r) => r.json() as Promise<typeof list>, () => []);
    if (list.length === 0) await sleep(100);
  }
  const ws = new WebSocket(list[0]!.webSocketDebuggerUrl);
  await new Promise((ok, fail) => {
    ws.onopen = ok;
    ws.onerror = fail;
  });
  let next = 1;
  const waiting = new Map<number, (v: any) => void>();
  ws.onmessage = (e: MessageEvent) => {
    const m = JSON.parse(String(e.data)) as { id?: number; result?: unknown };
    if (m.id !== undefined) waiting.get(m.id)?.(m.result);
  };
  return {
    call: (method, params = {}) =>
      new Promise((ok) => {
        const id = next++;
        waiting.set(id, ok);
        ws.send(JSON.stringify({ id, method, params }));
      }),
    close: () => ws.close(),
  };
}

interface Usage {
  rss: number;
  anon: number;
  heapTotal: number;
  heapUsed: number;
  external: number;
  arrayBuffers: number;
}

/** RSS from /proc and process.memoryUsage() inside the server, in KiB. */
async function usage(pid: number, session: Awaited<ReturnType<typeof inspector>>): Promise<Usage> {
  const r = await session.call<{ result: { value: string } }>('Runtime.evaluate', { expression: 'JSON.stringify(process.memoryUsage())', returnByValue: true });
  const m = JSON.parse(r.result.value) as Record<string, number>;
  const s = status(pid);
  const k = (n: number) => n / 1024;
  return { rss: s.rss, anon: s.anon, heapTotal: k(m.heapTotal!), heapUsed: k(m.heapUsed!), external: k(m.external!), arrayBuffers: k(m.arrayBuffers!) };
}

/** Usage as found, then after a full GC (and a second to give memory back). */
async function usageAround(pid: number, session: Awaited<ReturnType<typeof inspector>>): Promise<{ asFound: Usage; afterGc: Usage }> {
  await sleep(2000);
  const asFound = await usage(pid, session);
  await session.call('HeapProfiler.collectGarbage');
  await sleep(1000);
  return { asFound, afterGc: await usage(pid, session) };
}

function usageReport(name: string, idle: { asFound: Usage; afterGc: Usage }, open: { asFound: Usage; afterGc: Usage }, n: number): void {
  for (const when of ['asFound', 'afterGc'] as const) {
    const d = (k: keyof Usage) => ((open[when][k] - idle[when][k]) / n).toFixed(2).padStart(7);
    console.log(`${name.padEnd(8)} ${when.padEnd(8)} per connection KiB: rss ${d('rss')} anon ${d('anon')} heapTotal ${d('heapTotal')} heapUsed ${d('heapUsed')} external ${d('external')} arrayBuffers ${d('arrayBuffers')}`);
  }
}

interface Memory {
  rssKiB: number;
  anonKiB: number;
  afterGcRssKiB: number;
  afterGcAnonKiB: number;
  heap: Map<string, { count: number; bytes: number }>;
  heapBytes: number;
}

function status(pid: number): { rss: number; anon: number } {
  const s = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(s)?.[1] ?? NaN);
  return { rss: kb('VmRSS'), anon: kb('RssAnon') };
}

/** Sends SIGUSR2 and waits for the new snapshot file in `dir` to be complete. */
async function snapshot(pid: number, dir: string): Promise<string> {
  const before = new Set(readdirSync(dir));
  process.kill(pid, 'SIGUSR2');
  for (;;) {
    await sleep(500);
    const fresh = readdirSync(dir).filter((f) => !before.has(f) && f.endsWith('.heapsnapshot') && f.includes(`.${pid}.`));
    if (fresh.length === 0) continue;
    const file = join(dir, fresh[0]!);
    // Node writes the file in one go on the main thread; complete once its size stops changing.
    const a = statSync(file).size;
    await sleep(1000);
    if (statSync(file).size === a && a > 0) return file;
  }
}

/** Self size by node type and name ("object Foo", "closure bar", "string", ...). */
async function summarize(file: string): Promise<{ by: Map<string, { count: number; bytes: number }>; total: number }> {
  const chunks: Buffer[] = [];
  for await (const c of createReadStream(file)) chunks.push(c as Buffer);
  const snap = JSON.parse(Buffer.concat(chunks).toString('utf8')) as {
    snapshot: { meta: { node_fields: string[]; node_types: [string[]] } };
    nodes: number[];
    strings: string[];
  };
  const fields = snap.snapshot.meta.node_fields;
  const types = snap.snapshot.meta.node_types[0];
  const width = fields.length;
  const [iType, iName, iSize] = ['type', 'name', 'self_size'].map((f) => fields.indexOf(f));
  const by = new Map<string, { count: number; bytes: number }>();
  let total = 0;
  for (let i = 0; i < snap.nodes.length; i += width) {
    const type = types[snap.nodes[i + iType!]!]!;
    const size = snap.nodes[i + iSize!]!;
    total += size;
    let name = snap.strings[snap.nodes[i + iName!]!]!;
    if (type === 'string' || type === 'concatenated string' || type === 'sliced string' || type === 'number') name = '';
    if (type === 'code' || type === 'hidden' || type === 'array') name = name.length > 40 ? name.slice(0, 40) : name;
    const key = `${type} ${name}`.trim();
    const e = by.get(key) ?? { count: 0, bytes: 0 };
    e.count++;
    e.bytes += size;
    by.set(key, e);
  }
  return { by, total };
}

async function measure(pid: number, dir: string): Promise<Memory> {
  await sleep(2000);
  const s = status(pid);
  const file = await snapshot(pid, dir);
  const g = status(pid);
  const { by, total } = await summarize(file);
  if (keepAt < 0) rmSync(file);
  return { rssKiB: s.rss, anonKiB: s.anon, afterGcRssKiB: g.rss, afterGcAnonKiB: g.anon, heap: by, heapBytes: total };
}

function report(name: string, idle: Memory, open: Memory, connections: number): Map<string, number> {
  const per = (a: number, b: number) => ((b - a) / connections).toFixed(2);
  console.log(`\n${name}: per connection (${connections}), KiB`);
  // The idle snapshot itself grows RSS (its own buffers), so these RSS figures overstate both servers'
  // growth; compare them only with each other, or use --inspect for RSS (no snapshots).
  console.log(`  RSS growth (inflated by the idle snapshot; see --inspect): ${per(idle.rssKiB, open.rssKiB)}   anon: ${per(idle.anonKiB, open.anonKiB)}`);
  console.log(`  RSS growth, each sample right after its snapshot: ${per(idle.afterGcRssKiB, open.afterGcRssKiB)}   anon: ${per(idle.afterGcAnonKiB, open.afterGcAnonKiB)}`);
  console.log(`  live JS heap growth (snapshot): ${((open.heapBytes - idle.heapBytes) / 1024 / connections).toFixed(2)}`);
  const diff = new Map<string, number>();
  for (const [k, v] of open.heap) diff.set(k, v.bytes - (idle.heap.get(k)?.bytes ?? 0));
  for (const [k, v] of idle.heap) if (!open.heap.has(k)) diff.set(k, -v.bytes);
  const counts = (k: string) => ((open.heap.get(k)?.count ?? 0) - (idle.heap.get(k)?.count ?? 0)) / connections;
  const top = [...diff].sort((a, b) => b[1] - a[1]).slice(0, 45);
  for (const [k, bytes] of top) console.log(`  ${(bytes / connections).toFixed(0).padStart(7)} B  ${counts(k).toFixed(2).padStart(6)}/conn  ${k}`);
  return diff;
}

async function main(): Promise<void> {
  const runDir = mkdtempSync('/tmp/agentid-memprobe-');
  const snapDir = keepAt >= 0 ? resolve(process.argv[keepAt + 1]!) : join(runDir, 'snap');
  mkdirSync(snapDir, { recursive: true });
  await new Promise<void>((ok, fail) => {
    const tsc = spawn(process.execPath, [join(REPO, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', join(REPO, 'tsconfig.build.json')], { cwd: REPO, stdio: 'inherit' });
    tsc.once('exit', (code) => (code === 0 ? ok() : fail(new Error(`tsc exited ${code}`))));
  });
  await build({
    entryPoints: ['client-worker', 'bare-server'].map((n) => join(REPO, 'bench', `${n}.ts`)),
    outdir: BUILD_DIR, outExtension: { '.js': '.mjs' }, bundle: true, platform: 'node', format: 'esm', target: 'node20', packages: 'external', logLevel: 'warning',
  });
  // holders.py is found next to the bundle's parent directory (bench/).
  const node = (entry: string, snap: boolean) => ['prlimit', [`--nofile=${NOFILE}:${NOFILE}`, '--', process.execPath, ...(snap ? (INSPECT ? [`--inspect=127.0.0.1:${PORTS.bare}`] : ['--heapsnapshot-signal=SIGUSR2', `--diagnostic-dir=${snapDir}`]) : []), join(BUILD_DIR, `${entry}.mjs`)]] as const;
  const child = (name: string, entry: string, snap = false): ChildHandle => {
    const [cmd, args] = node(entry, snap);
    return spawnWithIpc(name, cmd, [...args], { cwd: REPO });
  };
  const ready = (c: ChildHandle) => c.next('ready', () => true, 60_000);

  const dataDir = join(runDir, 'a');
  const config = join(runDir, 'a.yaml');
  writeFileSync(config, ['trust_domain: bench.example', `data_dir: ${dataDir}`, 'log:', '  level: warn', 'limits:', `  max_connections_per_uid: ${NOFILE}`, '  max_streams_per_uid: 30000', '  requests_per_second_per_uid: 10000', ''].join('\n'));
  const server = spawn('prlimit', [`--nofile=${NOFILE}:${NOFILE}`, '--', process.execPath, ...(INSPECT ? [`--inspect=127.0.0.1:${PORTS.a}`] : ['--heapsnapshot-signal=SIGUSR2', `--diagnostic-dir=${snapDir}`]), join(REPO, 'bin', 'agentid.js'), 'server', '--config', config], { cwd: REPO, stdio: ['ignore', 'inherit', 'inherit'] });
  const admin = new AdminClient(join(dataDir, 'admin.sock'));
  const bare = child('bare', 'bare-server', true);
  const workers = Array.from({ length: WORKERS }, (_, i) => child(`worker-${i}`, 'client-worker'));
  // 'ready' is an event: listen before anything else is awaited.
  const started = Promise.all([ready(bare), ...workers.map(ready)]);
  try {
    for (;;) {
      try {
        await admin.call('WhoAmI', {});
        break;
      } catch {
        await sleep(100);
      }
    }
    await started;
    // The bare server's responses: one agentid message of each kind would do; sizes matter little here.
    const capture = child('capture', 'client-worker');
    await ready(capture);
    await admin.call('StartTask', { agent: 'probe', id: 'capture', pid: capture.pid, ttl_seconds: 3600 });
    const socket = join(dataDir, 'workload.sock');
    const x509 = await capture.request<string>('capture', { socket, method: 'FetchX509SVID', request: '' });
    const jwtBundles = await capture.request<string>('capture', { socket, method: 'FetchJWTBundles', request: '' });
    capture.kill();
    await bare.request('configure', { x509, jwtBundles, jwtSvid: '', validate: '' });
    const bareSocket = join(runDir, 'bare.sock');
    await bare.request('listen', { path: bareSocket });

    // prlimit execs node: the child's pid is the server's.
    const serverPid = server.pid!;
    const sessions = INSPECT ? await Promise.all([inspector(PORTS.a), inspector(PORTS.bare)]) : undefined;
    const beforeTasks = status(serverPid);
    const beforeTasksUsage = sessions && (await usageAround(serverPid, sessions[0]));
    const per = Array.from({ length: WORKERS }, (_, i) => Math.floor(STREAMS / WORKERS) + (i < STREAMS % WORKERS ? 1 : 0));
    for (const [i, w] of workers.entries()) {
      const count = Math.floor(IDENTITIES / WORKERS) + (i < IDENTITIES % WORKERS ? 1 : 0);
      const { pids } = await w.request<{ pids: number[] }>('holders', { count }, 120_000);
      for (let j = 0; j < pids.length; j += 8) {
        await Promise.all(pids.slice(j, j + 8).map((pid, k) => admin.call('StartTask', { agent: 'probe', id: `w${i}-h${j + k}`, pid, ttl_seconds: 3600 })));
      }
    }
    const afterTasks = status(serverPid);
    console.log(`agentid: ${IDENTITIES} tasks bound: RSS ${beforeTasks.rss} -> ${afterTasks.rss} KiB (the bench's idle sample is taken before this)`);
    if (beforeTasksUsage) {
      const after = await usageAround(serverPid, sessions![0]);
      usageReport('agentid: binding the tasks (per task)', beforeTasksUsage, after, IDENTITIES);
    }

    const openAll = async () => {
      await Promise.all(workers.map((w, i) => w.request('open', { group: 'A', socket, count: per[i], reconnect: false, viaHolders: true }, 300_000)));
      await Promise.all(workers.map((w, i) => w.request('open', { group: 'B', socket: bareSocket, count: per[i], reconnect: false, viaHolders: true }, 300_000)));
    };
    if (INSPECT) {
      const [sa, sb] = sessions!;
      const idle = { a: await usageAround(serverPid, sa), b: await usageAround(bare.pid, sb) };
      await openAll();
      const open = { a: await usageAround(serverPid, sa), b: await usageAround(bare.pid, sb) };
      usageReport('agentid', idle.a, open.a, STREAMS);
      usageReport('bare', idle.b, open.b, STREAMS);
      sa.close();
      sb.close();
      return;
    }
    const idleA = await measure(serverPid, snapDir);
    const idleB = await measure(bare.pid, snapDir);
    await openAll();
    const openA = await measure(serverPid, snapDir);
    const openB = await measure(bare.pid, snapDir);
    const da = report('agentid', idleA, openA, STREAMS);
    const db = report('bare grpc-js', idleB, openB, STREAMS);
    console.log('\nagentid minus bare, by node type and name (B per connection), top 40:');
    const keys = new Set([...da.keys(), ...db.keys()]);
    const extra = [...keys].map((k) => [k, ((da.get(k) ?? 0) - (db.get(k) ?? 0)) / STREAMS] as const).sort((a, b) => b[1] - a[1]);
    for (const [k, b] of extra.slice(0, 40)) console.log(`  ${b.toFixed(0).padStart(7)} B  ${k}`);
    const total = extra.reduce((n, [, b]) => n + b, 0);
    console.log(`  total: ${total.toFixed(0)} B per connection`);
  } finally {
    admin.close();
    for (const w of workers) w.kill();
    bare.kill();
    // The server's clean stop writes to its data directory: remove that only once it has exited.
    const exited = new Promise((r) => server.once('exit', r));
    server.kill('SIGTERM');
    await exited;
    if (keepAt < 0) rmSync(runDir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    console.error(err);
    process.exit(1);
  },
);
