import type * as grpc from '@grpc/grpc-js';
import { auditActor, type Actor } from '../common/actor.js';
import { failedPrecondition, invalidArgument } from '../common/errors.js';
import type { AuditSink } from '../audit/index.js';
import type { CertificateAuthority } from '../ca/authority.js';
import type { AuthorityFamily, ManualOperation, ManualRequest } from '../ca/manual.js';
import type { RotationKind } from '../ca/rotation.js';

export interface AuthorityServiceDeps {
  ca: Pick<CertificateAuthority, 'manage' | 'authorities'>;
  audit: AuditSink;
  /** SVIDs in use (cached for open streams, the server's own) signed by these IDs. */
  countIssuedBy(ids: ReadonlySet<string>): number;
  /**
   * The CA state changed: rebuild bundles and CRLs, re-mint what the `condemned` IDs signed, and
   * push every stream at once.
   */
  onChanged(condemned: ReadonlySet<string>): void;
}

const KINDS: readonly RotationKind[] = ['root', 'x509', 'jwt'];
const FAMILIES: readonly AuthorityFamily[] = ['ca', 'jwt'];
const seconds = (ms: number) => Math.floor(ms / 1000);

/**
 * The key-compromise drill over the admin API (SPIRE's `localauthority`): prepare, activate,
 * taint, revoke. The rules are ca/manual.ts; this is the edge that re-mints, pushes and audits.
 */
export class AuthorityService {
  constructor(private readonly deps: AuthorityServiceDeps) {}

  list() {
    return this.deps.ca.authorities().map((a) => ({
      kind: a.kind,
      id: a.id,
      slot: a.slot,
      tainted: a.tainted,
      not_before: seconds(a.notBefore),
      not_after: seconds(a.notAfter),
      issuer_id: a.issuerId ?? '',
    }));
  }

  async manage(op: ManualOperation, wire: { kind?: string; family?: string; id?: string }, actor: Actor) {
    const req = requestFrom(op, wire);
    const result = await this.deps.ca.manage(
      req,
      req.op === 'revoke'
        ? (condemned) => {
            const inUse = this.deps.countIssuedBy(condemned);
            if (inUse > 0) {
              throw failedPrecondition(`${inUse} SVIDs in use still chain to ${req.id}: taint it and let the re-issue finish before revoking`);
            }
          }
        : undefined,
    );
    for (const e of result.events) {
      this.deps.audit.append({
        type: 'ca.rotated', outcome: 'ok', actor: auditActor(actor), kind: e.kind, phase: e.phase,
        key_id: e.id, previous_key_id: e.previousId, not_after: e.notAfter,
      });
    }
    this.deps.onChanged(result.condemned);
    return { changes: result.events.map((e) => e.text), authorities: this.list() };
  }
}

function requestFrom(op: ManualOperation, wire: { kind?: string; family?: string; id?: string }): ManualRequest {
  if (op === 'prepare') {
    if (!(KINDS as readonly string[]).includes(wire.kind ?? '')) throw invalidArgument(`prepare: kind must be one of ${KINDS.join(', ')}`);
    return { op, kind: wire.kind as RotationKind };
  }
  if (!(FAMILIES as readonly string[]).includes(wire.family ?? '')) throw invalidArgument(`${op}: family must be one of ${FAMILIES.join(', ')}`);
  if (!wire.id) throw invalidArgument(`${op}: an authority ID is required`);
  return { op, family: wire.family as AuthorityFamily, id: wire.id };
}

type AdminWrap = (method: string, handler: (req: any, actor: Actor) => unknown) => grpc.handleUnaryCall<unknown, unknown>;

/** The AgentIdAdmin methods of this service; `admin` authorizes (admin role only) and maps errors. */
export function authorityHandlers(service: AuthorityService, admin: AdminWrap): grpc.UntypedServiceImplementation {
  return {
    ListAuthorities: admin('ListAuthorities', () => ({ changes: [], authorities: service.list() })),
    PrepareAuthority: admin('PrepareAuthority', (req, actor) => service.manage('prepare', req, actor)),
    ActivateAuthority: admin('ActivateAuthority', (req, actor) => service.manage('activate', req, actor)),
    TaintAuthority: admin('TaintAuthority', (req, actor) => service.manage('taint', req, actor)),
    RevokeAuthority: admin('RevokeAuthority', (req, actor) => service.manage('revoke', req, actor)),
  };
}
