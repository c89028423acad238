import { invalidArgument } from '../common/errors.js';

/**
 * A selector is a kernel-derived fact about a process, "type:key:value" as in SPIRE
 * (unix:uid:1000, unix:path:/usr/bin/python3, unix:sha256:<hex>, unix:cgroup:/agents/a1).
 * Matching is exact string equality; an entry matches when all its selectors are present.
 */
export interface Selector {
  readonly type: string;
  readonly value: string;
}

const TYPE_PATTERN = /^[a-z][a-z0-9_-]*$/;
export const MAX_SELECTOR_LENGTH = 1024;

/** Parses "unix:uid:1000" into { type: "unix", value: "uid:1000" }. */
export function parseSelector(text: string): Selector {
  const colon = text.indexOf(':');
  if (colon <= 0) throw invalidArgument(`selector "${text}": must be type:value, e.g. unix:uid:1000`);
  const type = text.slice(0, colon);
  const value = text.slice(colon + 1);
  if (!TYPE_PATTERN.test(type)) throw invalidArgument(`selector "${text}": type "${type}" must be lowercase letters, digits, "_" or "-"`);
  if (value.length === 0) throw invalidArgument(`selector "${text}": value is empty`);
  if (text.length > MAX_SELECTOR_LENGTH) throw invalidArgument(`selector: longer than ${MAX_SELECTOR_LENGTH} characters`);
  if (/[\u0000-\u001f\u007f]/.test(text)) throw invalidArgument(`selector "${text}": contains a control character`);
  return { type, value };
}

/*
 * The selectors the attestor can produce, by "type:key", with the form their value takes. An
 * entry selector of any other kind, or with a value of the wrong form, can never match a process
 * (matching is exact string equality), so entries refuse it rather than store a rule that
 * silently never fires.
 */
const UINT32 = /^(0|[1-9][0-9]{0,9})$/;
const isId = (v: string) => UINT32.test(v) && Number(v) <= 0xfffffffe;
const SELECTOR_KINDS: Readonly<Record<string, { rule: string; ok: (v: string) => boolean }>> = {
  'unix:uid': { rule: 'a decimal user ID, e.g. unix:uid:1000', ok: isId },
  'unix:gid': { rule: 'a decimal group ID, e.g. unix:gid:1000', ok: isId },
  'unix:supplementary_gid': { rule: 'a decimal group ID', ok: isId },
  'unix:user': { rule: 'a user name', ok: (v) => v.length > 0 },
  'unix:group': { rule: 'a group name', ok: (v) => v.length > 0 },
  'unix:supplementary_group': { rule: 'a group name', ok: (v) => v.length > 0 },
  'unix:path': { rule: 'an absolute executable path, e.g. unix:path:/usr/bin/python3', ok: (v) => v.startsWith('/') },
  'unix:sha256': { rule: '64 lowercase hex digits (sha256sum of the executable)', ok: (v) => /^[0-9a-f]{64}$/.test(v) },
  'unix:cgroup': { rule: 'an absolute cgroup v2 path, e.g. unix:cgroup:/agents/a1', ok: (v) => v.startsWith('/') },
};

/** "type:key" of every selector kind an entry may use, for messages and help. */
export const KNOWN_SELECTOR_KINDS: readonly string[] = Object.keys(SELECTOR_KINDS);

/**
 * Checks that a parsed selector is one the attestor can produce, with a value of the right
 * form; throws invalid_argument naming the known kinds otherwise.
 */
export function checkSelectorKind(s: Selector): void {
  const colon = s.value.indexOf(':');
  const kind = colon > 0 ? `${s.type}:${s.value.slice(0, colon)}` : undefined;
  const spec = kind === undefined ? undefined : SELECTOR_KINDS[kind];
  const text = formatSelector(s);
  if (!spec) throw invalidArgument(`selector "${text}": unknown kind; known: ${KNOWN_SELECTOR_KINDS.map((k) => `${k}:<value>`).join(', ')}`);
  if (!spec.ok(s.value.slice(colon + 1))) throw invalidArgument(`selector "${text}": the value must be ${spec.rule}`);
}

export function formatSelector(s: Selector): string {
  return `${s.type}:${s.value}`;
}

export function selectorKey(s: Selector): string {
  return formatSelector(s);
}

/** Sorted, de-duplicated copy; the canonical form stored and compared. */
export function normalizeSelectors(selectors: readonly Selector[]): Selector[] {
  const byKey = new Map(selectors.map((s) => [selectorKey(s), s]));
  return [...byKey.keys()].sort().map((k) => byKey.get(k)!);
}
