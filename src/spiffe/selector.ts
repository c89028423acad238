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
