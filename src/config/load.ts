import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import { parseDocument } from 'yaml';
import { parseDuration } from '../common/duration.js';
import { internal, invalidArgument, ProblemList } from '../common/errors.js';
import { Secret } from '../common/secret.js';
import { parsePostgresUrl } from '../datastore/postgres-url.js';
import { SpiffeId, TrustDomain } from '../spiffe/spiffe-id.js';
import { deepFreeze } from '../common/freeze.js';
import { DEFAULTS } from './defaults.js';
import type {
  AdminRole,
  BundleProfile,
  CaKeyType,
  Config,
  DatastoreConfig,
  FlagValues,
  HostPort,
  JwtKeyType,
  LogFormat,
  LogLevel,
} from './types.js';

export interface LoadConfigOptions {
  /** YAML file; relative paths inside it resolve against `cwd`. */
  file?: string;
  env: Record<string, string | undefined>;
  flags: Partial<FlagValues>;
  /** Base for relative paths. Default: process.cwd(). */
  cwd?: string;
  /** The server's uid, the default admin. Default: process.getuid(). */
  uid?: number;
  /**
   * The trust domain an existing data directory already belongs to, used when neither the file,
   * the environment nor a flag names one, so commands on an existing data directory need no
   * --trust-domain again.
   */
  storedTrustDomain?: (dataDir: string) => string | undefined;
}

type Raw = Record<string, unknown>;

/** Where each file key may appear; `[shape]` is a list of such items. Used to refuse unknown keys. */
type Shape = true | { [key: string]: Shape } | [Shape];
const SHAPE: Shape = {
  trust_domain: true,
  data_dir: true,
  workload_socket: true,
  admin_socket: true,
  datastore: { url: true },
  log: { level: true, format: true },
  ca: { key_type: true, ttl: true, root_ttl: true, upstream: { cert_file: true, key_file: true, bundle_file: true } },
  jwt: { key_type: true, key_ttl: true, issuer: true },
  svid: { x509_ttl: true, jwt_ttl: true, max_x509_ttl: true, max_jwt_ttl: true },
  tasks: { default_ttl: true, max_ttl: true, buffer: true, liveness_interval: true, cgroup_root: true },
  admin: {
    admin_uids: true,
    orchestrators: [{ uid: true, agents: true }],
    tcp: { listen: true, spiffe_roles: [{ spiffe_id: true, role: true, agents: true }] },
  },
  bundle_endpoint: { enabled: true, listen: true, profile: true, cert_file: true, key_file: true, refresh_hint: true },
  console: { listen: true, cert_file: true, key_file: true, session_ttl: true },
  federation: [
    {
      trust_domain: true,
      bundle_endpoint_url: true,
      profile: true,
      endpoint_spiffe_id: true,
      bootstrap_bundle_file: true,
      ca_file: true,
    },
  ],
  audit: { file: true, reserve_bytes: true, refusal_interval: true },
  attest: { sha256_max_bytes: true },
  health: { listen: true },
  metrics: { listen: true },
  agents: { listen: true, node_svid_ttl: true, attest_per_minute_per_address: true, x509pop: { ca_bundle: true } },
  limits: {
    max_header_list_bytes: true, max_message_bytes: true, first_request_timeout: true, idle_timeout: true,
    keepalive_time: true, keepalive_timeout: true, max_connections_per_uid: true, max_connections: true,
    max_streams_per_uid: true, max_streams: true, requests_per_second_per_uid: true, requests_per_second: true,
    descriptor_reserve: true,
  },
};

