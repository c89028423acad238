import { describe, expect, it } from 'vitest';
import { parseSelector } from '../spiffe/selector.js';
import type { RegistrationEntry } from '../datastore/types.js';
import { EntryIndex, matchEntries } from './match.js';

const NOW = Date.UTC(2026, 0, 1);

function entry(id: string, spiffePath: string, selectors: string[], extra: Partial<RegistrationEntry> = {}): RegistrationEntry {
  return {
    id,
    spiffeId: `spiffe://example.org${spiffePath}`,
    selectors: selectors.map(parseSelector),
    x509TtlMs: 3_600_000,
    jwtTtlMs: 300_000,
    hint: '',
    dnsNames: [],
    federatesWith: [],
    includeTasks: false,
    expiresAt: null,
    createdAt: NOW,
    updatedAt: NOW,
    revision: 1,
    node: null,
    ...extra,
  };
}

const caller = ['unix:uid:1000', 'unix:gid:1000', 'unix:path:/usr/bin/python3', 'unix:sha256:ab12'].map(parseSelector);

// [case, entries, caller selectors, now, expected ids in order]
const cases: Array<[string, RegistrationEntry[], string[], number, string[]]> = [
  ['all selectors present', [entry('e', '/a', ['unix:uid:1000', 'unix:gid:1000'])], [], NOW, ['e']],
  ['one selector missing', [entry('e', '/a', ['unix:uid:1000', 'unix:gid:0'])], [], NOW, []],
  ['no overlap', [entry('e', '/a', ['unix:uid:0'])], [], NOW, []],
  ['empty selector set matches nobody', [entry('e', '/a', [])], [], NOW, []],
  ['caller without selectors matches nothing', [entry('e', '/a', ['unix:uid:1000'])], ['!'], NOW, []],
  ['value is compared exactly (no prefix match)', [entry('e', '/a', ['unix:uid:100'])], [], NOW, []],
  ['type is part of the selector', [entry('e', '/a', ['docker:uid:1000'])], [], NOW, []],
  ['not yet expired', [entry('e', '/a', ['unix:uid:1000'], { expiresAt: NOW + 1 })], [], NOW, ['e']],
  ['expires exactly now', [entry('e', '/a', ['unix:uid:1000'], { expiresAt: NOW })], [], NOW, []],
  ['expired', [entry('e', '/a', ['unix:uid:1000'], { expiresAt: NOW - 1 })], [], NOW, []],
  [
    'ordered by createdAt then id, whatever the input order',
    [
      entry('c', '/c', ['unix:uid:1000'], { createdAt: NOW + 5 }),
      entry('b', '/b', ['unix:uid:1000'], { createdAt: NOW }),
      entry('a', '/a', ['unix:uid:1000'], { createdAt: NOW + 5 }),
    ],
    [],
    NOW,
    ['b', 'a', 'c'],
  ],
  [
    'one result per SPIFFE ID: the oldest entry wins',
    [
      entry('newer', '/same', ['unix:uid:1000'], { createdAt: NOW + 1, hint: 'newer' }),
      entry('older', '/same', ['unix:gid:1000'], { createdAt: NOW }),
      entry('other', '/other', ['unix:uid:1000'], { createdAt: NOW + 2 }),
    ],
    [],
    NOW,
    ['older', 'other'],
  ],
  [
    'an expired older entry does not hide a live newer one for the same ID',
    [
      entry('older', '/same', ['unix:uid:1000'], { createdAt: NOW, expiresAt: NOW }),
      entry('newer', '/same', ['unix:gid:1000'], { createdAt: NOW + 1 }),
    ],
    [],
    NOW,
    ['newer'],
  ],
];

function callerFor(sel: string[]) {
  if (sel.length === 1 && sel[0] === '!') return [];
  return sel.length === 0 ? caller : sel.map(parseSelector);
}

describe('matchEntries', () => {
  it.each(cases)('%s', (_name, entries, sel, now, expected) => {
    expect(matchEntries(entries, callerFor(sel), now).map((e) => e.id)).toEqual(expected);
  });
});

