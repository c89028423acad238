import type { HostPort } from '../config/types.js';
import type { Logger } from '../common/logger.js';
import { healthRoutes, type Probe } from './health.js';
import { startOpsHttp, type OpsEndpoint, type OpsRoutes } from './http.js';
import type { ServerMetrics } from './metrics.js';

export { ServerMetrics } from './metrics.js';
export { caProbe, datastoreProbe, socketProbe, type Probe } from './health.js';
export { addReflection } from './reflection.js';

export interface OpsDeps {
  health: { listen: HostPort | null; probes: readonly Probe[] };
  metrics: { listen: HostPort | null; metrics: ServerMetrics };
  logger: Logger;
}

export interface RunningOps {
  /** http://host:port serving /live and /ready, when enabled. */
  healthUrl: string | undefined;
  /** http://host:port serving /metrics, when enabled. */
  metricsUrl: string | undefined;
  close(): Promise<void>;
}

const key = (hp: HostPort) => `${hp.host}:${hp.port}`;

/** Starts the health and metrics endpoints; one HTTP server when both use the same address. */
export async function startOps(deps: OpsDeps): Promise<RunningOps> {
  const wanted: { listen: HostPort; routes: OpsRoutes; what: 'health' | 'metrics' }[] = [];
  if (deps.health.listen) wanted.push({ listen: deps.health.listen, routes: healthRoutes(deps.health.probes), what: 'health' });
  if (deps.metrics.listen) {
    deps.metrics.metrics.collectProcessMetrics();
    wanted.push({ listen: deps.metrics.listen, routes: deps.metrics.metrics.routes(), what: 'metrics' });
  }
  const byAddress = new Map<string, { listen: HostPort; routes: OpsRoutes; what: string[] }>();
  for (const w of wanted) {
    const shared = byAddress.get(key(w.listen));
    if (shared) {
      for (const [path, handler] of w.routes) shared.routes.set(path, handler);
      shared.what.push(w.what);
    } else {
      byAddress.set(key(w.listen), { listen: w.listen, routes: new Map(w.routes), what: [w.what] });
    }
  }
  const started: { endpoint: OpsEndpoint; what: string[] }[] = [];
  try {
    for (const b of byAddress.values()) {
      const endpoint = await startOpsHttp(b.listen, b.routes, deps.logger);
      started.push({ endpoint, what: b.what });
      deps.logger.info({ url: endpoint.url, serves: b.what }, 'operations endpoint listening');
    }
  } catch (err) {
    await Promise.all(started.map((s) => s.endpoint.close()));
    throw err;
  }
  const urlOf = (what: string) => started.find((s) => s.what.includes(what))?.endpoint.url;
  return {
    healthUrl: urlOf('health'),
    metricsUrl: urlOf('metrics'),
    close: async () => {
      await Promise.all(started.map((s) => s.endpoint.close()));
    },
  };
}
