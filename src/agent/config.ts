import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { parseDuration } from '../common/duration.js';
import { invalidArgument, ProblemList } from '../common/errors.js';
import { Secret } from '../common/secret.js';
import { loadConfig } from '../config/index.js';
import type { HostPort, LogLevel, WorkloadLimits } from '../config/types.js';

/** `agentid agent` settings: flags over the YAML file (--config), over defaults. */
export interface AgentConfig {
  dataDir: string;
  /** The server's agent listener (agentid server --agent-listen). */
  server: HostPort;
  /** One-time join token; only needed while the data directory holds no valid node SVID. */
  joinToken: Secret<string> | null;
  /** PEM roots of the trust domain, to verify the server at first contact. */
  trustBundleFile: string | null;
  /** x509pop: a host certificate (PEM chain) and key signed by a CA the server trusts. */
  x509pop: { certFile: string; keyFile: string } | null;
  workloadSocket: string;
  adminSocket: string;
  /** Local uids and the agent namespaces whose tasks they may start through the agent's admin socket. */
  orchestrators: { uid: number; agents: string[] }[];
  /** Local uids holding the admin role on the agent's admin socket (any namespace). */
  adminUids: number[];
  healthListen: HostPort | null;
  /** Prometheus /metrics (the Workload API figures of this host, and the link to the server); may equal healthListen. */
  metricsListen: HostPort | null;
  logLevel: LogLevel;
  /** Same meaning as the server's tasks.buffer: the last task SVIDs may outlive the task by this much. */
  taskBufferMs: number;
  limits: WorkloadLimits;
  sha256MaxBytes: number;
}

export interface AgentFlags {
  config?: string;
  dataDir?: string;
  server?: string;
  joinToken?: string;
  trustBundle?: string;
  x509popCert?: string;
  x509popKey?: string;
  socket?: string;
  adminSocket?: string;
  healthListen?: string;
  metricsListen?: string;
  logLevel?: string;
}