/** [file path, env var, flag] for the values the environment and flags can set. */
const OVERRIDES: readonly [string[], string, keyof FlagValues][] = [
  [['trust_domain'], 'AGENTID_TRUST_DOMAIN', 'trustDomain'],
  [['data_dir'], 'AGENTID_DATA_DIR', 'dataDir'],
  [['workload_socket'], 'SPIFFE_ENDPOINT_SOCKET', 'socket'],
  [['admin_socket'], 'AGENTID_ADMIN_SOCKET', 'adminSocket'],
  [['datastore', 'url'], 'AGENTID_DATASTORE', 'datastore'],
  [['log', 'level'], 'AGENTID_LOG_LEVEL', 'logLevel'],
  [['log', 'format'], 'AGENTID_LOG_FORMAT', 'logFormat'],
  [['console', 'listen'], 'AGENTID_CONSOLE_LISTEN', 'consoleListen'],
  [['health', 'listen'], 'AGENTID_HEALTH_LISTEN', 'healthListen'],
  [['metrics', 'listen'], 'AGENTID_METRICS_LISTEN', 'metricsListen'],
  [['agents', 'listen'], 'AGENTID_AGENT_LISTEN', 'agentListen'],
];
const FLAG_NAMES: Record<keyof FlagValues, string> = {
  trustDomain: '--trust-domain',
  dataDir: '--data-dir',
  socket: '--socket',
  adminSocket: '--admin-socket',
  datastore: '--datastore',
  logLevel: '--log-level',
  logFormat: '--log-format',
  consoleListen: '--console-listen',
  healthListen: '--health-listen',
  metricsListen: '--metrics-listen',
  agentListen: '--agent-listen',
};

const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];
const LOG_FORMATS: readonly LogFormat[] = ['json', 'pretty', 'auto'];
const CA_KEY_TYPES: readonly CaKeyType[] = ['ec-p256', 'ec-p384'];
const JWT_KEY_TYPES: readonly JwtKeyType[] = ['ES256', 'ES384'];
const PROFILES: readonly BundleProfile[] = ['https_web', 'https_spiffe'];
const ROLES: readonly AdminRole[] = ['admin', 'orchestrator'];
/** sun_path is 108 bytes on Linux, including the terminating NUL. */
const MAX_SOCKET_PATH_BYTES = 107;
const MAX_UID = 4_294_967_294;

function isMap(value: unknown): value is Raw {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

function editDistance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) {
      next[j] = Math.min(row[j]! + 1, next[j - 1]! + 1, row[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    row = next;
  }
  return row[b.length]!;
}

function suggest(key: string, known: string[]): string {
  const plain = (s: string) => s.toLowerCase().replace(/[_-]/g, '');
  const match =
    known.find((k) => plain(k) === plain(key)) ?? known.find((k) => editDistance(k, key) <= Math.min(2, k.length / 3));
  return match ? ` (did you mean ${match}?)` : '';
}

function checkKeys(value: unknown, shape: Shape, path: string, problems: ProblemList): void {
  if (shape === true) return;
  if (Array.isArray(shape)) {
    if (Array.isArray(value)) value.forEach((item, i) => checkKeys(item, shape[0], `${path}[${i}]`, problems));
    return;
  }
  if (!isMap(value)) return; // the value's own check reports the wrong type
  for (const [key, member] of Object.entries(value)) {
    const memberPath = path === '' ? key : `${path}.${key}`;
    const memberShape = shape[key];
    if (memberShape === undefined) problems.add(`${memberPath}: unknown key${suggest(key, Object.keys(shape))}`);
    else checkKeys(member, memberShape, memberPath, problems);
  }
}

/**
 * Defaults overlaid with the file: mappings merge key by key, anything else (lists included)
 * replaces. An empty section (`audit:` with every child commented out) keeps its defaults.
 */
function overlay(defaults: unknown, file: unknown): unknown {
  if (isMap(defaults) && file === null) return defaults;
  if (!isMap(defaults) || !isMap(file)) return file;
  const out: Raw = { ...defaults };
  for (const [key, value] of Object.entries(file)) {
    if (key in defaults) out[key] = overlay(defaults[key], value);
  }
  return out;
}

function readYaml(file: string, cwd: string): unknown {
  const path = resolve(cwd, file);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw invalidArgument(`config file ${path}: ${code === 'ENOENT' ? 'does not exist' : `cannot be read (${code})`}`, err);
  }
  const doc = parseDocument(text, { uniqueKeys: true, prettyErrors: true });
  if (doc.errors.length > 0) {
    const problems = new ProblemList();
    for (const e of doc.errors) {
      const at = e.linePos?.[0];
      problems.add(`${at ? `line ${at.line} column ${at.col}` : 'yaml'}: ${e.message.split('\n')[0]}`);
    }
    problems.throwIfAny(`invalid configuration file ${path}`);
  }
  try {
    // Aliases are resolved here: an unknown one, or too many (an alias bomb), is the file's problem.
    return doc.toJS({ maxAliasCount: 100 }) ?? {};
  } catch (err) {
    throw invalidArgument(`invalid configuration file ${path}: ${(err as Error).message.split('\n')[0]}`, err);
  }
}

