import { failedPrecondition, invalidArgument, notFound } from '../common/errors.js';
import type { RotationAction, RotationKind, SlotItem } from './rotation.js';

/*
 * Operator-driven rotation after a key compromise, pure (SPIRE's `localauthority` drill):
 *
 *   prepare   make a new root, signing CA or JWT key in the prepared slot (a root or JWT key is
 *             published in the bundle from now on, so peers learn it before anything uses it)
 *   activate  prepared -> active; the active one is retired. Activating a root also creates a
 *             new active signing CA under it, so new SVIDs chain to the new root at once.
 *   taint     mark a retired item as compromised: everything it signed is re-minted at once
 *             (the edge does that); a tainted item is never activated or used again
 *   revoke    drop a tainted item: a root leaves the X.509 bundle (with the signing CAs it
 *             issued), a JWT key leaves the JWT bundle, a signing CA is listed on its root's CRL
 *
 * The active item can be neither tainted nor revoked: activate a replacement first. Whether any
 * SVID still in use chains to an item is the edge's to check before revoke (it holds the SVIDs).
 */

export type ManualOperation = 'prepare' | 'activate' | 'taint' | 'revoke';

/** `ca` addresses roots and signing CAs by ID, `jwt` JWT keys; prepare names the exact kind. */
export type AuthorityFamily = 'ca' | 'jwt';

export interface ManualItem extends SlotItem {
  /** x509: the root (or upstream CA) that issued it. */
  issuerId?: string;
}

export interface ManualState {
  /** Absent with an upstream CA (agentid cannot rotate another PKI's CA). */
  root?: readonly ManualItem[];
  x509: readonly ManualItem[];
  jwt: readonly ManualItem[];
}

export type ManualRequest =
  | { op: 'prepare'; kind: RotationKind }
  | { op: Exclude<ManualOperation, 'prepare'>; family: AuthorityFamily; id: string };

const LABEL: Record<RotationKind, string> = { root: 'root CA', x509: 'signing CA', jwt: 'JWT key' };

export function labelOf(kind: RotationKind): string {
  return LABEL[kind];
}

const KINDS_OF: Record<AuthorityFamily, RotationKind[]> = { ca: ['root', 'x509'], jwt: ['jwt'] };

function locate(state: ManualState, kinds: RotationKind[], id: string): { kind: RotationKind; item: ManualItem } | undefined {
  for (const kind of kinds) {
    const item = (kind === 'root' ? state.root : state[kind])?.find((i) => i.id === id);
    if (item) return { kind, item };
  }
  return undefined;
}

function find(state: ManualState, family: AuthorityFamily, id: string): { kind: RotationKind; item: ManualItem } {
  const hit = locate(state, KINDS_OF[family], id);
  if (hit) return hit;
  const other = locate(state, KINDS_OF[family === 'jwt' ? 'ca' : 'jwt'], id);
  const hint = other ? ` (it is a ${LABEL[other.kind]}: use ${other.kind === 'jwt' ? 'agentid jwt-key' : 'agentid ca'})` : '';
  throw notFound(`no ${family === 'jwt' ? 'JWT key' : 'root or signing CA'} with ID ${id}${hint}`);
}

/** The actions that carry out `req`, or an error naming the rule it breaks (the state is left alone). */
export function planManual(state: ManualState, req: ManualRequest, now: number): RotationAction[] {
  if (req.op === 'prepare') {
    const items = req.kind === 'root' ? state.root : state[req.kind];
    if (!items) throw failedPrecondition('root CA: agentid runs under an upstream CA, which it does not rotate; prepare a signing CA instead');
    const prepared = items.find((i) => i.slot === 'prepared' && now < i.notAfter);
    if (prepared) throw failedPrecondition(`${LABEL[req.kind]} ${prepared.id} is already prepared: activate it, or wait until it expires`);
    return [{ type: 'create', kind: req.kind, activate: false }];
  }
  if (!/^[A-Za-z0-9_-]{8,64}$/.test(req.id)) throw invalidArgument(`authority ID "${req.id.slice(0, 70)}" is not an ID agentid issues (8-64 letters, digits, "-" or "_")`);
  const { kind, item } = find(state, req.family, req.id);
  const what = `${LABEL[kind]} ${item.id}`;
  switch (req.op) {
    case 'activate': {
      if (item.slot !== 'prepared') throw failedPrecondition(`${what} is ${item.slot}; only a prepared one can be activated`);
      if (now < item.notBefore || now >= item.notAfter) throw failedPrecondition(`${what} is not within its validity`);
      if (kind === 'x509' && state.root?.find((r) => r.id === item.issuerId)?.tainted) {
        throw failedPrecondition(`${what} was issued by tainted root CA ${item.issuerId}; prepare a new signing CA instead`);
      }
      const actions: RotationAction[] = [{ type: 'activate', kind, id: item.id }];
      // New SVIDs must chain to the new root from now on, not to the old root's signing CA.
      if (kind === 'root') actions.push({ type: 'create', kind: 'x509', activate: true });
      return actions;
    }
    case 'taint': {
      if (item.tainted) throw failedPrecondition(`${what} is already tainted`);
      if (item.slot === 'active') {
        const cmd = kind === 'jwt' ? 'agentid jwt-key prepare' : kind === 'root' ? 'agentid ca prepare --root' : 'agentid ca prepare';
        throw failedPrecondition(`${what} is active: prepare and activate a replacement first (${cmd}, then activate), then taint this one`);
      }
      if (item.slot === 'prepared') throw failedPrecondition(`${what} is only prepared and has signed nothing; let it expire or activate it`);
      if (kind === 'root') {
        const active = state.x509.find((c) => c.slot === 'active');
        if (active?.issuerId === item.id) throw failedPrecondition(`${what} still issues the active signing CA ${active.id}: activate a new root first`);
      }
      return [{ type: 'taint', kind, id: item.id }];
    }
    case 'revoke': {
      if (!item.tainted) throw failedPrecondition(`${what} is not tainted: taint it first, so that everything it signed is re-issued`);
      if (kind === 'root') {
        const stillUsed = state.x509.find((c) => c.issuerId === item.id && c.slot !== 'retired');
        if (stillUsed) throw failedPrecondition(`${what} issued signing CA ${stillUsed.id}, which is ${stillUsed.slot}`);
        // Its signing CAs chain to nothing once the root leaves the bundle: they go with it.
        const issued = state.x509.filter((c) => c.issuerId === item.id).map((c): RotationAction => ({ type: 'remove', kind: 'x509', id: c.id }));
        return [...issued, { type: 'revoke', kind, id: item.id }];
      }
      return [{ type: 'revoke', kind, id: item.id }];
    }
  }
}

/** IDs whose signatures a taint or revoke of `id` condemns: the item, and for a root its signing CAs. */
export function condemnedIds(state: ManualState, kind: RotationKind, id: string): Set<string> {
  const ids = new Set([id]);
  if (kind === 'root') for (const c of state.x509) if (c.issuerId === id) ids.add(c.id);
  return ids;
}
