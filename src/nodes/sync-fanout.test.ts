import { describe, expect, it } from 'vitest';
import { ManualClock } from '../common/clock.js';
import { authorityFixture, entryFixture, revocationFixture, taskFixture } from '../datastore/conformance.js';
import type { RegistrationEntry } from '../datastore/types.js';
import type { StateChange } from '../state/read-model.js';
import { changesForNode, type ViewChange } from './authorize.js';
import { SyncFanout, updateMessage, type FanoutStream, type SyncUpdateMessage } from './sync-fanout.js';

const T0 = Date.UTC(2026, 0, 1);
const entry = (over: Partial<RegistrationEntry> = {}): RegistrationEntry => ({ ...entryFixture(over), createdAt: T0, updatedAt: T0, revision: 1 });

/** A fan-out whose "later turn" runs only when the test says, with streams that record what they are sent. */
function setup(nodes: string[]) {
  const turns: (() => void)[] = [];
  const encoded: SyncUpdateMessage[] = [];
  let revision = 7;
  const clock = new ManualClock(T0);
  const fanout = new SyncFanout({
    clock,
    minIntervalMs: 10,
    revision: () => revision,
    encode: (m) => {
      encoded.push(m);
      return Buffer.from(JSON.stringify(m));
    },
    later: (fn) => turns.push(fn),
  });
  const streams = nodes.map((node) => {
    const s = { node, written: [] as Buffer[], admitted: true, admits: 0, admit: () => (s.admits++, s.admitted), write: (b: Buffer) => s.written.push(b) };
    return s satisfies FanoutStream;
  });
  for (const s of streams) {
    fanout.add(s);
    fanout.ready(s, 0);
  }
  /** Runs the turns due, then lets the interval pass (and whatever waited for it run). */
  const runTurns = async () => {
    while (turns.length > 0) turns.shift()!();
    await clock.advance(10);
    await new Promise((r) => setImmediate(r));
  };
  const received = (s: (typeof streams)[number]) => s.written.map((b) => JSON.parse(b.toString()) as SyncUpdateMessage);
  return { fanout, streams, runTurns, encoded, received, setRevision: (r: number) => (revision = r), turns, clock };
}