/** Collects problems against file paths, naming the environment variable or flag a value came from. */
class Checker {
  readonly problems = new ProblemList();
  readonly sources = new Map<string, string>();
  constructor(private readonly cwd: string) {}

  add(path: string, problem: string): void {
    const source = this.sources.get(path);
    this.problems.add(`${path}${source ? ` (${source})` : ''}: ${problem}`);
  }

  map(value: unknown, path: string): Raw | undefined {
    if (isMap(value)) return value;
    this.add(path, 'must be a mapping');
    return undefined;
  }

  list(value: unknown, path: string): unknown[] | undefined {
    if (Array.isArray(value)) return value;
    this.add(path, 'must be a list');
    return undefined;
  }

  string(value: unknown, path: string): string | undefined {
    if (typeof value === 'string' && value.length > 0) return value;
    this.add(path, value === undefined || value === null ? 'is required' : 'must be a non-empty string');
    return undefined;
  }

  /** An absolute cgroup v2 path without "." or ".." segments or a trailing "/" ("/" itself is fine). */
  cgroupPath(value: unknown, path: string): string | undefined {
    const text = this.string(value, path);
    if (text === undefined) return undefined;
    const segments = text.split('/').slice(1);
    if (!text.startsWith('/') || (text !== '/' && segments.some((s) => s === '' || s === '.' || s === '..'))) {
      this.add(path, `"${text}" must be an absolute cgroup path without ".", ".." or empty segments`);
      return undefined;
    }
    return text;
  }

  oneOf<T extends string>(value: unknown, path: string, allowed: readonly T[]): T | undefined {
    if (typeof value === 'string' && (allowed as readonly string[]).includes(value)) return value as T;
    this.add(path, `must be one of ${allowed.join(', ')}`);
    return undefined;
  }

  bool(value: unknown, path: string): boolean | undefined {
    if (typeof value === 'boolean') return value;
    this.add(path, 'must be true or false');
    return undefined;
  }

  int(value: unknown, path: string, min: number, max: number): number | undefined {
    if (Number.isSafeInteger(value) && (value as number) >= min && (value as number) <= max) return value as number;
    this.add(path, `must be an integer from ${min} to ${max}`);
    return undefined;
  }

  duration(value: unknown, path: string): number | undefined {
    if (typeof value !== 'string') {
      this.add(path, 'must be a duration string such as "15m" or "1h30m"');
      return undefined;
    }
    try {
      return parseDuration(value, 'x');
    } catch (err) {
      this.add(path, (err as Error).message.replace(/^x: /, ''));
      return undefined;
    }
  }

  /** A file path; relative paths resolve against the working directory. */
  path(value: unknown, path: string): string | undefined {
    const text = this.string(value, path);
    if (text === undefined) return undefined;
    if (text.includes('\0')) {
      this.add(path, 'must not contain a NUL byte');
      return undefined;
    }
    if (text.startsWith('~')) {
      this.add(path, '"~" is not expanded; use an absolute path');
      return undefined;
    }
    return resolve(this.cwd, text);
  }

  optionalPath(value: unknown, path: string): string | null | undefined {
    return value === undefined || value === null ? null : this.path(value, path);
  }

  /** A Unix socket: unix:///path, unix:/path or a plain path. */
  socket(value: unknown, path: string): string | undefined {
    let text = this.string(value, path);
    if (text === undefined) return undefined;
    if (text.startsWith('unix:')) {
      const rest = text.replace(/^unix:(\/\/)?/, '');
      if (!rest.startsWith('/')) {
        this.add(path, 'a unix: address must hold an absolute path (unix:///path or unix:/path)');
        return undefined;
      }
      text = rest;
    } else if (/^[a-z][a-z0-9+.-]*:\/\//i.test(text)) {
      this.add(path, 'only Unix domain sockets are supported (unix:///path or a path)');
      return undefined;
    }
    const abs = this.path(text, path);
    if (abs !== undefined && Buffer.byteLength(abs) > MAX_SOCKET_PATH_BYTES) {
      this.add(path, `${abs} is ${Buffer.byteLength(abs)} bytes; Unix socket paths are limited to ${MAX_SOCKET_PATH_BYTES}`);
      return undefined;
    }
    return abs;
  }

