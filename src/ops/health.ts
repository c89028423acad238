import { connect } from 'node:net';
import type { OpsResponse, OpsRoutes } from './http.js';
import { jsonResponse } from './http.js';

/**
 * One named readiness check. It fails by throwing (or rejecting); its message is shown in the
 * /ready body, so it must name the broken condition and hold no secrets.
 */
export interface Probe {
  name: string;
  check: () => void | Promise<void>;
}

export interface ProbeResult {
  name: string;
  ok: boolean;
  error?: string;
}

/** A probe that neither answers nor fails within this long counts as failed (a hung datastore). */
export const PROBE_TIMEOUT_MS = 2000;

export async function runProbes(probes: readonly Probe[], timeoutMs = PROBE_TIMEOUT_MS): Promise<ProbeResult[]> {
  return Promise.all(
    probes.map(async ({ name, check }) => {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
      });
      try {
        await Promise.race([Promise.resolve().then(check), timeout]);
        return { name, ok: true };
      } catch (err) {
        return { name, ok: false, error: err instanceof Error ? err.message : String(err) };
      } finally {
        clearTimeout(timer);
      }
    }),
  );
}

/** GET /live (the process answers) and GET /ready (every probe passes): 200 or 503, JSON. */
export function healthRoutes(probes: readonly Probe[]): OpsRoutes {
  const routes: OpsRoutes = new Map<string, () => OpsResponse | Promise<OpsResponse>>([
    ['/live', () => jsonResponse(200, { status: 'live' })],
    [
      '/ready',
      async () => {
        const checks = await runProbes(probes);
        const ready = checks.every((c) => c.ok);
        return jsonResponse(ready ? 200 : 503, { status: ready ? 'ready' : 'not ready', checks });
      },
    ],
  ]);
  return routes;
}

/** The CA holds an active, unexpired signing CA and JWT key. */
export function caProbe(ca: { authorities(): { kind: string; slot: string; notAfter: number }[] }, now: () => number): Probe {
  return {
    name: 'ca',
    check() {
      const at = now();
      for (const [kind, what] of [['x509', 'signing CA'], ['jwt', 'JWT signing key']] as const) {
        const active = ca.authorities().find((a) => a.kind === kind && a.slot === 'active');
        if (!active) throw new Error(`no active ${what}`);
        if (at >= active.notAfter) throw new Error(`the active ${what} expired at ${new Date(active.notAfter).toISOString()}`);
      }
    },
  };
}

/**
 * The datastore answers: its own ping() where it has one (an async store), else a read that touches
 * the database but returns nothing.
 */
export function datastoreProbe(store: { ping?: () => unknown; entries: { get(id: string): unknown } }): Probe {
  return {
    name: 'datastore',
    async check() {
      if (typeof store.ping === 'function') await store.ping();
      else await store.entries.get('agentid-readiness-probe');
    },
  };
}

/** A Unix socket accepts connections (the Workload API listener is up). */
export function socketProbe(name: string, path: string): Probe {
  return {
    name,
    check: () =>
      new Promise<void>((resolve, reject) => {
        const socket = connect(path);
        socket.once('connect', () => {
          socket.destroy();
          resolve();
        });
        socket.once('error', (err: NodeJS.ErrnoException) => reject(new Error(`${path}: ${err.code ?? err.message}`)));
      }),
  };
}
