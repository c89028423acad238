import { formatDuration } from '../common/duration.js';
import { DEFAULTS } from './defaults.js';
import type { Config } from './types.js';

/**
 * Settings that are valid but probably not what the operator meant. The server logs each one
 * at start; none of them stops it.
 */
export function configWarnings(config: Config): string[] {
  const out: string[] = [];
  const { ca, svid } = config;
  const caSixth = ca.ttlMs / 6;
  // A signing CA is used for a while before rotation, so an SVID minted late in its life gets
  // its notAfter cut to the CA's; a sixth keeps full-length SVIDs for most of the CA's life.
  if (svid.x509TtlMs > caSixth) {
    out.push(
      `svid.x509_ttl (${formatDuration(svid.x509TtlMs)}) is longer than ca.ttl/6 (${formatDuration(caSixth)}): ` +
        'SVIDs will often be cut short by their signing CA; raise ca.ttl or lower svid.x509_ttl',
    );
  } else if (svid.maxX509TtlMs > caSixth) {
    out.push(
      `svid.max_x509_ttl (${formatDuration(svid.maxX509TtlMs)}) is longer than ca.ttl/6 (${formatDuration(caSixth)}): ` +
        'long-lived SVIDs will often be cut short by their signing CA',
    );
  }
  if (config.trustDomain === DEFAULTS.trust_domain) {
    out.push(`trust_domain is the development default "${DEFAULTS.trust_domain}"; set your own before issuing real identities`);
  }
  const tcpAdmins = config.admin.tcp?.spiffeRoles.filter((r) => r.role === 'admin').length ?? 0;
  if (config.admin.adminUids.length === 0 && tcpAdmins === 0) {
    out.push('admin.admin_uids is empty and no admin.tcp role is admin: nobody can manage this server');
  }
  config.federation.forEach((f, i) => {
    if (f.profile === 'https_spiffe' && f.bootstrapBundleFile === null) {
      out.push(
        `federation[${i}] (${f.trustDomain}): https_spiffe without bootstrap_bundle_file; the first fetch ` +
          'fails unless the bundle is already in the datastore',
      );
    }
  });
  if (config.tasks.bufferMs > config.tasks.defaultTtlMs) {
    out.push('tasks.buffer is longer than tasks.default_ttl: SVIDs may outlive their task by more than its own lifetime');
  }
  return out;
}