  hostPort(value: unknown, path: string): HostPort | undefined {
    const text = this.string(value, path);
    if (text === undefined) return undefined;
    const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(text);
    const port = Number(m?.[3]);
    if (!m || port > 65535) {
      this.add(path, 'must be host:port (IPv6 as [::1]:port) with a port from 0 to 65535');
      return undefined;
    }
    return { host: m[1] ?? m[2]!, port };
  }

  httpsUrl(value: unknown, path: string): string | undefined {
    const text = this.string(value, path);
    if (text === undefined) return undefined;
    let url: URL;
    try {
      url = new URL(text);
    } catch {
      this.add(path, 'must be an https URL');
      return undefined;
    }
    if (url.protocol !== 'https:') this.add(path, 'must use https');
    else if (url.username !== '' || url.password !== '') this.add(path, 'must not carry credentials');
    else if (url.hash !== '') this.add(path, 'must not have a fragment');
    else return text;
    return undefined;
  }

  trustDomain(value: unknown, path: string): string | undefined {
    const text = this.string(value, path);
    if (text === undefined) return undefined;
    try {
      return TrustDomain.parse(text).name;
    } catch (err) {
      this.add(path, (err as Error).message);
      return undefined;
    }
  }

  spiffeId(value: unknown, path: string): SpiffeId | undefined {
    const text = this.string(value, path);
    if (text === undefined) return undefined;
    try {
      return SpiffeId.parse(text);
    } catch (err) {
      this.add(path, (err as Error).message);
      return undefined;
    }
  }

  /** Agent names become a SPIFFE ID path segment (/agent/<name>/task/...). */
  agents(value: unknown, path: string): string[] | undefined {
    const items = this.list(value, path);
    if (items === undefined) return undefined;
    if (items.length === 0) this.add(path, 'must name at least one agent');
    const out: string[] = [];
    items.forEach((item, i) => {
      const name = this.string(item, `${path}[${i}]`);
      if (name === undefined) return;
      if (!/^[A-Za-z0-9._-]+$/.test(name) || name === '.' || name === '..') {
        this.add(`${path}[${i}]`, `"${name}" is not a valid SPIFFE ID path segment (only letters, digits, ".", "_" and "-", and not "." or "..")`);
      } else out.push(name);
    });
    return out;
  }
}

function defaultDataDir(env: Record<string, string | undefined>): string {
  const xdg = env.XDG_DATA_HOME;
  // The XDG spec says relative values are invalid and must be ignored.
  if (xdg && isAbsolute(xdg)) return join(xdg, 'agentid');
  const home = env.HOME && isAbsolute(env.HOME) ? env.HOME : homedir();
  return join(home, '.local', 'share', 'agentid');
}

/**
 * Loads the configuration: defaults, then the YAML file, then the environment, then flags.
 * Every problem is collected and reported in one invalid_argument error ("path: problem; ...").
 * The result is deeply frozen.
 */
export function loadConfig(options: LoadConfigOptions): Config {
  const cwd = options.cwd ?? process.cwd();
  const uid = options.uid ?? process.getuid?.() ?? 0;
  const c = new Checker(cwd);
  const where = options.file === undefined ? '' : ` (file ${resolve(cwd, options.file)})`;

  const file = options.file === undefined ? {} : readYaml(options.file, cwd);
  if (!isMap(file)) throw invalidArgument(`invalid configuration${where}: the top level must be a mapping`);
  checkKeys(file, SHAPE, '', c.problems);
  const raw = overlay(DEFAULTS, file) as Raw;

  const set = (path: string[], value: string | undefined, source: string) => {
    if (value === undefined || value === '') return;
    let target = raw;
    for (const key of path.slice(0, -1)) {
      target = isMap(target[key]) ? (target[key] = { ...target[key] }) : (target[key] = {});
    }
    target[path[path.length - 1]!] = value;
    c.sources.set(path.join('.'), source);
  };
  for (const [path, envName] of OVERRIDES) set(path, options.env[envName], `env ${envName}`);
  for (const [path, , flag] of OVERRIDES) set(path, options.flags[flag], `flag ${FLAG_NAMES[flag]}`);
  if (options.storedTrustDomain && !('trust_domain' in file) && !c.sources.has('trust_domain')) {
    const dataDir = raw.data_dir === null ? defaultDataDir(options.env) : typeof raw.data_dir === 'string' ? resolve(cwd, raw.data_dir) : undefined;
    const stored = dataDir === undefined ? undefined : options.storedTrustDomain(dataDir);
    if (stored !== undefined) set(['trust_domain'], stored, `data directory ${dataDir}`);
  }

  const config = build(raw, c, options.env, uid);
  c.problems.throwIfAny(`invalid configuration${where}`);
  const hole = findUndefined(config, '');
  if (hole !== undefined) throw internal(`configuration: ${hole} was left unset without a reported problem`);
  return deepFreeze(config as Config);
}

