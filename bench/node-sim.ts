/*
 * The node simulator of the agents benchmark (issue 11, scale): many `agentid agent`s in one
 * process, speaking the real node API to the server's agent listener (TLS, node SVIDs). Per node it
 * attests with a one-time join token, keeps a Sync stream open, and mints X.509-SVIDs through
 * MintX509Svids for public keys generated here, in batches like the agent's. It checks its own
 * work (every chain verifies against the bundle and certifies the key sent) and timestamps the
 * SyncUpdate that brings a revocation to each node.
 *
 * Timestamps sent to the orchestrator are wall-clock milliseconds with sub-millisecond resolution
 * (performance.timeOrigin + performance.now()): the same clock in every process on the machine.
 */
import { systemClock } from '../src/common/system-clock.js';
import { generateLeafKeyPair } from '../src/ca/keys.js';
import { acceptNodeSvid, newNodeKey, type NodeIdentity } from '../src/agent/node-identity.js';
import { NodeClient, type WireSyncUpdate, type WireX509SvidRequest } from '../src/agent/node-client.js';
import { X509Bundle } from '../src/verify/bundle.js';
import { verifyX509Svid } from '../src/verify/x509.js';
import { TrustDomain } from '../src/spiffe/spiffe-id.js';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { serveIpc } from './ipc.js';

/** Public keys per MintX509Svids call: the agent's own batch size (src/agent/svids.ts). */
const BATCH = 200;

const wallNow = () => performance.timeOrigin + performance.now();

interface SimNode {
  name: string;
  identity: NodeIdentity;
  client: NodeClient;
  cancelSync: () => void;
  /**
   * The latest updates received (a bounded window), so a revocation that arrived just before
   * watchRevocation is still found. Bounded: scanning every update ever received on every
   * arrival made this process, not the server, set the figure as the run went on.
   */
  recent: { at: number; revocations: string[] }[];
  syncEnded: string | undefined;
  snapshot: boolean;
}

let server: { host: string; port: number };
let roots: Buffer[] = [];
let trustDomain: TrustDomain;
const nodes: SimNode[] = [];
const RECENT = 64;

/** One watchRevocation in progress: each node's arrival time of the revocation naming `needle`. */
interface Watch {
  needle: string;
  arrivals: Map<SimNode, number>;
  changed(): void;
}
const watches = new Set<Watch>();

function onUpdate(node: SimNode, u: WireSyncUpdate): void {
  const at = wallNow();
  received++;
  if (u.snapshot) node.snapshot = true;
  node.recent.push({ at, revocations: u.revocations });
  if (node.recent.length > RECENT) node.recent.splice(0, node.recent.length - RECENT);
  for (const w of watches) {
    if (w.arrivals.has(node) || !u.revocations.some((r) => r.includes(w.needle))) continue;
    w.arrivals.set(node, at);
    w.changed();
  }
}

/**
 * How busy this process was over a window: its CPU time and its event loop's delay (a late
 * timestamp on a Sync message is this process's lateness, not the server's, when the delay is high).
 */
const loopDelay = monitorEventLoopDelay({ resolution: 5 });
loopDelay.enable();
let meterFrom = { cpu: process.cpuUsage(), at: performance.now() };
/** Sync messages received (all nodes) since meterStart. */
let received = 0;
function meterStart(): void {
  loopDelay.reset();
  received = 0;
  meterFrom = { cpu: process.cpuUsage(), at: performance.now() };
}
function meterRead(): { cpuMs: number; wallMs: number; loopDelayMaxMs: number; loopDelayP99Ms: number; messages: number } {
  const cpu = process.cpuUsage(meterFrom.cpu);
  return {
    cpuMs: (cpu.user + cpu.system) / 1000,
    wallMs: performance.now() - meterFrom.at,
    loopDelayMaxMs: loopDelay.max / 1e6,
    loopDelayP99Ms: loopDelay.percentile(99) / 1e6,
    messages: received,
  };
}

/** Runs `work` over `items` with at most `limit` in flight. */
async function pool<T>(items: T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) await work(items[next++]!);
    }),
  );
}

