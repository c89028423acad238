import { describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { silentLogger } from '../common/logger.js';
import { Secret } from '../common/secret.js';
import { SpiffeId } from '../spiffe/spiffe-id.js';
import { parseSelector } from '../spiffe/selector.js';
import { matchEntries } from '../entries/match.js';
import type { AgentIdError } from '../common/errors.js';
import type { RegistrationEntry, TaskBinding, TaskRecord } from '../datastore/types.js';
import { resolveIdentities } from './identity.js';
import { StreamHub, type Caller, type StateEncoders } from './hub.js';
import { SvidCache, type MintedX509 } from './svid-cache.js';
import type { TrustMaterial, TrustVersions } from './trust.js';

const T0 = Date.UTC(2026, 5, 1);

/** Turns of the event loop until the hub's fan-out has run. */
const settled = (hub: StreamHub) => hub.idle();
/** One turn of the event loop: the hub runs at most one slice in it. */
const oneTurn = () => new Promise<void>((resolve) => setImmediate(resolve));

function entry(id: string, selectors: string[], extra: Partial<RegistrationEntry> = {}): RegistrationEntry {
  return {
    id,
    spiffeId: `spiffe://td.example/${id}`,
    selectors: selectors.map(parseSelector),
    x509TtlMs: 600_000,
    jwtTtlMs: 300_000,
    hint: '',
    dnsNames: [],
    federatesWith: [],
    includeTasks: false,
    expiresAt: null,
    createdAt: T0,
    updatedAt: T0,
    revision: 1,
    node: null,
    ...extra,
  };
}

function task(id: string, binding: TaskBinding, extra: Partial<TaskRecord> = {}): TaskRecord {
  return {
    id,
    agent: 'coder',
    spiffeId: `spiffe://td.example/agent/coder/task/${id}`,
    binding,
    metadata: {},
    state: 'active',
    x509TtlMs: 600_000,
    jwtTtlMs: 300_000,
    createdAt: T0,
    expiresAt: T0 + 3_600_000,
    endedAt: null,
    endReason: null,
    createdBy: 'test',
    node: null,
    ...extra,
  };
}

function caller(pid: number, uid: number, opts: { ancestors?: number[]; cgroup?: string; ancestorsKnown?: boolean } = {}): Caller {
  return {
    pid,
    uid,
    startTime: `st${pid}`,
    ancestors: (opts.ancestors ?? []).map((a) => ({ pid: a, startTime: `st${a}` })),
    ...(opts.ancestorsKnown === undefined ? {} : { ancestorsKnown: opts.ancestorsKnown }),
    cgroup: opts.cgroup ?? null,
    selectors: [parseSelector(`unix:uid:${uid}`), parseSelector(`unix:pid:${pid}`)],
  };
}

/**
 * A hub over a small in-memory world (entries, tasks, deny list, trust versions), with JSON
 * "encoders" that count their calls, and streams that record every message they receive.
 */
function world(opts: { sliceSize?: number; parents?: Map<number, number[]>; recordIssuance?: () => void | Promise<void> } = {}) {
  const clock = new ManualClock(T0);
  let serial = 0;
  const events: string[] = [];
  const minter = {
    mintX509Svid: ({ spiffeId, ttlMs }: { spiffeId: SpiffeId; ttlMs: number }): MintedX509 => {
      serial++;
      events.push(`mint ${spiffeId.toString()}`);
      return {
        spiffeId: spiffeId.toString(),
        certDer: Buffer.from([serial]),
        chainDer: [Buffer.from([serial])],
        privateKeyPkcs8: new Secret(Buffer.from([2])),
        serial: String(serial),
        notBefore: clock.now(),
        notAfter: clock.now() + ttlMs,
        issuerId: 'ca1',
      };
    },
    mintJwtSvid: () => {
      throw new Error('not used');
    },
  };
  const versions: TrustVersions = { x509: 1, jwt: 1, crl: 1, federation: 1 };
  /** Recomputes of a stream's response (each reads the trust versions once). */
  const computes = { count: 0 };
  const content = { crl: 'crl-1', jwt: 'jwks-1', x509: 'ca-1', fed: new Map<string, string>() };
  const trust: TrustMaterial = {
    trustDomainId: 'spiffe://td.example',
    ownX509Bundle: () => [Buffer.from(content.x509)],
    ownJwtBundle: () => Buffer.from(content.jwt),
    crls: () => [Buffer.from(content.crl)],
    federatedX509: (tds) => new Map([...tds].filter((td) => content.fed.has(td)).map((td) => [`spiffe://${td}`, [Buffer.from(content.fed.get(td)!)]])),
    federatedJwt: (tds) => new Map([...tds].filter((td) => content.fed.has(td)).map((td) => [`spiffe://${td}`, Buffer.from(content.fed.get(td)!)])),
    version: () => versions.x509 + versions.jwt + versions.federation,
    versions: () => {
      computes.count++;
      return { ...versions };
    },
  };
  const encodes = { x509: 0, x509Bundles: 0, jwtBundles: 0 };
  const json = (v: unknown) =>
    Buffer.from(JSON.stringify(v, (_k, x) => (x instanceof Map ? Object.fromEntries(x) : x?.type === 'Buffer' ? Buffer.from(x.data).toString() : x)));
  const encoders: StateEncoders = {
    x509: (s) => {
      encodes.x509++;
      return json({ ids: s.svids.map((x) => x.svid.spiffeId), serials: s.svids.map((x) => x.svid.serial), crls: s.crls, fed: s.federatedBundles });
    },
    x509Bundles: (s) => {
      encodes.x509Bundles++;
      return json({ bundles: s.bundles, crls: s.crls });
    },
    jwtBundles: (s) => {
      encodes.jwtBundles++;
      return json({ bundles: s.bundles });
    },
  };
  const entries = new Map<string, RegistrationEntry>();
  const tasks = new Map<string, TaskRecord>();
  const revoked = new Set<string>();
  /** Parent chains read for callers attested without one: one list of PIDs per walk call. */
  const walks: number[][] = [];
  const ancestry = opts.parents && {
    needed: () => [...tasks.values()].some((t) => t.binding.kind === 'process' && t.binding.descendants),
    walk: async (processes: readonly { pid: number; startTime: string }[]) => {
      walks.push(processes.map((p) => p.pid));
      return processes.map((p) => (opts.parents!.get(p.pid) ?? []).map((a) => ({ pid: a, startTime: `st${a}` })));
    },
  };
  const cache = new SvidCache({ minter, recordIssuance: opts.recordIssuance ?? (() => {}), events: { x509Issued: () => {}, jwtIssued: () => {} }, clock, logger: silentLogger(), random: () => 0 });
  const hub = new StreamHub({
    identitiesFor: (c, now) =>
      resolveIdentities({
        caller: c,
        matchedEntries: matchEntries([...entries.values()], c.selectors, now),
        tasks: [...tasks.values()],
        isRevoked: (id) => revoked.has(id),
        now,
        taskBufferMs: 0,
      }),
    cache,
    trust,
    encoders,
    clock,
    logger: silentLogger(),
    around: (fn) => {
      events.push('around:start');
      try {
        return fn();
      } finally {
        events.push('around:end');
      }
    },
    sliceSize: opts.sliceSize,
    ancestry,
  });

  interface Stream {
    messages: Record<string, unknown>[];
    raw: Buffer[];
    ends: AgentIdError[];
    unsubscribe: () => void;
  }
  const open = (kind: 'x509' | 'x509-bundles' | 'jwt-bundles', c: Caller): Stream => {
    const s: Stream = { messages: [], raw: [], ends: [], unsubscribe: () => {} };
    const handle = hub.subscribe(kind, c, {
      deliver(m) {
        events.push(`deliver ${c.pid}`);
        s.raw.push(m);
        s.messages.push(JSON.parse(m.toString()));
      },
      end: (e) => s.ends.push(e),
    });
    s.unsubscribe = () => hub.unsubscribe(handle);
    return s;
  };
  return {
    hub, clock, cache, versions, content, encodes, computes, entries, tasks, revoked, events, open, walks,
    putEntry(e: RegistrationEntry) {
      const before = entries.get(e.id);
      entries.set(e.id, e);
      hub.changed({ kind: 'entry', before, after: e });
    },
    putTask(t: TaskRecord) {
      const before = tasks.get(t.id);
      tasks.set(t.id, t);
      hub.changed({ kind: 'task', before, after: t });
    },
  };
}

const counts = (streams: { messages: unknown[] }[]) => streams.map((s) => s.messages.length);

describe('StreamHub', () => {
  it('sends the first state at once and later ones only when something changed', async () => {
    const w = world();
    w.entries.set('a', entry('a', ['unix:uid:1000']));
    const s = w.open('x509', caller(10, 1000));
    expect(s.messages).toHaveLength(1);
    w.hub.refresh();
    await settled(w.hub);
    expect(s.messages).toHaveLength(1);
    w.putEntry(entry('b', ['unix:uid:1000']));
    await settled(w.hub);
    expect(s.messages.at(-1)!.ids).toEqual(['spiffe://td.example/a', 'spiffe://td.example/b']);
  });

  it('runs the fan-out after the change returns, in slices, and recomputes a stream marked twice once', async () => {
    const w = world({ sliceSize: 2 });
    w.entries.set('a', entry('a', ['unix:uid:1000']));
    const streams = [1, 2, 3, 4, 5].map((pid) => w.open('x509', caller(pid, 1000)));
    w.putEntry(entry('b', ['unix:uid:1000']));
    w.putEntry(entry('c', ['unix:uid:1000']));
    expect(counts(streams)).toEqual([1, 1, 1, 1, 1]); // nothing inside the changing call
    await oneTurn();
    expect(counts(streams)).toEqual([2, 2, 1, 1, 1]); // one slice per turn
    await settled(w.hub);
    // Both changes arrived in one message per stream (latest wins).
    expect(counts(streams)).toEqual([2, 2, 2, 2, 2]);
    expect(streams.every((s) => (s.messages.at(-1)!.ids as string[]).length === 3)).toBe(true);
  });

  it('an entry change reaches only the streams its selectors (before or after) match', async () => {
    const w = world();
    w.entries.set('base0', entry('base0', ['unix:uid:1000']));
    w.entries.set('base1', entry('base1', ['unix:uid:1001']));
    const u1000 = [1, 2, 3].map((pid) => w.open('x509', caller(pid, 1000)));
    const u1001 = [4, 5].map((pid) => w.open('x509', caller(pid, 1001)));
    w.putEntry(entry('x', ['unix:uid:1000', 'unix:pid:2']));
    await settled(w.hub);
    expect(counts([...u1000, ...u1001])).toEqual([1, 2, 1, 1, 1]);
    // Moving the entry to pid 4 takes it from pid 2's stream and gives it to pid 4's.
    w.putEntry(entry('x', ['unix:uid:1001', 'unix:pid:4']));
    await settled(w.hub);
    expect(counts([...u1000, ...u1001])).toEqual([1, 3, 1, 2, 1]);
    expect(u1000[1]!.messages.at(-1)!.ids).toEqual(['spiffe://td.example/base0']);
    expect(u1001[0]!.messages.at(-1)!.ids).toEqual(['spiffe://td.example/base1', 'spiffe://td.example/x']);
  });

  it('an entry change reaches every stream of callers sharing one selector list object, also after some of them closed', async () => {
    const w = world();
    w.entries.set('base', entry('base', ['unix:uid:1000']));
    // Callers of one process (or one user and binary) share one selector list (attestation-cache.ts).
    const shared = caller(1, 1000).selectors;
    const same = [1, 2, 3].map((pid) => w.open('x509', { ...caller(pid, 1000), selectors: shared }));
    const other = w.open('x509', caller(9, 1000));
    w.putEntry(entry('x', ['unix:pid:1']));
    await settled(w.hub);
    expect(counts([...same, other])).toEqual([2, 2, 2, 1]);
    // Two of the three close: the list stays filed for the last one, and for nothing once it closes too.
    same[0]!.unsubscribe();
    same[1]!.unsubscribe();
    w.putEntry(entry('y', ['unix:uid:1000', 'unix:pid:1']));
    await settled(w.hub);
    expect(counts([...same, other])).toEqual([2, 2, 3, 1]);
    expect(same[2]!.messages.at(-1)!.ids).toEqual(['spiffe://td.example/base', 'spiffe://td.example/x', 'spiffe://td.example/y']);
    same[2]!.unsubscribe();
    w.putEntry(entry('z', ['unix:pid:1']));
    await settled(w.hub);
    expect(counts([...same, other])).toEqual([2, 2, 3, 1]);
    expect(w.hub.size).toBe(1);
  });

  it('a task change reaches its bound process, descendants only when allowed, and its cgroup subtree', async () => {
    const w = world();
    w.entries.set('base', entry('base', ['unix:uid:1000'], { includeTasks: true }));
    const parent = w.open('x509', caller(100, 1000));
    const child = w.open('x509', caller(101, 1000, { ancestors: [100] }));
    const inCgroup = w.open('x509', caller(200, 1000, { cgroup: '/agents/a/sub' }));
    const sibling = w.open('x509', caller(201, 1000, { cgroup: '/agents/ab' }));
    const other = w.open('x509', caller(300, 1000));
    const all = [parent, child, inCgroup, sibling, other];

    w.putTask(task('t1', { kind: 'process', pid: 100, startTime: 'st100', descendants: false }));
    await settled(w.hub);
    expect(counts(all)).toEqual([2, 1, 1, 1, 1]);
    w.putTask(task('t2', { kind: 'process', pid: 100, startTime: 'st100', descendants: true }));
    await settled(w.hub);
    expect(counts(all)).toEqual([3, 2, 1, 1, 1]);
    // A reused PID (another start time) is another process.
    w.putTask(task('t3', { kind: 'process', pid: 100, startTime: 'other', descendants: true }));
    await settled(w.hub);
    expect(counts(all)).toEqual([3, 2, 1, 1, 1]);
    w.putTask(task('t4', { kind: 'cgroup', path: '/agents/a' }));
    await settled(w.hub);
    expect(counts(all)).toEqual([3, 2, 2, 1, 1]);
    // Ending t2 takes it from both processes it covered.
    w.putTask({ ...w.tasks.get('t2')!, state: 'ended' });
    await settled(w.hub);
    expect(counts(all)).toEqual([4, 3, 2, 1, 1]);
    expect(child.messages.at(-1)!.ids).toEqual(['spiffe://td.example/base']);
  });

  it('hands a new certificate out only once its issuance record is durable, and ends the stream when it cannot be', async () => {
    const pending: { resolve: () => void; reject: (err: Error) => void }[] = [];
    const w = world({ recordIssuance: () => new Promise<void>((resolve, reject) => pending.push({ resolve, reject })) });
    w.entries.set('a', entry('a', ['unix:uid:1000']));
    w.entries.set('b', entry('b', ['unix:uid:2000']));
    const durable = w.open('x509', caller(1, 1000));
    const lost = w.open('x509', caller(2, 2000));
    expect(pending).toHaveLength(2);
    expect(counts([durable, lost])).toEqual([0, 0]);
    pending[0]!.resolve();
    pending[1]!.reject(new Error('disk gone'));
    await settled(w.hub);
    await new Promise((r) => setImmediate(r));
    expect(counts([durable, lost])).toEqual([1, 0]);
    expect(durable.messages[0]!.ids).toEqual(['spiffe://td.example/a']);
    expect(lost.ends.map((e) => e.code)).toEqual(['unavailable']);
    // The same certificate to another stream: durable already, so at once.
    const again = w.open('x509', caller(3, 1000));
    expect(counts([again])).toEqual([1]);
  });

  it('reads the parent chains of streams opened without one only when a task bound with descendants appears, and recomputes the streams it covers', async () => {
    const w = world({ parents: new Map([[101, [100, 1]], [102, [100, 1]], [300, [1]]]) });
    w.entries.set('base', entry('base', ['unix:uid:1000'], { includeTasks: true }));
    const child = w.open('x509', caller(101, 1000, { ancestorsKnown: false }));
    const grandchild = w.open('x509', caller(102, 1000, { ancestorsKnown: false }));
    const other = w.open('x509', caller(300, 1000, { ancestorsKnown: false }));
    const all = [child, grandchild, other];

    // Not while no task covers descendants: a task bound to pid 100 alone reaches nobody here.
    w.putTask(task('t1', { kind: 'process', pid: 100, startTime: 'st100', descendants: false }));
    await settled(w.hub);
    expect(w.walks).toEqual([]);
    expect(counts(all)).toEqual([1, 1, 1]);

    w.putTask(task('t2', { kind: 'process', pid: 100, startTime: 'st100', descendants: true }));
    await settled(w.hub);
    expect(w.walks).toEqual([[101, 102, 300]]);
    expect(counts(all)).toEqual([2, 2, 1]);
    expect(child.messages.at(-1)!.ids).toEqual(['spiffe://td.example/agent/coder/task/t2', 'spiffe://td.example/base']);

    // Walked once: the chains are now indexed like any attested one, and a later task finds them.
    w.putTask(task('t3', { kind: 'process', pid: 100, startTime: 'st100', descendants: true }));
    await settled(w.hub);
    expect(w.walks).toHaveLength(1);
    expect(counts(all)).toEqual([3, 3, 1]);
    w.putTask({ ...w.tasks.get('t2')!, state: 'ended' });
    w.putTask({ ...w.tasks.get('t3')!, state: 'ended' });
    await settled(w.hub);
    expect(grandchild.messages.at(-1)!.ids).toEqual(['spiffe://td.example/base']);
  });

  it('reads the chain at once of a stream opened while a task covers descendants (attested before the task started)', async () => {
    const w = world({ parents: new Map([[101, [100, 1]]]) });
    w.entries.set('base', entry('base', ['unix:uid:1000'], { includeTasks: true }));
    w.tasks.set('t2', task('t2', { kind: 'process', pid: 100, startTime: 'st100', descendants: true }));
    const child = w.open('x509', caller(101, 1000, { ancestorsKnown: false }));
    expect(child.messages.at(-1)!.ids).toEqual(['spiffe://td.example/base']);
    await settled(w.hub);
    expect(w.walks).toEqual([[101]]);
    expect(child.messages.at(-1)!.ids).toEqual(['spiffe://td.example/agent/coder/task/t2', 'spiffe://td.example/base']);
  });

  it('does not read the chain of a stream that closed before its turn, nor of one attested with its chain', async () => {
    const w = world({ parents: new Map([[101, [100, 1]], [103, [100, 1]]]) });
    w.entries.set('base', entry('base', ['unix:uid:1000'], { includeTasks: true }));
    const gone = w.open('x509', caller(101, 1000, { ancestorsKnown: false }));
    const attested = w.open('x509', caller(103, 1000, { ancestors: [100, 1] }));
    w.putTask(task('t2', { kind: 'process', pid: 100, startTime: 'st100', descendants: true }));
    gone.unsubscribe();
    await settled(w.hub);
    expect(w.walks).toEqual([]);
    expect(counts([gone, attested])).toEqual([1, 2]);
  });

  it('a revocation recomputes the streams holding that SPIFFE ID and ends one left with nothing', async () => {
    const w = world();
    w.entries.set('a', entry('a', ['unix:pid:1']));
    w.entries.set('b', entry('b', ['unix:uid:1000']));
    const onlyA = w.open('x509', caller(1, 2000));
    const both = w.open('x509', caller(1, 1000));
    const onlyB = w.open('x509', caller(2, 1000));
    w.revoked.add('spiffe://td.example/a');
    w.hub.changed({ kind: 'revocation', spiffeId: 'spiffe://td.example/a' });
    await settled(w.hub);
    expect(onlyA.ends.map((e) => e.code)).toEqual(['permission_denied']);
    expect(both.messages.at(-1)!.ids).toEqual(['spiffe://td.example/b']);
    expect(counts([onlyA, both, onlyB])).toEqual([1, 2, 1]);
    expect(w.hub.size).toBe(2);
  });

  it('a CRL change re-sends X.509 and X.509-bundle streams, never JWT bundles; a federation change only its federating streams', async () => {
    const w = world();
    w.entries.set('a', entry('a', ['unix:uid:1000']));
    w.entries.set('f', entry('f', ['unix:uid:1001'], { federatesWith: ['partner.example'] }));
    w.content.fed.set('partner.example', 'partner-1');
    const streams = [
      w.open('x509', caller(1, 1000)),
      w.open('x509-bundles', caller(2, 1000)),
      w.open('jwt-bundles', caller(3, 1000)),
      w.open('x509', caller(4, 1001)),
      w.open('jwt-bundles', caller(5, 1001)),
    ];
    w.versions.crl++;
    w.content.crl = 'crl-2';
    w.hub.changed({ kind: 'trust' });
    await settled(w.hub);
    expect(counts(streams)).toEqual([2, 2, 1, 2, 1]);

    w.versions.federation++;
    w.content.fed.set('partner.example', 'partner-2');
    w.hub.changed({ kind: 'federation', trustDomain: 'partner.example' });
    await settled(w.hub);
    expect(counts(streams)).toEqual([2, 2, 1, 3, 2]);
    expect(streams[4]!.messages.at(-1)!.bundles).toMatchObject({ 'spiffe://partner.example': 'partner-2' });
  });

  it('never sends a stream a message identical to its previous one, even when versions move', async () => {
    const w = world();
    w.entries.set('a', entry('a', ['unix:uid:1000']));
    const streams = [w.open('x509', caller(1, 1000)), w.open('x509-bundles', caller(2, 1000)), w.open('jwt-bundles', caller(3, 1000))];
    // A CA rotation that changed neither bundle's content (the key was prepared, not yet active).
    w.versions.x509++;
    w.versions.jwt++;
    w.hub.changed({ kind: 'trust' });
    await settled(w.hub);
    expect(counts(streams)).toEqual([1, 1, 1]);
    w.content.jwt = 'jwks-2';
    w.versions.jwt++;
    w.hub.changed({ kind: 'trust' });
    await settled(w.hub);
    expect(counts(streams)).toEqual([1, 1, 2]);
    for (const s of streams) for (let i = 1; i < s.raw.length; i++) expect(s.raw[i]!.equals(s.raw[i - 1]!)).toBe(false);
  });

  it('encodes each distinct response once and hands the same bytes to every stream sharing it', async () => {
    const w = world();
    w.entries.set('a', entry('a', ['unix:uid:1000']));
    const streams = Array.from({ length: 50 }, (_, i) => w.open('x509', caller(10 + i, 1000)));
    const bundles = Array.from({ length: 20 }, (_, i) => w.open('x509-bundles', caller(100 + i, 1000)));
    expect(w.encodes).toMatchObject({ x509: 1, x509Bundles: 1 });
    w.versions.crl++;
    w.content.crl = 'crl-2';
    w.hub.changed({ kind: 'trust' });
    await settled(w.hub);
    expect(w.encodes).toMatchObject({ x509: 2, x509Bundles: 2 });
    expect(streams.every((s) => s.raw[1] === streams[0]!.raw[1])).toBe(true);
    expect(bundles.every((s) => s.raw[1] === bundles[0]!.raw[1])).toBe(true);
    // Held as long as streams hold it: in memory of its own (the encoder's small Buffer is a slice
    // of a shared 8 KiB pool slab, which it would keep alive), with the same bytes.
    const held = streams[0]!.raw[1] as Buffer;
    expect(held.byteOffset === 0 && held.buffer.byteLength === held.length).toBe(true);
    expect(JSON.parse(held.toString()).crls).toEqual(['crl-2']);
  });

  it('a CRL change sweeps every stream after the call, behind marked streams, and a second one restarts the sweep (latest wins)', async () => {
    const w = world({ sliceSize: 2 });
    w.entries.set('a', entry('a', ['unix:uid:1000']));
    w.entries.set('v', entry('v', ['unix:pid:9']));
    const streams = [1, 2, 3, 4, 5, 6].map((pid) => w.open('x509', caller(pid, 1000)));
    const victim = w.open('x509', caller(9, 2000));
    const crl = (n: number) => {
      w.versions.crl++;
      w.content.crl = `crl-${n}`;
      w.hub.changed({ kind: 'trust' });
    };
    // The revocation the CRL change is about: the revoked stream is marked after the sweep began.
    crl(2);
    w.revoked.add('spiffe://td.example/v');
    w.hub.changed({ kind: 'revocation', spiffeId: 'spiffe://td.example/v' });
    expect(counts([...streams, victim])).toEqual([1, 1, 1, 1, 1, 1, 1]); // nothing inside the changing call
    await oneTurn();
    // The marked stream went first, in a slice of its own (and ended: it has nothing left).
    expect(victim.ends.map((e) => e.code)).toEqual(['permission_denied']);
    expect(counts(streams).reduce((a, b) => a + b)).toBe(6);
    await oneTurn();
    expect(counts(streams).reduce((a, b) => a + b)).toBe(6 + 2);
    crl(3);
    await settled(w.hub);
    // Each stream ends with the latest CRL; those reached before the second change got both.
    for (const s of streams) expect(s.messages.at(-1)!.crls).toEqual(['crl-3']);
    expect(counts(streams).reduce((a, b) => a + b)).toBe(6 + 2 + 6);
    for (const s of streams) for (let i = 1; i < s.raw.length; i++) expect(s.raw[i]!.equals(s.raw[i - 1]!)).toBe(false);
    // A stream opened during a sweep already has the latest state and is not sent it again.
    crl(4);
    const late = w.open('x509', caller(7, 1000));
    await settled(w.hub);
    expect(late.messages.map((m) => m.crls)).toEqual([['crl-4']]);
  });

  it('streams that shared a response share one recompute per slice of a sweep', async () => {
    const w = world({ sliceSize: 10 });
    w.entries.set('a', entry('a', ['unix:uid:1000']));
    w.entries.set('b', entry('b', ['unix:uid:1001']));
    const streams = [
      ...Array.from({ length: 20 }, (_, i) => w.open('x509', caller(10 + i, 1000))),
      ...Array.from({ length: 20 }, (_, i) => w.open('x509', caller(100 + i, 1001))),
    ];
    w.computes.count = 0;
    w.versions.crl++;
    w.content.crl = 'crl-2';
    w.hub.changed({ kind: 'trust' });
    await settled(w.hub);
    // Four slices of ten streams, each of one shared response: four recomputes, not forty.
    expect(w.computes.count).toBe(4);
    expect(counts(streams)).toEqual(streams.map(() => 2));
    expect(streams.every((s) => (s.messages[1]!.crls as string[])[0] === 'crl-2')).toBe(true);
    expect(streams.slice(0, 20).every((s) => s.raw[1] === streams[0]!.raw[1])).toBe(true);
    expect(streams[20]!.messages[1]!.ids).toEqual(['spiffe://td.example/b']);
  });

  it('a stream whose identity reached its end resolves again in a sweep, even when its response was shared', async () => {
    const w = world();
    w.entries.set('keep', entry('keep', ['unix:uid:1000']));
    w.entries.set('short', entry('short', ['unix:uid:1001'], { expiresAt: T0 + 60_000 }));
    // Bundle streams of different identities share one response (whichever the sweep reaches first).
    const keeps = w.open('x509-bundles', caller(1, 1000));
    const ends = w.open('x509-bundles', caller(2, 1001));
    const keepsToo = w.open('x509-bundles', caller(3, 1000));
    expect(keeps.raw[0]).toBe(ends.raw[0]);
    await w.clock.advance(59_500);
    w.versions.crl++;
    w.content.crl = 'crl-2';
    w.hub.changed({ kind: 'trust' });
    await settled(w.hub);
    expect(counts([keeps, ends, keepsToo])).toEqual([2, 1, 2]);
    expect(ends.ends.map((e) => e.code)).toEqual(['permission_denied']);
  });

  it('renews at half-life only the streams holding a due SVID, sharing one SVID per identity', async () => {
    const w = world();
    w.entries.set('a', entry('a', ['unix:uid:1000']));
    w.entries.set('b', entry('b', ['unix:uid:1001'], { x509TtlMs: 3_600_000 }));
    const a1 = w.open('x509', caller(1, 1000));
    const a2 = w.open('x509', caller(2, 1000));
    const b = w.open('x509', caller(3, 1001));
    expect(a1.messages[0]!.serials).toEqual(a2.messages[0]!.serials);
    await w.clock.advance(299_000);
    w.hub.changed({ kind: 'renewal' });
    await settled(w.hub);
    expect(counts([a1, a2, b])).toEqual([1, 1, 1]);
    await w.clock.advance(2_000); // past half of a's 600 s lifetime, far from b's
    w.hub.changed({ kind: 'renewal' });
    await settled(w.hub);
    expect(counts([a1, a2, b])).toEqual([2, 2, 1]);
    expect(a1.messages[1]!.serials).toEqual(a2.messages[1]!.serials);
    expect(a1.messages[1]!.serials).not.toEqual(a1.messages[0]!.serials);
  });

  it('drops an identity that reaches its end from the streams holding it', async () => {
    const w = world();
    w.entries.set('keep', entry('keep', ['unix:uid:1000']));
    w.entries.set('short', entry('short', ['unix:pid:1'], { expiresAt: T0 + 60_000 }));
    const s1 = w.open('x509', caller(1, 1000));
    const s2 = w.open('x509', caller(2, 1000));
    // s1's holdings change while it keeps holding the expiring entry: its end must stay known.
    w.putEntry(entry('more', ['unix:pid:1']));
    await settled(w.hub);
    await w.clock.advance(59_500);
    w.hub.changed({ kind: 'expiry' });
    await settled(w.hub);
    expect(counts([s1, s2])).toEqual([3, 1]);
    expect(s1.messages.at(-1)!.ids).toEqual(['spiffe://td.example/keep', 'spiffe://td.example/more']);
  });

  it('writes the audit of a slice (minting) before delivering any of its states', async () => {
    const w = world();
    w.entries.set('a', entry('a', ['unix:uid:1000']));
    w.open('x509', caller(1, 1000));
    w.open('x509', caller(2, 1000));
    w.events.length = 0;
    w.putEntry(entry('b', ['unix:uid:1000']));
    await settled(w.hub);
    expect(w.events).toEqual(['around:start', 'mint spiffe://td.example/b', 'around:end', 'deliver 1', 'deliver 2']);
  });

  it('refuses a caller with no identity; unsubscribed and closed streams get nothing more', async () => {
    const w = world();
    expect(() => w.open('x509', caller(1, 1000))).toThrow(/no identity issued/);
    w.entries.set('a', entry('a', ['unix:uid:1000']));
    const gone = w.open('x509', caller(1, 1000));
    const stays = w.open('x509', caller(2, 1000));
    w.putEntry(entry('b', ['unix:uid:1000']));
    gone.unsubscribe(); // after the change was marked, before the fan-out ran
    await settled(w.hub);
    expect(counts([gone, stays])).toEqual([1, 2]);
    w.hub.closeAll(new Error('bye') as AgentIdError);
    expect(stays.ends).toHaveLength(1);
    expect(w.hub.size).toBe(0);
  });
});