/** Every invalid value must have added a problem; this catches a validator that forgot to. */
function findUndefined(value: unknown, path: string): string | undefined {
  if (value === undefined) return path;
  if (value === null || typeof value !== 'object') return undefined;
  for (const [key, member] of Object.entries(value)) {
    const hole = findUndefined(member, Array.isArray(value) ? `${path}[${key}]` : path ? `${path}.${key}` : key);
    if (hole !== undefined) return hole;
  }
  return undefined;
}

/** Validates the merged tree. Invalid parts come back undefined; the caller throws if any problem was added. */
function build(raw: Raw, c: Checker, env: Record<string, string | undefined>, uid: number): unknown {
  const trustDomain = c.trustDomain(raw.trust_domain, 'trust_domain');
  const dataDir = raw.data_dir === null ? defaultDataDir(env) : c.path(raw.data_dir, 'data_dir');
  const derived = (value: unknown, name: string) =>
    value === null ? (dataDir === undefined ? undefined : join(dataDir, name)) : value;

  const log = c.map(raw.log, 'log');
  const datastoreRaw = c.map(raw.datastore, 'datastore');
  const caRaw = c.map(raw.ca, 'ca');
  const jwtRaw = c.map(raw.jwt, 'jwt');
  const svidRaw = c.map(raw.svid, 'svid');
  const tasksRaw = c.map(raw.tasks, 'tasks');
  const adminRaw = c.map(raw.admin, 'admin');
  const beRaw = c.map(raw.bundle_endpoint, 'bundle_endpoint');
  const consoleRaw = c.map(raw.console, 'console');
  const auditRaw = c.map(raw.audit, 'audit');
  const attestRaw = c.map(raw.attest, 'attest');
  const healthRaw = c.map(raw.health, 'health');
  const metricsRaw = c.map(raw.metrics, 'metrics');
  const limitsRaw = c.map(raw.limits, 'limits');
  const agentsRaw = c.map(raw.agents, 'agents');
  const x509popRaw = agentsRaw && c.map(agentsRaw.x509pop, 'agents.x509pop');

  const ca = caRaw && {
    keyType: c.oneOf(caRaw.key_type, 'ca.key_type', CA_KEY_TYPES),
    ttlMs: c.duration(caRaw.ttl, 'ca.ttl'),
    rootTtlMs: c.duration(caRaw.root_ttl, 'ca.root_ttl'),
    upstream: upstream(caRaw.upstream, c),
  };
  const svid = svidRaw && {
    x509TtlMs: c.duration(svidRaw.x509_ttl, 'svid.x509_ttl'),
    jwtTtlMs: c.duration(svidRaw.jwt_ttl, 'svid.jwt_ttl'),
    maxX509TtlMs: c.duration(svidRaw.max_x509_ttl, 'svid.max_x509_ttl'),
    maxJwtTtlMs: c.duration(svidRaw.max_jwt_ttl, 'svid.max_jwt_ttl'),
  };
  const tasks = tasksRaw && {
    defaultTtlMs: c.duration(tasksRaw.default_ttl, 'tasks.default_ttl'),
    maxTtlMs: c.duration(tasksRaw.max_ttl, 'tasks.max_ttl'),
    bufferMs: c.duration(tasksRaw.buffer, 'tasks.buffer'),
    livenessIntervalMs: c.duration(tasksRaw.liveness_interval, 'tasks.liveness_interval'),
    cgroupRoot: c.cgroupPath(tasksRaw.cgroup_root, 'tasks.cgroup_root'),
  };

  const notLonger = (a: number | undefined, aPath: string, b: number | undefined, bPath: string) => {
    if (a !== undefined && b !== undefined && a > b) c.add(aPath, `must not be longer than ${bPath}`);
  };
  notLonger(svid?.x509TtlMs, 'svid.x509_ttl', svid?.maxX509TtlMs, 'svid.max_x509_ttl');
  notLonger(svid?.jwtTtlMs, 'svid.jwt_ttl', svid?.maxJwtTtlMs, 'svid.max_jwt_ttl');
  notLonger(tasks?.defaultTtlMs, 'tasks.default_ttl', tasks?.maxTtlMs, 'tasks.max_ttl');
  // With an upstream CA the root is someone else's and root_ttl is unused.
  if (ca?.upstream === null) notLonger(ca.ttlMs, 'ca.ttl', ca.rootTtlMs, 'ca.root_ttl');

  return {
    trustDomain,
    dataDir,
    workloadSocket: c.socket(derived(raw.workload_socket, 'workload.sock'), 'workload_socket'),
    adminSocket: c.socket(derived(raw.admin_socket, 'admin.sock'), 'admin_socket'),
    datastore: datastoreRaw && datastore(datastoreRaw.url, c, dataDir),
    log: log && {
      level: c.oneOf(log.level, 'log.level', LOG_LEVELS),
      format: c.oneOf(log.format, 'log.format', LOG_FORMATS),
    },
    ca,
    jwt: jwtRaw && {
      keyType: c.oneOf(jwtRaw.key_type, 'jwt.key_type', JWT_KEY_TYPES),
      keyTtlMs: c.duration(jwtRaw.key_ttl, 'jwt.key_ttl'),
      issuer:
        jwtRaw.issuer === null
          ? trustDomain === undefined
            ? undefined
            : `https://${trustDomain}`
          : c.httpsUrl(jwtRaw.issuer, 'jwt.issuer'),
    },
    svid,
    tasks,
    admin: adminRaw && admin(adminRaw, c, uid),
    bundleEndpoint: beRaw && bundleEndpoint(beRaw, c),
    console: consoleRaw && webConsole(consoleRaw, c),
    federation: federation(raw.federation, c, trustDomain),
    audit: auditRaw && {
      file: c.path(derived(auditRaw.file, 'audit.log'), 'audit.file'),
      reserveBytes: c.int(auditRaw.reserve_bytes, 'audit.reserve_bytes', 0, Number.MAX_SAFE_INTEGER),
      refusalIntervalMs: c.duration(auditRaw.refusal_interval, 'audit.refusal_interval'),
    },
    attest: attestRaw && {
      sha256MaxBytes: c.int(attestRaw.sha256_max_bytes, 'attest.sha256_max_bytes', 0, Number.MAX_SAFE_INTEGER),
    },
    health: healthRaw && { listen: healthRaw.listen === null ? null : c.hostPort(healthRaw.listen, 'health.listen') },
    metrics: metricsRaw && { listen: metricsRaw.listen === null ? null : c.hostPort(metricsRaw.listen, 'metrics.listen') },
    limits: limitsRaw && limits(limitsRaw, c),
    agents: agentsRaw && {
      listen: agentsRaw.listen === null ? null : c.hostPort(agentsRaw.listen, 'agents.listen'),
      nodeSvidTtlMs: c.duration(agentsRaw.node_svid_ttl, 'agents.node_svid_ttl'),
      attestPerMinutePerAddress: c.int(agentsRaw.attest_per_minute_per_address, 'agents.attest_per_minute_per_address', 1, 1_000_000),
      x509pop: x509popRaw && { caBundle: c.optionalPath(x509popRaw.ca_bundle, 'agents.x509pop.ca_bundle') },
    },
  };
}

