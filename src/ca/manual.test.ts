import { describe, expect, it } from 'vitest';
import { isAgentIdError } from '../common/errors.js';
import { condemnedIds, planManual, type ManualItem, type ManualRequest, type ManualState } from './manual.js';

const H = 3_600_000;
const NOW = 100 * H;
const item = (id: string, slot: ManualItem['slot'], extra: Partial<ManualItem> = {}): ManualItem => ({ id, slot, notBefore: 0, notAfter: 1000 * H, ...extra });

const base: ManualState = {
  root: [item('root-old1', 'retired'), item('root-new1', 'active')],
  x509: [item('ca-old-1', 'retired', { issuerId: 'root-old1' }), item('ca-active', 'active', { issuerId: 'root-new1' })],
  jwt: [item('jwt-old-1', 'retired'), item('jwt-active', 'active')],
};
const withItems = (patch: Partial<ManualState>): ManualState => ({ ...base, ...patch });

describe('planManual', () => {
  it.each<[string, ManualState, ManualRequest, unknown]>([
    ['prepare a signing CA', base, { op: 'prepare', kind: 'x509' }, [{ type: 'create', kind: 'x509', activate: false }]],
    ['activating a root also creates a signing CA under it', withItems({ root: [...base.root!, item('root-next', 'prepared')] }), { op: 'activate', family: 'ca', id: 'root-next' },
      [{ type: 'activate', kind: 'root', id: 'root-next' }, { type: 'create', kind: 'x509', activate: true }]],
    ['taint a retired signing CA', base, { op: 'taint', family: 'ca', id: 'ca-old-1' }, [{ type: 'taint', kind: 'x509', id: 'ca-old-1' }]],
    ['revoking a root takes its signing CAs with it', withItems({ root: [item('root-old1', 'retired', { tainted: true }), item('root-new1', 'active')] }),
      { op: 'revoke', family: 'ca', id: 'root-old1' }, [{ type: 'remove', kind: 'x509', id: 'ca-old-1' }, { type: 'revoke', kind: 'root', id: 'root-old1' }]],
    ['revoke a tainted JWT key', withItems({ jwt: [item('jwt-old-1', 'retired', { tainted: true }), item('jwt-active', 'active')] }), { op: 'revoke', family: 'jwt', id: 'jwt-old-1' },
      [{ type: 'revoke', kind: 'jwt', id: 'jwt-old-1' }]],
  ])('%s', (_name, state, req, actions) => {
    expect(planManual(state, req, NOW)).toEqual(actions);
  });

  it.each<[string, ManualState, ManualRequest, string, RegExp]>([
    ['a root under an upstream CA', withItems({ root: undefined }), { op: 'prepare', kind: 'root' }, 'failed_precondition', /upstream CA/],
    ['a second prepared item', withItems({ jwt: [...base.jwt, item('jwt-next-1', 'prepared')] }), { op: 'prepare', kind: 'jwt' }, 'failed_precondition', /jwt-next-1 is already prepared/],
    ['activating a retired item', base, { op: 'activate', family: 'ca', id: 'ca-old-1' }, 'failed_precondition', /is retired; only a prepared one/],
    ['activating a signing CA of a tainted root', withItems({ root: [item('root-old1', 'retired', { tainted: true }), item('root-new1', 'active')], x509: [...base.x509, item('ca-next-1', 'prepared', { issuerId: 'root-old1' })] }),
      { op: 'activate', family: 'ca', id: 'ca-next-1' }, 'failed_precondition', /tainted root CA root-old1/],
    ['tainting the active item', base, { op: 'taint', family: 'jwt', id: 'jwt-active' }, 'failed_precondition', /is active: prepare and activate a replacement first \(agentid jwt-key prepare/],
    ['tainting a prepared item', withItems({ x509: [...base.x509, item('ca-next-1', 'prepared', { issuerId: 'root-new1' })] }), { op: 'taint', family: 'ca', id: 'ca-next-1' }, 'failed_precondition', /only prepared/],
    ['tainting twice', withItems({ jwt: [item('jwt-old-1', 'retired', { tainted: true }), item('jwt-active', 'active')] }), { op: 'taint', family: 'jwt', id: 'jwt-old-1' }, 'failed_precondition', /already tainted/],
    ['tainting a root that still issues the active signing CA', withItems({ x509: [item('ca-active', 'active', { issuerId: 'root-old1' })] }), { op: 'taint', family: 'ca', id: 'root-old1' }, 'failed_precondition', /still issues the active signing CA/],
    ['revoking an untainted item', base, { op: 'revoke', family: 'ca', id: 'ca-old-1' }, 'failed_precondition', /not tainted: taint it first/],
    ['revoking a root with a prepared signing CA under it', withItems({ root: [item('root-old1', 'retired', { tainted: true }), item('root-new1', 'active')], x509: [...base.x509, item('ca-next-1', 'prepared', { issuerId: 'root-old1' })] }),
      { op: 'revoke', family: 'ca', id: 'root-old1' }, 'failed_precondition', /issued signing CA ca-next-1, which is prepared/],
    ['an unknown ID', base, { op: 'taint', family: 'ca', id: 'nosuch-id' }, 'not_found', /no root or signing CA with ID nosuch-id$/],
    ['a JWT key ID given to the CA family', base, { op: 'taint', family: 'ca', id: 'jwt-old-1' }, 'not_found', /it is a JWT key: use agentid jwt-key/],
    ['an ID agentid never issues', base, { op: 'taint', family: 'ca', id: '../../etc' }, 'invalid_argument', /not an ID agentid issues/],
  ])('refuses %s', (_name, state, req, code, message) => {
    let err: unknown;
    try {
      planManual(state, req, NOW);
    } catch (e) {
      err = e;
    }
    expect(isAgentIdError(err, code as never), String(err)).toBe(true);
    expect((err as Error).message).toMatch(message);
  });

  it('condemns a root together with the signing CAs it issued', () => {
    expect(condemnedIds(base, 'root', 'root-old1')).toEqual(new Set(['root-old1', 'ca-old-1']));
    expect(condemnedIds(base, 'jwt', 'jwt-old-1')).toEqual(new Set(['jwt-old-1']));
  });
});
