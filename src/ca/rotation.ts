/*
 * Rotation of keys through slots, pure: prepared -> active -> retired -> removed.
 *
 *   prepare   when the active item has 1/2 of its lifetime left (so peers can learn the new root
 *             or JWT key from the bundle before anything is signed with it)
 *   activate  when the active item has 1/6 of its lifetime left; the old one is retired
 *   remove    a retired item once it is expired plus `keepAfterExpiryMs` (0 for CAs, which are
 *             kept for their CRLs until they expire; max JWT TTL for JWT keys, whose tokens can
 *             outlive the key's own notAfter)
 *
 * If nothing is active (first start) or the active item has expired (the server was down), a new
 * item is created active at once, or a usable prepared one is activated. Signing CAs have no
 * propagation concern (the bundle holds only roots), so once past the activation point without a
 * prepared one they are created active directly; roots and JWT keys are always prepared first.
 */

export type Slot = 'prepared' | 'active' | 'retired';
export type RotationKind = 'root' | 'x509' | 'jwt';

export interface SlotItem {
  id: string;
  slot: Slot;
  notBefore: number;
  notAfter: number;
  /** Set by an operator after a compromise (see ca/manual.ts): never used again, removed on revoke. */
  tainted?: boolean;
}

export interface RotationState {
  /** Self-managed roots; absent with an upstream CA, which agentid does not rotate. */
  root?: readonly SlotItem[];
  x509: readonly SlotItem[];
  jwt: readonly SlotItem[];
  /** How long a retired JWT key stays published after its notAfter: the max JWT-SVID TTL. */
  jwtKeepAfterExpiryMs: number;
}

export type RotationAction =
  /** Make a new item; with `activate` it becomes active and the current active one is retired. */
  | { type: 'create'; kind: RotationKind; activate: boolean }
  /** Prepared -> active; the current active one (if any) is retired. */
  | { type: 'activate'; kind: RotationKind; id: string }
  | { type: 'remove'; kind: RotationKind; id: string }
  /** Operator actions (ca/manual.ts): mark as compromised; drop from the state and bundle at once. */
  | { type: 'taint'; kind: RotationKind; id: string }
  | { type: 'revoke'; kind: RotationKind; id: string };

const lifetime = (i: SlotItem): number => Math.max(0, i.notAfter - i.notBefore);
export const prepareAt = (i: SlotItem): number => i.notAfter - Math.floor(lifetime(i) / 2);
export const activateAt = (i: SlotItem): number => i.notAfter - Math.floor(lifetime(i) / 6);

function keepFor(kind: RotationKind, state: RotationState): number {
  return kind === 'jwt' ? state.jwtKeepAfterExpiryMs : 0;
}

function kinds(state: RotationState): [RotationKind, readonly SlotItem[]][] {
  // Roots first: a signing CA created in the same pass is then issued by the new active root.
  const out: [RotationKind, readonly SlotItem[]][] = [];
  if (state.root) out.push(['root', state.root]);
  out.push(['x509', state.x509], ['jwt', state.jwt]);
  return out;
}

function planKind(kind: RotationKind, items: readonly SlotItem[], now: number, keep: number): RotationAction[] {
  const actions: RotationAction[] = [];
  const active = items.find((i) => i.slot === 'active');
  let prepared = items.find((i) => i.slot === 'prepared');
  for (const item of items) {
    if (item.slot === 'retired' && now >= item.notAfter + keep) actions.push({ type: 'remove', kind, id: item.id });
    if (item.slot === 'prepared' && now >= item.notAfter) {
      actions.push({ type: 'remove', kind, id: item.id });
      if (item === prepared) prepared = undefined;
    }
  }
  if (!active || now >= active.notAfter) {
    if (prepared && now >= prepared.notBefore) actions.push({ type: 'activate', kind, id: prepared.id });
    else actions.push({ type: 'create', kind, activate: true });
    return actions;
  }
  if (now >= activateAt(active)) {
    if (prepared) actions.push({ type: 'activate', kind, id: prepared.id });
    else actions.push({ type: 'create', kind, activate: kind === 'x509' });
  } else if (now >= prepareAt(active) && !prepared) {
    actions.push({ type: 'create', kind, activate: false });
  }
  return actions;
}

export function planRotation(state: RotationState, now: number): RotationAction[] {
  return kinds(state).flatMap(([kind, items]) => planKind(kind, items, now, keepFor(kind, state)));
}

/** The earliest time at which planRotation will return something; -Infinity when it already does. */
export function nextRotationAt(state: RotationState): number {
  let next = Number.POSITIVE_INFINITY;
  for (const [kind, items] of kinds(state)) {
    const active = items.find((i) => i.slot === 'active');
    const prepared = items.find((i) => i.slot === 'prepared');
    if (!active) return Number.NEGATIVE_INFINITY;
    next = Math.min(next, prepared ? activateAt(active) : prepareAt(active), active.notAfter);
    for (const item of items) {
      if (item.slot === 'retired') next = Math.min(next, item.notAfter + keepFor(kind, state));
      if (item.slot === 'prepared') next = Math.min(next, item.notAfter);
    }
  }
  return next;
}

/** Applies one action to a list of items (for the edge that persists the result, and for tests). */
export function applyToItems(items: readonly SlotItem[], action: RotationAction, created?: SlotItem): SlotItem[] {
  const demote = (list: SlotItem[]): SlotItem[] =>
    list.map((i) => (i.slot === 'active' ? { ...i, slot: 'retired' as const } : i));
  switch (action.type) {
    case 'create': {
      if (!created) throw new Error('applyToItems: create needs the created item');
      const next = action.activate ? demote([...items]) : [...items];
      next.push({ ...created, slot: action.activate ? 'active' : 'prepared' });
      return next;
    }
    case 'activate':
      return demote([...items]).map((i) => (i.id === action.id ? { ...i, slot: 'active' as const } : i));
    case 'remove':
    case 'revoke':
      return items.filter((i) => i.id !== action.id);
    case 'taint':
      return items.map((i) => (i.id === action.id ? { ...i, tainted: true } : i));
  }
}