/**
 * sqlite, or a PostgreSQL URL. Problems never quote the value: it may hold a password.
 */
function datastore(value: unknown, c: Checker, dataDir: string | undefined): DatastoreConfig | undefined {
  if (value === 'sqlite') return dataDir === undefined ? undefined : { kind: 'sqlite', file: join(dataDir, 'agentid.db') };
  const target = typeof value === 'string' ? parsePostgresUrl(value) : undefined;
  if (typeof value !== 'string' || target === undefined) {
    c.add(
      'datastore.url',
      'must be sqlite or a PostgreSQL URL naming a database (postgresql://user@host:5432/agentid or postgresql:///agentid?host=/socket/dir)',
    );
    return undefined;
  }
  return { kind: 'postgresql', url: new Secret(value), ...target };
}

function upstream(value: unknown, c: Checker) {
  if (value === null || value === undefined) return null;
  const u = c.map(value, 'ca.upstream');
  return (
    u && {
      certFile: c.path(u.cert_file, 'ca.upstream.cert_file'),
      keyFile: c.path(u.key_file, 'ca.upstream.key_file'),
      bundleFile: c.optionalPath(u.bundle_file, 'ca.upstream.bundle_file'),
    }
  );
}

function admin(raw: Raw, c: Checker, serverUid: number) {
  const uidList = (value: unknown, path: string) =>
    c.list(value, path)?.map((u, i) => c.int(u, `${path}[${i}]`, 0, MAX_UID));

  const seen = new Set<number>();
  const orchestrators = c.list(raw.orchestrators, 'admin.orchestrators')?.map((item, i) => {
    const path = `admin.orchestrators[${i}]`;
    const o = c.map(item, path);
    if (!o) return undefined;
    const uid = c.int(o.uid, `${path}.uid`, 0, MAX_UID);
    if (uid !== undefined && seen.has(uid)) c.add(`${path}.uid`, `uid ${uid} is listed twice; merge its agents into one item`);
    if (uid !== undefined) seen.add(uid);
    return { uid, agents: c.agents(o.agents, `${path}.agents`) };
  });

  let tcp = null;
  if (raw.tcp !== null && raw.tcp !== undefined) {
    const t = c.map(raw.tcp, 'admin.tcp');
    tcp = t && {
      listen: c.hostPort(t.listen ?? '127.0.0.1:8444', 'admin.tcp.listen'),
      spiffeRoles: c.list(t.spiffe_roles ?? [], 'admin.tcp.spiffe_roles')?.map((item, i) => {
        const path = `admin.tcp.spiffe_roles[${i}]`;
        const r = c.map(item, path);
        if (!r) return undefined;
        const role = c.oneOf(r.role, `${path}.role`, ROLES);
        let agents: string[] | undefined = [];
        if (role === 'orchestrator') agents = c.agents(r.agents, `${path}.agents`);
        else if (role === 'admin' && r.agents !== undefined) c.add(`${path}.agents`, 'only applies to role orchestrator');
        return { spiffeId: c.spiffeId(r.spiffe_id, `${path}.spiffe_id`)?.toString(), role, agents };
      }),
    };
  }

  return {
    adminUids: raw.admin_uids === null ? [serverUid] : uidList(raw.admin_uids, 'admin.admin_uids'),
    orchestrators,
    tcp,
  };
}

