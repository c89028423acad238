import type { Config, WorkloadLimits } from '../config/types.js';
import { RESTART_ONLY_LIMITS } from '../workload/limits.js';
import type { Logger } from '../common/logger.js';

export interface ReloadDeps {
  logger: Logger;
  setLogLevel(level: string): void;
  /** New Workload API caps and rates for the next connection and call. */
  updateLimits(limits: WorkloadLimits): void;
  /** Re-fetches every federated bundle now (the relationships themselves need a restart). */
  refreshFederation(): Promise<void>;
}

export interface ReloadResult {
  /** What changed in the running server, one line each. */
  applied: string[];
  /** Settings that differ from the running ones and take effect only after a restart. */
  needsRestart: string[];
}

/** The config file's name for a Config key: x509TtlMs -> x509_ttl, bundleEndpoint -> bundle_endpoint. */
const fileKey = (key: string) => key.replace(/Ms$/, '').replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/** Dotted paths (two levels deep, named as in the config file) where the two configs differ. */
export function changedPaths(a: Config, b: Config): string[] {
  const out: string[] = [];
  const same = (x: unknown, y: unknown) => JSON.stringify(x) === JSON.stringify(y);
  for (const key of Object.keys(a) as (keyof Config)[]) {
    const x = a[key];
    const y = b[key];
    if (same(x, y)) continue;
    if (x && y && typeof x === 'object' && typeof y === 'object' && !Array.isArray(x)) {
      for (const sub of Object.keys(x)) if (!same((x as any)[sub], (y as any)[sub])) out.push(`${fileKey(key)}.${fileKey(sub)}`);
    } else out.push(fileKey(key));
  }
  return out;
}

/**
 * SIGHUP: re-read the configuration and apply what a running server can take (log level; a fresh
 * fetch of every federated bundle), and name what needs a restart. The log says which is which.
 */
export class ConfigReloader {
  constructor(
    private running: Config,
    private readonly deps: ReloadDeps,
  ) {}

  async reload(next: Config): Promise<ReloadResult> {
    const applied: string[] = [];
    const changed = changedPaths(this.running, next);
    if (changed.includes('log.level')) {
      this.deps.setLogLevel(next.log.level);
      applied.push(`log.level: ${this.running.log.level} -> ${next.log.level}`);
      this.running = { ...this.running, log: { ...this.running.log, level: next.log.level } };
    }
    const limitKeys = (Object.keys(next.limits) as (keyof WorkloadLimits)[]).filter((k) => next.limits[k] !== this.running.limits[k]);
    const live = limitKeys.filter((k) => !RESTART_ONLY_LIMITS.includes(k));
    if (live.length > 0) {
      // Restart-only values stay as started, so the next diff still reports them.
      const inForce = { ...next.limits };
      for (const k of RESTART_ONLY_LIMITS) (inForce as Record<string, unknown>)[k] = this.running.limits[k];
      this.deps.updateLimits(inForce);
      applied.push(`limits: ${live.map((k) => `${fileKey(k)} ${this.running.limits[k] ?? 'none'} -> ${next.limits[k] ?? 'none'}`).join(', ')}`);
      this.running = { ...this.running, limits: inForce };
    }
    if (this.running.federation.length > 0) {
      await this.deps.refreshFederation();
      applied.push(`federation: re-fetched the bundles of ${this.running.federation.map((f) => f.trustDomain).join(', ')}`);
    }
    const needsRestart = changedPaths(this.running, next);
    this.deps.logger.info({ applied, needsRestart }, `reloaded on SIGHUP: ${applied.length ? applied.join('; ') : 'nothing to apply'}`);
    if (needsRestart.length > 0) this.deps.logger.warn({ needsRestart }, `changed settings that take effect after a restart: ${needsRestart.join(', ')}`);
    return { applied, needsRestart };
  }
}