describe('SyncFanout: the nodes\' Sync streams', async () => {
  it('writes nothing inside the change listener (the admin call that wrote is answered first); all on a later turn', async () => {
    const { fanout, streams, runTurns, turns } = setup(['web-1', 'web-2']);
    fanout.changed([{ kind: 'revocation', spiffeId: 'spiffe://example.org/x', after: revocationFixture({ spiffeId: 'spiffe://example.org/x' }) }]);
    expect(streams.map((s) => s.written.length)).toEqual([0, 0]);
    expect(turns).toHaveLength(1);
    await runTurns();
    expect(streams.map((s) => s.written.length)).toEqual([1, 1]);
  });

  it('a change no node is named in is encoded once and the same bytes go to every stream', async () => {
    const nodes = Array.from({ length: 50 }, (_, i) => `web-${i}`);
    const { fanout, streams, runTurns, encoded } = setup(nodes);
    fanout.changed([
      { kind: 'revocation', spiffeId: 'spiffe://example.org/x', after: revocationFixture({ spiffeId: 'spiffe://example.org/x' }) },
      { kind: 'authority', serverId: 'server-a', after: authorityFixture() },
    ]);
    await runTurns();
    expect(encoded).toHaveLength(1);
    const first = streams[0]!.written[0]!;
    for (const s of streams) expect(s.written).toEqual([first]);
    expect(s0(streams[0]!.written)).toMatchObject({ revision: 7, snapshot: false, authorities: [JSON.stringify(authorityFixture())] });
  });

  it('each node gets exactly its authorize.ts share; nodes a batch does not name share one encoding', async () => {
    const nodes = ['web-1', 'web-2', 'web-3', 'web-4'];
    const { fanout, streams, runTurns, encoded, received } = setup(nodes);
    const batch: StateChange[] = [
      { kind: 'entry', after: entry({ id: 'everywhere' }) },
      { kind: 'entry', after: entry({ id: 'for-1', node: 'web-1' }) },
      { kind: 'entry', before: entry({ id: 'moved', node: 'web-2' }), after: entry({ id: 'moved', node: 'web-1' }) },
      { kind: 'task', before: taskFixture({ id: 't2', node: 'web-2' }), after: taskFixture({ id: 't2', node: 'web-2', state: 'revoked' }) },
      { kind: 'task', after: taskFixture({ id: 'server-task' }) },
      { kind: 'revocation', spiffeId: 'spiffe://example.org/t2', after: revocationFixture({ spiffeId: 'spiffe://example.org/t2' }) },
      { kind: 'node', name: 'web-9' },
    ];
    fanout.changed(batch);
    await runTurns();
    // web-1, web-2, and one for web-3 and web-4 together.
    expect(encoded).toHaveLength(3);
    const viewChanges = batch.filter((c): c is ViewChange => c.kind !== 'node' && c.kind !== 'authority');
    for (const s of streams) {
      const expected = updateMessage(changesForNode(s.node, viewChanges), { put: [], removed: [] }, 7, false);
      expect(received(s)).toEqual([expected]);
    }
    expect(streams[2]!.written[0]).toBe(streams[3]!.written[0]);
    expect(received(streams[0]!)[0]!.entries.map((e) => JSON.parse(e).id)).toEqual(['everywhere', 'for-1', 'moved']);
    expect(received(streams[1]!)[0]!.deleted_entries).toEqual(['moved']);
  });

  it('sends nothing when a batch holds nothing for a node (nor checks its caller), and nothing to a stream that is no longer admitted', async () => {
    const { fanout, streams, runTurns } = setup(['web-1', 'web-2']);
    fanout.changed([{ kind: 'task', after: taskFixture({ id: 'on-1', node: 'web-1' }) }]);
    fanout.changed([{ kind: 'task', after: taskFixture({ id: 'server-task' }) }]);
    await runTurns();
    expect(streams.map((s) => [s.written.length, s.admits])).toEqual([[1, 1], [0, 0]]);
    streams[1]!.admitted = false;
    fanout.changed([{ kind: 'revocation', spiffeId: 'spiffe://example.org/x', after: revocationFixture({ spiffeId: 'spiffe://example.org/x' }) }]);
    await runTurns();
    expect(streams.map((s) => [s.written.length, s.admits])).toEqual([[2, 2], [0, 1]]);
  });

  it('keeps each batch one message, in order, when several wait for the same delivery and an entry changed in two of them', async () => {
    const { fanout, streams, runTurns, received } = setup(['web-1']);
    fanout.changed([{ kind: 'entry', before: entry({ id: 'e', node: 'web-1' }), after: entry({ id: 'e', node: 'web-2' }) }]);
    fanout.changed([{ kind: 'entry', before: entry({ id: 'e', node: 'web-2' }), after: entry({ id: 'e', node: 'web-1' }) }]);
    await runTurns();
    const got = received(streams[0]!);
    expect(got.map((m) => [m.deleted_entries, m.entries.map((e) => JSON.parse(e).id)])).toEqual([
      [['e'], []],
      [[], ['e']],
    ]);
  });

  it('a stream still reading its snapshot gets every batch from the moment it was added, once it is ready', async () => {
    const { fanout, runTurns, received } = setup([]); // every change at revision 7; the snapshot below read at 6
    const late = { node: 'web-1', written: [] as Buffer[], admit: () => true, write: (b: Buffer) => late.written.push(b) };
    const r = (id: string): StateChange => ({ kind: 'revocation', spiffeId: id, after: revocationFixture({ spiffeId: id }) });
    fanout.add(late);
    fanout.changed([r('spiffe://example.org/1')]);
    await runTurns();
    fanout.changed([r('spiffe://example.org/2')]);
    expect(late.written).toHaveLength(0);
    fanout.ready(late, 6);
    expect(received(late as never).map((m) => JSON.parse(m.revocations[0]!).spiffeId)).toEqual(['spiffe://example.org/1']);
    await runTurns();
    expect(received(late as never).map((m) => JSON.parse(m.revocations[0]!).spiffeId)).toEqual(['spiffe://example.org/1', 'spiffe://example.org/2']);
    fanout.remove(late);
    fanout.changed([r('spiffe://example.org/3')]);
    await runTurns();
    expect(late.written).toHaveLength(2);
    expect(fanout.size).toBe(0);
  });

  it('a new stream is not sent again what its snapshot holds (changes applied by its revision), sent or still queued; newer ones follow', async () => {
    const { fanout, runTurns, received, setRevision, streams } = setup(['web-2']);
    const r = (id: string): StateChange => ({ kind: 'revocation', spiffeId: id, after: revocationFixture({ spiffeId: id }) });
    const ids = (s: { written: Buffer[] }) => received(s as never).flatMap((m) => m.revocations.map((x) => JSON.parse(x).spiffeId as string));
    const late = { node: 'web-1', written: [] as Buffer[], admit: () => true, write: (b: Buffer) => late.written.push(b) };
    fanout.add(late);
    setRevision(8);
    fanout.changed([r('spiffe://example.org/sent-while-reading')]);
    await runTurns();
    setRevision(9);
    fanout.changed([r('spiffe://example.org/queued-in-snapshot')]);
    setRevision(10);
    fanout.changed([r('spiffe://example.org/queued-after-snapshot')]);
    fanout.ready(late, 9); // the snapshot: read with the feed at 9
    await runTurns();
    expect(ids(late)).toEqual(['spiffe://example.org/queued-after-snapshot']);
    expect(ids(streams[0]!)).toEqual(['spiffe://example.org/sent-while-reading', 'spiffe://example.org/queued-in-snapshot', 'spiffe://example.org/queued-after-snapshot']);
    setRevision(11);
    fanout.changed([r('spiffe://example.org/later')]);
    await runTurns();
    expect(ids(late)).toEqual(['spiffe://example.org/queued-after-snapshot', 'spiffe://example.org/later']);
  });

  it('a change after a quiet spell goes out on the next turn; changes close behind a delivery wait for the interval and go out together, in one message', async () => {
    const { fanout, streams, turns, clock, received } = setup(['web-1']);
    const r = (id: string): StateChange => ({ kind: 'revocation', spiffeId: id, after: revocationFixture({ spiffeId: id }) });
    fanout.changed([r('spiffe://example.org/1')]);
    expect(turns).toHaveLength(1);
    turns.shift()!();
    expect(streams[0]!.written).toHaveLength(1);
    // 4 ms later, and 9 ms later: both wait until 10 ms after the first delivery.
    await clock.advance(4);
    fanout.changed([r('spiffe://example.org/2')]);
    await clock.advance(5);
    fanout.changed([r('spiffe://example.org/3')]);
    expect(turns).toHaveLength(0);
    await new Promise((resolve) => setImmediate(resolve));
    expect(streams[0]!.written).toHaveLength(1);
    await clock.advance(1);
    await new Promise((resolve) => setImmediate(resolve));
    // The two that waited share one message.
    expect(received(streams[0]!).map((m) => m.revocations.map((r) => JSON.parse(r).spiffeId))).toEqual([
      ['spiffe://example.org/1'],
      ['spiffe://example.org/2', 'spiffe://example.org/3'],
    ]);
    // Quiet for the interval: the next change is not held back.
    await clock.advance(10);
    fanout.changed([r('spiffe://example.org/4')]);
    expect(turns).toHaveLength(1);
  });

  it('within one delivery, a deny-list row or authority record changed again is sent only in its latest version; entries and tasks keep every change', async () => {
    const { fanout, streams, turns, received, clock } = setup(['web-1']);
    const x = 'spiffe://example.org/x';
    // A delivery first, so the next changes wait for the interval together.
    fanout.changed([{ kind: 'entry', after: entry({ id: 'first' }) }]);
    turns.shift()!();
    const v1 = authorityFixture({ updatedAt: T0 + 1 });
    const v2 = authorityFixture({ updatedAt: T0 + 2 });
    fanout.changed([
      { kind: 'authority', serverId: 'server-a', after: v1 },
      { kind: 'revocation', spiffeId: x, after: revocationFixture({ spiffeId: x }) },
      { kind: 'entry', before: entry({ id: 'e', node: 'web-1' }), after: entry({ id: 'e', node: 'web-2' }) },
    ]);
    fanout.changed([{ kind: 'authority', serverId: 'server-a', after: v2 }]);
    fanout.changed([
      { kind: 'revocation', spiffeId: x, before: revocationFixture({ spiffeId: x }) },
      { kind: 'entry', before: entry({ id: 'e', node: 'web-2' }), after: entry({ id: 'e', node: 'web-2', revision: 2 }) },
    ]);
    await clock.advance(10);
    await new Promise((resolve) => setImmediate(resolve));
    const [, ...later] = received(streams[0]!);
    expect(later.map((m) => ({ authorities: m.authorities.map((a) => JSON.parse(a).updatedAt), revocations: m.revocations.length, removed: m.removed_revocations, deleted: m.deleted_entries }))).toEqual([
      // The entry leaving the node is kept, though the entry changed again later.
      { authorities: [], revocations: 0, removed: [], deleted: ['e'] },
      { authorities: [T0 + 2], revocations: 0, removed: [], deleted: [] },
      { authorities: [], revocations: 0, removed: [x], deleted: [] },
    ]);
  });

  it('merges the batches of one delivery into one message per node when no entry or task changed twice, each node still getting only its share', async () => {
    const { fanout, streams, runTurns, received, encoded } = setup(['web-1', 'web-2', 'web-3']);
    const b1: StateChange[] = [{ kind: 'task', before: taskFixture({ id: 't1', node: 'web-1' }), after: taskFixture({ id: 't1', node: 'web-1', state: 'ended' }) }];
    const b2: StateChange[] = [{ kind: 'revocation', spiffeId: 'spiffe://example.org/t1', after: revocationFixture({ spiffeId: 'spiffe://example.org/t1' }) }];
    const b3: StateChange[] = [{ kind: 'entry', after: entry({ id: 'e2', node: 'web-2' }) }, { kind: 'authority', serverId: 'server-a', after: authorityFixture() }];
    fanout.changed(b1);
    fanout.changed(b2);
    fanout.changed(b3);
    await runTurns();
    // One message per stream; three encodings (web-1's, web-2's, and web-3's as every other node's).
    expect(streams.map((s) => s.written.length)).toEqual([1, 1, 1]);
    expect(encoded).toHaveLength(3);
    const all = [...b1, ...b2, ...b3].filter((c): c is ViewChange => c.kind !== 'node' && c.kind !== 'authority');
    for (const s of streams) {
      expect(received(s)).toEqual([updateMessage(changesForNode(s.node, all), { put: [authorityFixture()], removed: [] }, 7, false)]);
    }
  });

  it('tasks bound on the server\'s host concern no node: they neither make messages nor keep a delivery\'s batches apart', async () => {
    const { fanout, streams, turns, clock, received } = setup(['web-1']);
    const r = (id: string): StateChange => ({ kind: 'revocation', spiffeId: id, after: revocationFixture({ spiffeId: id }) });
    fanout.changed([r('spiffe://example.org/0')]);
    turns.shift()!();
    // Sequential task starts and ends on the server's host, as an orchestrator makes them.
    for (const id of ['a', 'b']) {
      fanout.changed([{ kind: 'task', after: taskFixture({ id }) }]);
      fanout.changed([{ kind: 'task', before: taskFixture({ id }), after: taskFixture({ id, state: 'ended' }) }, r(`spiffe://example.org/${id}`)]);
    }
    await clock.advance(50);
    await new Promise((resolve) => setImmediate(resolve));
    expect(received(streams[0]!).map((m) => [m.tasks.length, m.revocations.map((x) => JSON.parse(x).spiffeId)])).toEqual([
      [0, ['spiffe://example.org/0']],
      [0, ['spiffe://example.org/a', 'spiffe://example.org/b']],
    ]);
  });
});

const s0 = (written: Buffer[]) => JSON.parse(written[0]!.toString()) as SyncUpdateMessage;