function limits(raw: Raw, c: Checker) {
  const count = (key: string, min = 1) => c.int(raw[key], `limits.${key}`, min, 10_000_000);
  const positiveDuration = (key: string) => {
    const ms = c.duration(raw[key], `limits.${key}`);
    if (ms !== undefined && ms <= 0) c.add(`limits.${key}`, 'must be longer than zero');
    return ms;
  };
  return {
    // Below 1 KiB a real client's own headers (path, content type, user agent) would not fit.
    maxHeaderListBytes: c.int(raw.max_header_list_bytes, 'limits.max_header_list_bytes', 1024, 16_777_216),
    maxMessageBytes: c.int(raw.max_message_bytes, 'limits.max_message_bytes', 1024, 16_777_216),
    firstRequestTimeoutMs: positiveDuration('first_request_timeout'),
    idleTimeoutMs: positiveDuration('idle_timeout'),
    keepaliveTimeMs: positiveDuration('keepalive_time'),
    keepaliveTimeoutMs: positiveDuration('keepalive_timeout'),
    maxConnectionsPerUid: raw.max_connections_per_uid === null ? null : count('max_connections_per_uid'),
    maxConnections: raw.max_connections === null ? null : count('max_connections'),
    maxStreamsPerUid: count('max_streams_per_uid'),
    maxStreams: count('max_streams'),
    requestsPerSecondPerUid: count('requests_per_second_per_uid'),
    requestsPerSecond: count('requests_per_second'),
    descriptorReserve: count('descriptor_reserve', 16),
  };
}