const FILE_KEYS = new Set(['data_dir', 'server', 'join_token', 'trust_bundle', 'x509pop', 'socket', 'admin_socket', 'orchestrators', 'admin_uids', 'health_listen', 'metrics_listen', 'log_level', 'task_buffer']);
const LOG_LEVELS = new Set(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']);

function hostPort(text: string, what: string, problems: ProblemList): HostPort | undefined {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(text);
  const port = Number(m?.[3]);
  if (!m || port > 65535) {
    problems.add(`${what}: "${text.slice(0, 100)}" must be HOST:PORT (IPv6 as [::1]:PORT)`);
    return undefined;
  }
  return { host: m[1] ?? m[2]!, port };
}

/** Reads flags and the optional YAML file; throws invalid_argument naming every problem. */
export function loadAgentConfig(flags: AgentFlags, opts: { cwd?: string; uid?: number } = {}): AgentConfig {
  const cwd = opts.cwd ?? process.cwd();
  const problems = new ProblemList();
  let file: Record<string, unknown> = {};
  let base = cwd;
  if (flags.config) {
    const path = resolve(cwd, flags.config);
    base = dirname(path);
    let parsed: unknown;
    try {
      parsed = parseYaml(readFileSync(path, 'utf8'));
    } catch (err) {
      throw invalidArgument(`agent config ${path}: cannot be read as YAML (${(err as Error).message.split('\n')[0]})`);
    }
    if (parsed !== null && (typeof parsed !== 'object' || Array.isArray(parsed))) throw invalidArgument(`agent config ${path}: must be a mapping`);
    file = (parsed ?? {}) as Record<string, unknown>;
    for (const key of Object.keys(file)) if (!FILE_KEYS.has(key)) problems.add(`agent config: unknown key "${key.slice(0, 64)}" (known: ${[...FILE_KEYS].join(', ')})`);
  }
  const fromFile = (key: string): string | undefined => {
    const v = file[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'string' && typeof v !== 'number') {
      problems.add(`agent config: ${key} must be a string`);
      return undefined;
    }
    return String(v);
  };
  const path = (flag: string | undefined, key: string): string | undefined => {
    if (flag !== undefined) return resolve(cwd, flag);
    const v = fromFile(key);
    return v === undefined ? undefined : isAbsolute(v) ? v : resolve(base, v);
  };

  const dataDir = path(flags.dataDir, 'data_dir');
  if (!dataDir) problems.add('--data-dir (or data_dir in the config file) is required');
  const serverText = flags.server ?? fromFile('server');
  const server = serverText === undefined ? (problems.add('--server HOST:PORT (or server in the config file) is required'), undefined) : hostPort(serverText, '--server', problems);
  const healthText = flags.healthListen ?? fromFile('health_listen');
  const healthListen = healthText === undefined ? null : (hostPort(healthText, '--health-listen', problems) ?? null);
  const metricsText = flags.metricsListen ?? fromFile('metrics_listen');
  const metricsListen = metricsText === undefined ? null : (hostPort(metricsText, '--metrics-listen', problems) ?? null);
  const joinTokenText = flags.joinToken ?? fromFile('join_token');
  const x509 = file.x509pop as { cert?: unknown; key?: unknown } | undefined;
  const certFile = path(flags.x509popCert, '') ?? (typeof x509?.cert === 'string' ? resolve(base, x509.cert) : undefined);
  const keyFile = path(flags.x509popKey, '') ?? (typeof x509?.key === 'string' ? resolve(base, x509.key) : undefined);
  if ((certFile === undefined) !== (keyFile === undefined)) problems.add('x509pop needs both the host certificate (--x509pop-cert) and its key (--x509pop-key)');
  if (joinTokenText !== undefined && certFile !== undefined) problems.add('give either a join token or an x509pop certificate, not both');
  const logLevel = (flags.logLevel ?? fromFile('log_level') ?? 'info') as LogLevel;
  if (!LOG_LEVELS.has(logLevel)) problems.add(`log level "${String(logLevel).slice(0, 20)}" is not one of ${[...LOG_LEVELS].join(', ')}`);

  const orchestrators: { uid: number; agents: string[] }[] = [];
  const rawOrchestrators = file.orchestrators ?? [];
  if (!Array.isArray(rawOrchestrators)) problems.add('agent config: orchestrators must be a list of { uid, agents }');
  else {
    rawOrchestrators.forEach((o: unknown, i) => {
      const item = o as { uid?: unknown; agents?: unknown };
      if (!Number.isSafeInteger(item?.uid) || (item.uid as number) < 0 || !Array.isArray(item.agents) || item.agents.length === 0 || !item.agents.every((a) => typeof a === 'string' && a.length > 0)) {
        problems.add(`agent config: orchestrators[${i}] must be { uid: <number>, agents: [<agent namespace>, ...] }`);
        return;
      }
      orchestrators.push({ uid: item.uid as number, agents: item.agents as string[] });
    });
  }
  const rawAdmins = file.admin_uids ?? [opts.uid ?? process.getuid?.() ?? 0];
  const adminUids = Array.isArray(rawAdmins) && rawAdmins.every((u) => Number.isSafeInteger(u) && u >= 0) ? (rawAdmins as number[]) : (problems.add('agent config: admin_uids must be a list of uids'), []);
  let taskBufferMs = 0;
  try {
    taskBufferMs = parseDuration(fromFile('task_buffer') ?? '2m', 'task_buffer');
  } catch (err) {
    problems.add((err as Error).message);
  }
  problems.throwIfAny('agent configuration');

  // Workload API limits and attestation settings: the server's defaults (same edge, same limits).
  const defaults = loadConfig({ env: {}, flags: { trustDomain: 'agent.invalid', dataDir: dataDir! }, cwd });
  return {
    dataDir: dataDir!,
    server: server!,
    joinToken: joinTokenText === undefined ? null : new Secret(joinTokenText),
    trustBundleFile: path(flags.trustBundle, 'trust_bundle') ?? null,
    x509pop: certFile && keyFile ? { certFile, keyFile } : null,
    workloadSocket: path(flags.socket, 'socket') ?? join(dataDir!, 'workload.sock'),
    adminSocket: path(flags.adminSocket, 'admin_socket') ?? join(dataDir!, 'admin.sock'),
    orchestrators,
    adminUids,
    healthListen,
    metricsListen,
    logLevel,
    taskBufferMs,
    limits: defaults.limits,
    sha256MaxBytes: defaults.attest.sha256MaxBytes,
  };
}
