import { join } from 'node:path';
import type { Clock } from '../common/clock.js';
import type { Logger } from '../common/logger.js';
import type { Config } from '../config/index.js';
import type { CertificateAuthority } from '../ca/authority.js';
import type { AuditLog } from '../audit/index.js';
import type { DiskReserve } from '../audit/disk-reserve.js';
import type { TaskHolders } from '../tasks/holders.js';
import type { AuthorityRecord, Datastore } from '../datastore/types.js';
import type { BatchedIssuances } from '../datastore/batched-issuances.js';
import type { ReadModel } from '../state/read-model.js';
import { SpiffeId, type TrustDomain } from '../spiffe/spiffe-id.js';
import { Federation } from '../federation/index.js';
import { stateIdentities } from '../issuer/task-candidates.js';
import { SvidCache } from '../issuer/svid-cache.js';
import { StreamHub, type StateChange } from '../issuer/hub.js';
import { IdentityMemo } from '../issuer/identity-memo.js';
import { TrustState, type PeerAuthority } from '../issuer/trust-state.js';
import { ServerSvidSource } from '../issuer/server-svid.js';
import { JwtValidator } from '../issuer/jwt-validator.js';
import { auditedIssuances } from '../issuer/issuance-audit.js';
import { workloadStateEncoders } from '../workload/encode.js';
import { taskAncestry } from '../workload/edge.js';
import { nextTurn } from '../common/turns.js';

export interface IssuerDeps {
  config: Config;
  trustDomain: TrustDomain;
  serverId: string;
  clock: Clock;
  logger: Logger;
  ca: CertificateAuthority;
  audit: AuditLog;
  reserve: Pick<DiskReserve, 'assertRoom'>;
  holders: TaskHolders;
  datastore: Pick<Datastore, 'authorities'>;
  issuances: BatchedIssuances;
  state: ReadModel;
}

export interface Issuer {
  trust: TrustState;
  cache: SvidCache;
  hub: StreamHub;
  /** The caller's identities for unary calls, remembered per connection (identity-memo.ts). */
  identities: IdentityMemo;
  serverSvid: ServerSvidSource;
  federation: Federation;
  jwtValidator: JwtValidator;
  /** Publishes this server's roots, JWT keys and CRLs for the other servers on the datastore. */
  publish(retireAt?: number | null): Promise<void>;
  /** CRLs re-signed from the deny list, pushed, and published. */
  refreshCrls(): Promise<void>;
  /** After a CA rotation: every SVID re-minted and pushed, bundles republished. */
  caRotated(): Promise<void>;
  /** After a manual CA change (taint, revoke): what the condemned keys signed is re-minted at once. */
  authorityChanged(condemned: ReadonlySet<string>): Promise<void>;
  close(): Promise<void>;
}

const b64 = (b: Buffer) => b.toString('base64');

/**
 * The mint/push half of the server: trust material, the SVID cache, the stream hub and the
 * server's own SVID, and how they react to what the read model reports (entry, task, revocation
 * and other servers' trust changes all re-enter here, never further up).
 */