function bundleEndpoint(raw: Raw, c: Checker) {
  const enabled = c.bool(raw.enabled, 'bundle_endpoint.enabled');
  const profile = c.oneOf(raw.profile, 'bundle_endpoint.profile', PROFILES);
  const certFile = c.optionalPath(raw.cert_file, 'bundle_endpoint.cert_file');
  const keyFile = c.optionalPath(raw.key_file, 'bundle_endpoint.key_file');
  if (profile === 'https_web' && enabled) {
    if (certFile === null) c.add('bundle_endpoint.cert_file', 'is required with profile https_web');
    if (keyFile === null) c.add('bundle_endpoint.key_file', 'is required with profile https_web');
  }
  if (profile === 'https_spiffe') {
    // The server presents its own SVID; a web certificate here would silently be ignored.
    if (certFile) c.add('bundle_endpoint.cert_file', 'only applies to profile https_web');
    if (keyFile) c.add('bundle_endpoint.key_file', 'only applies to profile https_web');
  }
  return {
    enabled,
    listen: c.hostPort(raw.listen, 'bundle_endpoint.listen'),
    profile,
    certFile,
    keyFile,
    refreshHintMs: c.duration(raw.refresh_hint, 'bundle_endpoint.refresh_hint'),
  };
}

function webConsole(raw: Raw, c: Checker) {
  const certFile = c.optionalPath(raw.cert_file, 'console.cert_file');
  const keyFile = c.optionalPath(raw.key_file, 'console.key_file');
  if ((certFile === null) !== (keyFile === null)) {
    c.add(certFile === null ? 'console.cert_file' : 'console.key_file', 'console.cert_file and console.key_file go together');
  }
  return {
    listen: raw.listen === null ? null : c.hostPort(raw.listen, 'console.listen'),
    certFile,
    keyFile,
    sessionTtlMs: c.duration(raw.session_ttl, 'console.session_ttl'),
  };
}

function federation(value: unknown, c: Checker, ownTrustDomain: string | undefined) {
  const seen = new Set<string>();
  return c.list(value, 'federation')?.map((item, i) => {
    const path = `federation[${i}]`;
    const f = c.map(item, path);
    if (!f) return undefined;
    const td = c.trustDomain(f.trust_domain, `${path}.trust_domain`);
    if (td !== undefined && td === ownTrustDomain) {
      c.add(`${path}.trust_domain`, `${td} is our own trust domain; federate only with foreign ones`);
    } else if (td !== undefined && seen.has(td)) {
      c.add(`${path}.trust_domain`, `${td} is listed twice`);
    }
    if (td !== undefined) seen.add(td);
    const profile = c.oneOf(f.profile, `${path}.profile`, PROFILES);
    let endpointSpiffeId: string | null | undefined = null;
    if (profile === 'https_spiffe') {
      endpointSpiffeId = c.spiffeId(f.endpoint_spiffe_id, `${path}.endpoint_spiffe_id`)?.toString();
    } else if (profile === 'https_web' && f.endpoint_spiffe_id !== undefined) {
      c.add(`${path}.endpoint_spiffe_id`, 'only applies to profile https_spiffe');
    }
    if (profile === 'https_spiffe' && f.ca_file !== undefined) c.add(`${path}.ca_file`, 'only applies to profile https_web');
    return {
      trustDomain: td,
      bundleEndpointUrl: c.httpsUrl(f.bundle_endpoint_url, `${path}.bundle_endpoint_url`),
      profile,
      endpointSpiffeId,
      bootstrapBundleFile: c.optionalPath(f.bootstrap_bundle_file, `${path}.bootstrap_bundle_file`),
      caFile: profile === 'https_web' ? c.optionalPath(f.ca_file, `${path}.ca_file`) : null,
    };
  });
}