describe('EntryIndex', () => {
  it.each(cases)('agrees with matchEntries: %s', (_name, entries, sel, now, expected) => {
    const index = new EntryIndex();
    index.replace(entries);
    expect(index.match(callerFor(sel), now).map((e) => e.id)).toEqual(expected);
  });

  it('follows upserts and removals', () => {
    const index = new EntryIndex();
    index.replace([entry('e1', '/a', ['unix:uid:1000']), entry('e2', '/b', ['unix:uid:0'])]);
    expect(index.match(caller, NOW).map((e) => e.id)).toEqual(['e1']);
    index.upsert(entry('e2', '/b', ['unix:gid:1000'], { revision: 2 }));
    expect(index.match(caller, NOW).map((e) => e.id)).toEqual(['e1', 'e2']);
    index.upsert(entry('e1', '/a', ['unix:uid:1000', 'unix:gid:7'], { revision: 2 }));
    expect(index.match(caller, NOW).map((e) => e.id)).toEqual(['e2']);
    index.remove('e2');
    index.remove('never-there');
    expect(index.match(caller, NOW)).toEqual([]);
    expect(index.size).toBe(1);
    index.replace([]);
    expect(index.size).toBe(0);
    expect(index.get('e1')).toBeUndefined();
  });

  it('entries limited to a node match only on that node\'s agent, never on the server\'s socket', () => {
    const entries = [
      entry('everywhere', '/a', ['unix:uid:1000']),
      entry('web-1', '/b', ['unix:uid:1000'], { node: 'web-1', createdAt: NOW + 1 }),
      entry('web-2', '/c', ['unix:uid:1000'], { node: 'web-2', createdAt: NOW + 2 }),
    ];
    const server = new EntryIndex();
    server.replace(entries);
    expect(server.match(caller, NOW + 5).map((e) => e.id)).toEqual(['everywhere']);
    const agent = new EntryIndex('web-1');
    agent.replace(entries);
    expect(agent.match(caller, NOW + 5).map((e) => e.id)).toEqual(['everywhere', 'web-1']);
    // Moving the entry to the server's scope makes it match there too.
    server.upsert({ ...entries[2]!, node: null, revision: 2 });
    expect(server.match(caller, NOW + 5).map((e) => e.id)).toEqual(['everywhere', 'web-2']);
  });

  it('keeps a frozen copy: changing the caller\'s object or a result cannot change the snapshot', () => {
    const index = new EntryIndex();
    const e = entry('e', '/a', ['unix:uid:1000']);
    index.upsert(e);
    e.selectors.push(parseSelector('unix:uid:0'));
    e.spiffeId = 'spiffe://example.org/changed';
    const [found] = index.match(caller, NOW);
    expect(found?.spiffeId).toBe('spiffe://example.org/a');
    expect(Object.isFrozen(found)).toBe(true);
    expect(() => found!.selectors.push(parseSelector('unix:gid:0'))).toThrow(TypeError);
    expect(() => ((found as { hint: string }).hint = 'x')).toThrow(TypeError);
  });

  it('reports the selector kinds in use, so attestation can skip hashing', () => {
    const index = new EntryIndex();
    expect([...index.requiredSelectorTypes()]).toEqual([]);
    index.replace([entry('e1', '/a', ['unix:uid:1000', 'unix:path:/bin/x']), entry('e2', '/b', ['unix:sha256:ab12'])]);
    expect([...index.requiredSelectorTypes()].sort()).toEqual(['path', 'sha256', 'uid']);
    index.upsert(entry('e3', '/c', ['unix:sha256:cd34']));
    index.remove('e2');
    expect(index.requiredSelectorTypes().has('sha256')).toBe(true);
    index.upsert(entry('e3', '/c', ['unix:uid:1']));
    expect(index.requiredSelectorTypes().has('sha256')).toBe(false);
    index.requiredSelectorTypes().add('sha256');
    expect(index.requiredSelectorTypes().has('sha256')).toBe(false);
    expect(index.usesSelectorKind('sha256')).toBe(false);
    const version = index.version;
    index.upsert(entry('e4', '/d', ['unix:uid:2']));
    expect(index.version).toBeGreaterThan(version);
    const afterUpsert = index.version;
    index.remove('no-such-entry');
    expect(index.version).toBe(afterUpsert);
    index.remove('e4');
    expect(index.version).toBeGreaterThan(afterUpsert);
    expect(index.usesSelectorKind('uid')).toBe(true);
  });

  it('matches exactly like matchEntries over 10k entries sharing common selectors, through churn', () => {
    // Deterministic pseudo-random workload (LCG) so a failure reproduces.
    let seed = 42;
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const pick = () => {
      const s = ['unix:uid:1000'];
      if (rand(2)) s.push(`unix:gid:${rand(5)}`);
      if (rand(3)) s.push(`unix:path:/bin/tool${rand(200)}`);
      if (rand(10) === 0) s.push(`unix:sha256:${rand(50)}`);
      return s;
    };
    const all = new Map<string, RegistrationEntry>();
    for (let i = 0; i < 10_000; i++) {
      const id = `e${String(i).padStart(5, '0')}`;
      all.set(id, entry(id, `/w/${rand(3000)}`, pick(), { createdAt: NOW + rand(1000), expiresAt: rand(20) === 0 ? NOW + rand(10) : null }));
    }
    const index = new EntryIndex();
    index.replace([...all.values()]);
    const check = () => {
      for (let q = 0; q < 20; q++) {
        const sel = ['unix:uid:1000', `unix:gid:${rand(5)}`, `unix:path:/bin/tool${rand(200)}`, `unix:sha256:${rand(50)}`].map(parseSelector);
        const now = NOW + rand(12);
        expect(index.match(sel, now).map((e) => e.id)).toEqual(matchEntries([...all.values()], sel, now).map((e) => e.id));
      }
    };
    check();
    for (let i = 0; i < 2000; i++) {
      const id = `e${String(rand(12_000)).padStart(5, '0')}`;
      if (rand(3) === 0) {
        all.delete(id);
        index.remove(id);
      } else {
        const e = entry(id, `/w/${rand(3000)}`, pick(), { createdAt: NOW + rand(1000) });
        all.set(id, e);
        index.upsert(e);
      }
    }
    expect(index.size).toBe(all.size);
    check();
  });
});

describe('EntryIndex.expiryTimes', () => {
  it('lists the expiry of every entry that has one, following upserts, removals and replacements', () => {
    const index = new EntryIndex();
    index.replace([entry('a', '/a', ['unix:uid:1'], { expiresAt: 1000 }), entry('b', '/b', ['unix:uid:2'])]);
    expect(index.expiryTimes()).toEqual([1000]);
    index.upsert(entry('b', '/b', ['unix:uid:2'], { expiresAt: 2000 }));
    expect(index.expiryTimes().sort()).toEqual([1000, 2000]);
    index.upsert(entry('a', '/a', ['unix:uid:1'], { expiresAt: null }));
    expect(index.expiryTimes()).toEqual([2000]);
    index.remove('b');
    expect(index.expiryTimes()).toEqual([]);
    index.upsert(entry('c', '/c', ['unix:uid:3'], { expiresAt: 3000 }));
    index.replace([entry('d', '/d', ['unix:uid:4'], { expiresAt: 4000 })]);
    expect(index.expiryTimes()).toEqual([4000]);
  });
});