export async function buildIssuer(deps: IssuerDeps): Promise<Issuer> {
  const { config, trustDomain, serverId, clock, logger, ca, audit, state, holders, reserve } = deps;

  // Other servers' published trust material, decoded once per change.
  let peerCache: PeerAuthority[] | undefined;
  const peers = (): PeerAuthority[] =>
    (peerCache ??= state
      .authorities()
      .filter((a) => a.serverId !== serverId)
      .map((a) => ({
        x509Authorities: a.x509Authorities.map((s) => Buffer.from(s, 'base64')),
        jwtKeys: a.jwtKeys,
        crls: a.crls.map((s) => Buffer.from(s, 'base64')),
      })));

  const federation = new Federation({
    relationships: config.federation,
    ownTrustDomain: trustDomain,
    clock,
    logger: logger.child({ module: 'federation' }),
    stateFile: join(config.dataDir, 'federation.json'),
    onChange: (trustDomain) => hub.changed({ kind: 'federation', trustDomain }),
  });
  const trust = new TrustState({
    ca,
    issuances: deps.issuances,
    clock,
    federation,
    revokedAt: (id) => state.revocation(id)?.revokedAt,
    peers,
  });
  const cache = new SvidCache({
    // New issuance pauses while the data volumes are short of their reserve.
    minter: {
      mintX509Svid: (req) => (reserve.assertRoom(), ca.mintX509Svid(req)),
      mintJwtSvid: (req) => (reserve.assertRoom(), ca.mintJwtSvid(req)),
    },
    recordIssuance: (r) => deps.issuances.queue([r]),
    clock,
    logger,
    events: auditedIssuances(audit),
  });
  const identitiesFor = stateIdentities({ state, holders, taskBufferMs: config.tasks.bufferMs });
  const identities = new IdentityMemo({
    resolve: identitiesFor,
    // The entries, the task list (active and finished holders) and the feed revision (anything else).
    version: () => [state.entries.version, holders.select(), state.revision],
    isRevoked: (id) => state.isRevoked(id),
    taskBufferMs: config.tasks.bufferMs,
  });
  const hub: StreamHub = new StreamHub({
    identitiesFor,
    cache,
    trust,
    encoders: workloadStateEncoders(),
    clock,
    logger,
    around: (fn) => audit.batch(fn),
    ancestry: taskAncestry(holders, logger),
  });
  await trust.rebuildCrls();
  // agentid's own SVID, for the TLS listeners it serves itself.
  const serverSvid = new ServerSvidSource({
    spiffeId: SpiffeId.fromSegments(trustDomain, 'agentid', 'server'),
    ttlMs: config.svid.x509TtlMs,
    minter: ca,
    trust,
    clock,
  });
  const jwtValidator = new JwtValidator({
    trustDomain,
    trust,
    federation,
    federatedTrustDomains: config.federation.map((r) => r.trustDomain),
    isRevoked: (id) => state.isRevoked(id),
    clock,
  });

  const publish = async (retireAt: number | null = null) => {
    const record: AuthorityRecord = {
      serverId,
      x509Authorities: ca.x509Bundle().map(b64),
      jwtKeys: ca.jwtKeys(),
      crls: trust.ownCrlsOnly().map(b64),
      updatedAt: clock.now(),
      retireAt,
    };
    await deps.datastore.authorities.put(record);
  };
  /**
   * Re-signed CRLs (after revocations, or forced: periodic re-signing) go to streams and peers.
   * `withCrls` are changes whose streams should get the new CRLs in the same message: they are
   * handed to the hub once the CRLs are signed (or could not be).
   */
  const crlsChanged = async (force: boolean, withCrls: readonly StateChange[] = [], revoked?: readonly string[]) => {
    const before = trust.versions().crl;
    try {
      await (revoked ? trust.rebuildCrlsAfterRevoking(revoked) : trust.rebuildCrls({ force }));
    } finally {
      for (const change of withCrls) hub.changed(change);
    }
    if (trust.versions().crl === before) return;
    serverSvid.trustChanged();
    hub.changed({ kind: 'trust' });
    // This database write waits until the fan-out's first slice (a revoked stream) is not only
    // written (next turn) but flushed to its socket (HTTP/2 sends on the turn after that).
    await nextTurn();
    await nextTurn();
    await publish();
  };

  const stopFollowing = state.onChange((changes) => {
    holders.follow(changes);
    const revoked: string[] = [];
    const forHub: StateChange[] = [];
    for (const change of changes) {
      if (change.kind === 'revocation') {
        revoked.push(change.spiffeId);
        forHub.push(change);
      } else if (change.kind === 'authority') {
        if (change.serverId === serverId) continue;
        peerCache = undefined;
        trust.invalidate();
        serverSvid.trustChanged();
        forHub.push({ kind: 'trust' });
      } else if (change.kind !== 'node') {
        // Nodes concern the agent listener (src/nodes), not this server's own streams.
        forHub.push(change);
      }
    }
    if (revoked.length === 0) {
      for (const change of forHub) hub.changed(change);
      return;
    }
    // A revocation: the streams that lose the identity get the CRLs listing its serials in the same
    // message, so the changes reach the hub once the CRLs are re-signed. That starts on a later
    // turn: the admin call that revoked is answered first (new streams are refused at once: the
    // read model already has the revocation, and identity resolution skips revoked IDs, so their
    // cached SVIDs, dropped once the fan-out is done (a scan of the cache), are never served).
    setImmediate(() =>
      void crlsChanged(false, forHub, revoked)
        .catch((err) => logger.error({ err }, 'could not re-sign CRLs after a revocation'))
        .then(() => hub.idle())
        .finally(() => {
          for (const spiffeId of revoked) cache.forgetSpiffeId(spiffeId);
        }),
    );
  });
  await publish();

  return {
    trust,
    cache,
    hub,
    identities,
    serverSvid,
    federation,
    jwtValidator,
    publish,
    refreshCrls: () => crlsChanged(true),
    async caRotated() {
      cache.invalidateAll();
      trust.invalidate();
      await trust.rebuildCrls({ force: true });
      serverSvid.renew(true);
      hub.refresh();
      await publish();
    },
    async authorityChanged(condemned) {
      cache.forgetIssuers(condemned);
      trust.invalidate();
      await trust.rebuildCrls({ force: true });
      serverSvid.renew(true);
      hub.refresh();
      await publish();
    },
    async close() {
      stopFollowing();
      // Leaving: the other servers keep this server's roots and keys until its last SVID expires.
      const maxTtl = Math.max(config.svid.maxX509TtlMs, config.svid.maxJwtTtlMs);
      await publish(clock.now() + maxTtl).catch((err) => logger.warn({ err }, 'could not mark this server as leaving'));
    },
  };
}