const ipc = serveIpc({
  /** Attests one node per token and opens its Sync stream; resolves once every node has its snapshot. */
  async attest(a: { host: string; port: number; trustDomain: string; rootsDer: string[]; tokens: { node: string; token: string }[] }) {
    server = { host: a.host, port: a.port };
    roots = a.rootsDer.map((d) => Buffer.from(d, 'base64'));
    trustDomain = TrustDomain.parse(a.trustDomain);
    const start = performance.now();
    await pool(a.tokens, 16, async ({ node, token }) => {
      const first = new NodeClient({ server, roots, trustDomain, client: undefined, clock: systemClock });
      const key = newNodeKey();
      let identity: NodeIdentity;
      try {
        identity = acceptNodeSvid(await first.attest({ join_token: token, public_key: key.spki }), key, trustDomain);
      } finally {
        first.close();
      }
      if (identity.node !== node) throw new Error(`attested as ${identity.node}, expected ${node}`);
      const client = new NodeClient({ server, roots, trustDomain, client: { chainDer: identity.chainDer, keyPkcs8: identity.keyPkcs8 }, clock: systemClock });
      const sim: SimNode = { name: node, identity, client, cancelSync: () => undefined, recent: [], syncEnded: undefined, snapshot: false };
      sim.cancelSync = client.sync(0, {
        onUpdate: (u) => onUpdate(sim, u),
        onEnd: (err) => (sim.syncEnded = err ? err.message : 'ended'),
      });
      nodes.push(sim);
    });
    const deadline = performance.now() + 60_000;
    while (nodes.some((n) => !n.snapshot)) {
      const ended = nodes.find((n) => n.syncEnded);
      if (ended) throw new Error(`node ${ended.name}: Sync stream ended: ${ended.syncEnded}`);
      if (performance.now() > deadline) throw new Error(`${nodes.filter((n) => !n.snapshot).length} nodes got no Sync snapshot within 60 s`);
      await new Promise((r) => setTimeout(r, 20));
    }
    return { nodes: nodes.length, ms: performance.now() - start };
  },

  /**
   * Mints `perEntry` X.509-SVIDs for each of a node's entries (keys generated here), every node's
   * batches in flight at once (one outstanding call per node, as an agent has). Then checks every
   * chain against the bundle and the key sent (after the clock stopped).
   */
  async mint(a: { entries: Record<string, string[]>; perEntry: number }) {
    const minted: { node: string; spki: Buffer; chain: Buffer[]; spiffeId: string }[] = [];
    const start = performance.now();
    let keygenMs = 0;
    await Promise.all(
      nodes.map(async (node) => {
        const wanted = (a.entries[node.name] ?? []).flatMap((entryId) => Array.from({ length: a.perEntry }, () => entryId));
        for (let i = 0; i < wanted.length; i += BATCH) {
          const k0 = performance.now();
          const requests: WireX509SvidRequest[] = wanted.slice(i, i + BATCH).map((entryId) => ({ entry_id: entryId, task_agent: '', task_id: '', public_key: generateLeafKeyPair('ec-p256').spki }));
          keygenMs += performance.now() - k0;
          const results = await node.client.mintX509Svids(requests);
          results.forEach((r, j) => {
            if (r.error_code) throw new Error(`node ${node.name}: mint of entry ${requests[j]!.entry_id} refused: ${r.error_code} ${r.error_message}`);
            minted.push({ node: node.name, spki: requests[j]!.public_key, chain: r.cert_chain, spiffeId: '' });
          });
        }
      }),
    );
    const ms = performance.now() - start;
    // The benchmark's own check: the server signed what was asked, under the trust domain's roots.
    const bundle = X509Bundle.fromDer(trustDomain, roots);
    const now = Date.now();
    const ids = new Set<string>();
    for (const m of minted) {
      const verified = verifyX509Svid(m.chain, bundle, { now });
      const leafKey = verified.leaf.publicKey.export({ format: 'der', type: 'spki' });
      if (!leafKey.equals(m.spki)) throw new Error(`node ${m.node}: an SVID for ${verified.spiffeId.toString()} does not certify the key sent`);
      ids.add(verified.spiffeId.toString());
    }
    return { minted: minted.length, verified: minted.length, spiffeIds: ids.size, ms, keygenMs };
  },

  /**
   * Resolves when every node's Sync stream has delivered an update whose deny list changes name
   * `spiffeId`; returns each node's arrival time (wall clock) and how busy this process was
   * meanwhile (from the watch's start).
   */
  async watchRevocation(a: { spiffeId: string; timeoutMs: number }) {
    meterStart();
    const watch: Watch = { needle: JSON.stringify(a.spiffeId), arrivals: new Map(), changed: () => undefined };
    for (const n of nodes) {
      const seen = n.recent.find((u) => u.revocations.some((r) => r.includes(watch.needle)));
      if (seen) watch.arrivals.set(n, seen.at);
    }
    return new Promise<{ arrivals: number[]; meter: ReturnType<typeof meterRead> }>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      let ended: NodeJS.Timeout | undefined;
      const finish = (err: Error | undefined) => {
        clearTimeout(timer);
        clearInterval(ended);
        watches.delete(watch);
        if (err) reject(err);
        else resolve({ arrivals: nodes.map((n) => watch.arrivals.get(n)!), meter: meterRead() });
      };
      watch.changed = () => {
        if (watch.arrivals.size === nodes.length) finish(undefined);
      };
      timer = setTimeout(() => finish(new Error(`${nodes.length - watch.arrivals.size} of ${nodes.length} nodes never got the revocation of ${a.spiffeId}`)), a.timeoutMs);
      ended = setInterval(() => {
        const gone = nodes.find((n) => n.syncEnded);
        if (gone) finish(new Error(`node ${gone.name}: Sync stream ended: ${gone.syncEnded}`));
      }, 100);
      watches.add(watch);
      watch.changed();
    });
  },

  /** Starts a measuring window (CPU time, event-loop delay); meterRead ends it. */
  meterStart() {
    meterStart();
    return {};
  },
  meterRead() {
    return meterRead();
  },

  /** Streams still open (every node's Sync must stay up for the whole benchmark). */
  status() {
    return { nodes: nodes.length, syncOpen: nodes.filter((n) => !n.syncEnded).length, ended: nodes.filter((n) => n.syncEnded).map((n) => `${n.name}: ${n.syncEnded}`) };
  },

  close() {
    for (const n of nodes) {
      n.cancelSync();
      n.client.close();
    }
    return {};
  },
});
ipc.emit('ready', { pid: process.pid, wallNow: wallNow() });
