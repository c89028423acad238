/**
 * Property tests of the parsers that read untrusted text (SPIFFE IDs, selectors, durations, the
 * config file): random and mutated input either yields a valid value or an AgentIdError with code
 * invalid_argument, never another exception. Bounded by numRuns so the suite stays fast.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { AgentIdError } from './errors.js';
import { parseDuration } from './duration.js';
import { parseSelector } from '../spiffe/selector.js';
import { SpiffeId, TrustDomain } from '../spiffe/spiffe-id.js';
import { loadConfig } from '../config/index.js';

/** A valid example with a few random edits (insert, delete, replace), or plain random text. */
function mutated(examples: readonly string[], alphabet = fc.string({ minLength: 1, maxLength: 3 })): fc.Arbitrary<string> {
  const edit = fc.tuple(fc.constantFrom('insert', 'delete', 'replace'), fc.nat(), alphabet);
  const edited = fc.tuple(fc.constantFrom(...examples), fc.array(edit, { maxLength: 4 })).map(([base, edits]) => {
    let s = base;
    for (const [op, at, text] of edits) {
      const i = s.length === 0 ? 0 : at % (s.length + 1);
      if (op === 'insert') s = s.slice(0, i) + text + s.slice(i);
      else if (op === 'delete') s = s.slice(0, i) + s.slice(i + 1);
      else s = s.slice(0, i) + text + s.slice(i + 1);
    }
    return s;
  });
  return fc.oneof(edited, fc.string({ maxLength: 80 }), fc.string({ unit: 'binary', maxLength: 80 }));
}

/** Runs `parse`; any throw must be an AgentIdError invalid_argument. Returns the value or undefined. */
function parsedOrRefused<T>(parse: () => T): T | undefined {
  try {
    return parse();
  } catch (err) {
    expect(err).toBeInstanceOf(AgentIdError);
    expect((err as AgentIdError).code).toBe('invalid_argument');
    return undefined;
  }
}

describe('parsers under random and mutated input', () => {
  it('SPIFFE IDs and trust domains', () => {
    const examples = ['spiffe://example.org/a/b', 'spiffe://td.example/agent/coder/task/t-1', 'spiffe://x.y', 'example.org'];
    fc.assert(
      fc.property(mutated(examples, fc.constantFrom('/', '.', '%', ':', '@', '?', '#', 'A', ' ', '\u0000', '..', '//', 'é')), (text) => {
        const id = parsedOrRefused(() => SpiffeId.parse(text));
        // What parses prints back to itself: the canonical form is a fixed point.
        if (id) expect(SpiffeId.parse(id.toString()).toString()).toBe(id.toString());
        const td = parsedOrRefused(() => TrustDomain.parse(text));
        if (td) expect(TrustDomain.parse(td.name).name).toBe(td.name);
      }),
      { numRuns: 2000 },
    );
  });

  it('selectors', () => {
    const examples = ['unix:uid:1000', 'unix:path:/usr/bin/python3', 'unix:sha256:' + 'ab'.repeat(32), 'unix:cgroup:/agents/a', 'unix:user:alice'];
    fc.assert(
      fc.property(mutated(examples, fc.constantFrom(':', '/', 'x', '0', '\n', '\u0000', ' ', 'unix:')), (text) => {
        const s = parsedOrRefused(() => parseSelector(text));
        if (s) expect(parseSelector(`${s.type}:${s.value}`)).toEqual(s);
      }),
      { numRuns: 2000 },
    );
  });

  it('durations', () => {
    fc.assert(
      fc.property(mutated(['15m', '1h30m', '500ms', '2s', '0s', '24h'], fc.constantFrom('m', 'h', 's', 'ms', '9', '.', '-', 'e', ' ')), (text) => {
        const ms = parsedOrRefused(() => parseDuration(text));
        if (ms !== undefined) expect(Number.isSafeInteger(ms) && ms >= 0).toBe(true);
      }),
      { numRuns: 2000 },
    );
  });

  describe('the config file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'agentid-fuzz-config-'));
    afterAll(() => rmSync(dir, { recursive: true, force: true }));
    const example = readFileSync(join(import.meta.dirname, '..', '..', 'agentid.example.yaml'), 'utf8');
    const small = [
      'trust_domain: example.org\ndata_dir: /tmp/x\n',
      'trust_domain: example.org\ntasks:\n  buffer: 2m\n  cgroup_root: /agents\n',
      'trust_domain: example.org\naudit:\n  reserve_bytes: 1024\n  refusal_interval: 1m\n',
      'trust_domain: example.org\nadmin:\n  orchestrators:\n    - uid: 1001\n      agents: [coder]\n',
    ];

    it('is read into a config or refused with invalid_argument', () => {
      let n = 0;
      fc.assert(
        fc.property(mutated([example, ...small], fc.constantFrom(':', ' ', '\n', '-', '[', '{', '"', "'", 'x', '0', '#', '\t', '&', '*', '!')), (text) => {
          const file = join(dir, `c${n++}.yaml`);
          writeFileSync(file, text);
          const config = parsedOrRefused(() => loadConfig({ file, env: {}, flags: {}, cwd: dir, uid: 0 }));
          if (config) expect(Object.isFrozen(config)).toBe(true);
        }),
        { numRuns: 300 },
      );
    });
  });
});
