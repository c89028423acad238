import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { inspect } from 'node:util';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { parse as parseYaml } from 'yaml';
import { AgentIdError } from '../common/errors.js';
import { configWarnings, DEFAULTS, loadConfig, type Config, type LoadConfigOptions } from './index.js';

const EXAMPLE = resolve(fileURLToPath(import.meta.url), '../../../agentid.example.yaml');
const dir = mkdtempSync(join(tmpdir(), 'agentid-config-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const ENV = { HOME: '/home/op' };
const BASE: LoadConfigOptions = { env: ENV, flags: {}, uid: 1000, cwd: '/srv/agentid' };

let fixture = 0;
function yamlFile(text: string): string {
  const file = join(dir, `fixture-${++fixture}.yaml`);
  writeFileSync(file, text);
  return file;
}

function load(yaml: string | undefined, extra: Partial<LoadConfigOptions> = {}): Config {
  return loadConfig({ ...BASE, ...(yaml === undefined ? {} : { file: yamlFile(yaml) }), ...extra });
}

function problemOf(fn: () => unknown): AgentIdError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(AgentIdError);
    expect((err as AgentIdError).code).toBe('invalid_argument');
    return err as AgentIdError;
  }
  throw new Error('expected loadConfig to fail');
}

/** Drops null members, and sections left empty by that (a YAML section whose keys are all commented out). */
function stripNulls(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(stripNulls);
  if (value === null || typeof value !== 'object') return value;
  return Object.fromEntries(
    Object.entries(value)
      .map(([k, v]) => [k, stripNulls(v)] as const)
      .filter(([, v]) => v !== null && !(typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length === 0)),
  );
}

describe('defaults', () => {
  it('derive paths from the data directory and the issuer from the trust domain', () => {
    const c = load(undefined);
    expect(c.trustDomain).toBe('agentid.dev');
    expect(c.dataDir).toBe('/home/op/.local/share/agentid');
    expect(c.workloadSocket).toBe('/home/op/.local/share/agentid/workload.sock');
    expect(c.adminSocket).toBe('/home/op/.local/share/agentid/admin.sock');
    expect(c.audit.file).toBe('/home/op/.local/share/agentid/audit.log');
    expect(c.jwt.issuer).toBe('https://agentid.dev');
    expect(c.admin.adminUids).toEqual([1000]);
    expect(c.svid).toEqual({ x509TtlMs: 900_000, jwtTtlMs: 300_000, maxX509TtlMs: 3_600_000, maxJwtTtlMs: 3_600_000 });
    expect(c.tasks).toEqual({ defaultTtlMs: 1_800_000, maxTtlMs: 3_600_000, bufferMs: 120_000, livenessIntervalMs: 1000, cgroupRoot: '/' });
    expect(c.ca).toEqual({ keyType: 'ec-p256', ttlMs: 86_400_000, rootTtlMs: 8760 * 3_600_000, upstream: null });
    expect(c.bundleEndpoint.listen).toEqual({ host: '127.0.0.1', port: 8443 });
  });

  it('use an absolute XDG_DATA_HOME and ignore a relative one', () => {
    expect(load(undefined, { env: { ...ENV, XDG_DATA_HOME: '/xdg' } }).dataDir).toBe('/xdg/agentid');
    expect(load(undefined, { env: { ...ENV, XDG_DATA_HOME: 'rel' } }).dataDir).toBe('/home/op/.local/share/agentid');
  });

  it('agentid.example.yaml yields exactly the defaults', () => {
    expect(loadConfig({ ...BASE, file: EXAMPLE })).toEqual(load(undefined));
  });

  it('agentid.example.yaml sets every non-derived default and shows every derived one commented out', () => {
    const text = readFileSync(EXAMPLE, 'utf8');
    expect(stripNulls(parseYaml(text))).toEqual(stripNulls(DEFAULTS));
    const derived: string[] = [];
    const walk = (obj: object) =>
      Object.entries(obj).forEach(([k, v]) => (v === null ? derived.push(k) : typeof v === 'object' && walk(v)));
    walk(DEFAULTS);
    expect(derived.length).toBeGreaterThan(5);
    for (const key of derived) expect(text).toMatch(new RegExp(`^\\s*# ${key}:`, 'm'));
  });

  it('the web console is off unless console.listen is set; --console-listen beats the environment and the file', () => {
    expect(load(undefined).console).toEqual({ listen: null, certFile: null, keyFile: null, sessionTtlMs: 8 * 3_600_000 });
    const yaml = 'console: { listen: "127.0.0.1:9000", cert_file: c.pem, key_file: c.key, session_ttl: 30m }\n';
    expect(load(yaml).console).toEqual({ listen: { host: '127.0.0.1', port: 9000 }, certFile: '/srv/agentid/c.pem', keyFile: '/srv/agentid/c.key', sessionTtlMs: 1_800_000 });
    expect(load(yaml, { env: { AGENTID_CONSOLE_LISTEN: '[::1]:9001' } }).console.listen).toEqual({ host: '::1', port: 9001 });
    expect(load(yaml, { env: { AGENTID_CONSOLE_LISTEN: '[::1]:9001' }, flags: { consoleListen: '127.0.0.1:9002' } }).console.listen).toEqual({ host: '127.0.0.1', port: 9002 });
  });

  it('DEFAULTS is frozen', () => {
    expect(Object.isFrozen(DEFAULTS.svid)).toBe(true);
    expect(Object.isFrozen(DEFAULTS.federation)).toBe(true);
  });
});

describe('precedence: flags > env > file > defaults', () => {
  const file = 'trust_domain: file.example\nlog:\n  level: warn\n';
  it.each<[string, Record<string, string>, Record<string, string>, string, string]>([
    ['file', {}, {}, 'file.example', 'warn'],
    ['env over file', { AGENTID_TRUST_DOMAIN: 'env.example', AGENTID_LOG_LEVEL: 'debug' }, {}, 'env.example', 'debug'],
    ['flag over env', { AGENTID_TRUST_DOMAIN: 'env.example' }, { trustDomain: 'flag.example', logLevel: 'error' }, 'flag.example', 'error'],
    ['empty env is unset', { AGENTID_TRUST_DOMAIN: '' }, {}, 'file.example', 'warn'],
  ])('%s', (_name, env, flags, trustDomain, level) => {
    const c = load(file, { env: { ...ENV, ...env }, flags });
    expect(c.trustDomain).toBe(trustDomain);
    expect(c.log.level).toBe(level);
    expect(c.log.format).toBe('auto'); // the file's log section merges with the defaults
    expect(c.jwt.issuer).toBe(`https://${trustDomain}`);
  });

  it('derived paths follow the winning data_dir; explicit ones stay', () => {
    const c = load('data_dir: /from/file\nadmin_socket: /run/admin.sock\n', { flags: { dataDir: 'rel/data' } });
    expect(c.dataDir).toBe('/srv/agentid/rel/data');
    expect(c.workloadSocket).toBe('/srv/agentid/rel/data/workload.sock');
    expect(c.adminSocket).toBe('/run/admin.sock');
    expect(c.audit.file).toBe('/srv/agentid/rel/data/audit.log');
  });

  it.each([
    ['unix:///run/agentid/w.sock', '/run/agentid/w.sock'],
    ['unix:/run/agentid/w.sock', '/run/agentid/w.sock'],
    ['/run/agentid/w.sock', '/run/agentid/w.sock'],
    ['w.sock', '/srv/agentid/w.sock'],
  ])('SPIFFE_ENDPOINT_SOCKET=%s', (value, expected) => {
    expect(load(undefined, { env: { ...ENV, SPIFFE_ENDPOINT_SOCKET: value } }).workloadSocket).toBe(expected);
  });

  it('--socket beats SPIFFE_ENDPOINT_SOCKET, which beats the file', () => {
    const yaml = 'workload_socket: /file.sock\n';
    expect(load(yaml).workloadSocket).toBe('/file.sock');
    expect(load(yaml, { env: { SPIFFE_ENDPOINT_SOCKET: 'unix:///env.sock' } }).workloadSocket).toBe('/env.sock');
    expect(load(yaml, { env: { SPIFFE_ENDPOINT_SOCKET: '/env.sock' }, flags: { socket: '/flag.sock' } }).workloadSocket).toBe(
      '/flag.sock',
    );
  });
});

describe('a full configuration', () => {
  const full = `
trust_domain: prod.example
data_dir: data
ca:
  key_type: ec-p384
  upstream: { cert_file: up.pem, key_file: /etc/up.key }
jwt: { key_type: ES384, issuer: "https://issuer.prod.example/td" }
admin:
  admin_uids: [0, 1002]
  orchestrators: [{ uid: 1001, agents: [builder, review.er] }]
  tcp:
    listen: "[::1]:9444"
    spiffe_roles:
      - { spiffe_id: "spiffe://prod.example/ops", role: admin }
      - { spiffe_id: "spiffe://prod.example/ci", role: orchestrator, agents: [builder] }
bundle_endpoint: { enabled: true, profile: https_web, cert_file: web.pem, key_file: web.key, listen: "0.0.0.0:0" }
federation:
  - { trust_domain: partner.example, bundle_endpoint_url: "https://b.partner.example/", profile: https_spiffe,
      endpoint_spiffe_id: "spiffe://partner.example/be", bootstrap_bundle_file: partner.json }
  - { trust_domain: web.example, bundle_endpoint_url: "https://web.example/b", profile: https_web }
`;

  it('comes back camelCased, in milliseconds, with paths resolved against cwd', () => {
    const c = load(full);
    expect(c.dataDir).toBe('/srv/agentid/data');
    expect(c.ca.upstream).toEqual({ certFile: '/srv/agentid/up.pem', keyFile: '/etc/up.key', bundleFile: null });
    expect(c.jwt).toEqual({ keyType: 'ES384', keyTtlMs: 86_400_000, issuer: 'https://issuer.prod.example/td' });
    expect(c.admin).toEqual({
      adminUids: [0, 1002],
      orchestrators: [{ uid: 1001, agents: ['builder', 'review.er'] }],
      tcp: {
        listen: { host: '::1', port: 9444 },
        spiffeRoles: [
          { spiffeId: 'spiffe://prod.example/ops', role: 'admin', agents: [] },
          { spiffeId: 'spiffe://prod.example/ci', role: 'orchestrator', agents: ['builder'] },
        ],
      },
    });
    expect(c.bundleEndpoint).toEqual({
      enabled: true,
      listen: { host: '0.0.0.0', port: 0 },
      profile: 'https_web',
      certFile: '/srv/agentid/web.pem',
      keyFile: '/srv/agentid/web.key',
      refreshHintMs: 300_000,
    });
    expect(c.federation).toEqual([
      {
        trustDomain: 'partner.example',
        bundleEndpointUrl: 'https://b.partner.example/',
        profile: 'https_spiffe',
        endpointSpiffeId: 'spiffe://partner.example/be',
        bootstrapBundleFile: '/srv/agentid/partner.json',
        caFile: null,
      },
      {
        trustDomain: 'web.example',
        bundleEndpointUrl: 'https://web.example/b',
        profile: 'https_web',
        endpointSpiffeId: null,
        bootstrapBundleFile: null,
        caFile: null,
      },
    ]);
    expect(configWarnings(c)).toEqual([]);
  });

  it('is deeply frozen', () => {
    const c = load(full);
    const mutations: [string, () => void][] = [
      ['top level', () => ((c as { trustDomain: string }).trustDomain = 'evil.example')],
      ['nested', () => ((c.svid as { x509TtlMs: number }).x509TtlMs = 1)],
      ['list', () => (c.admin.adminUids as number[]).push(31337)],
      ['list item', () => ((c.admin.orchestrators[0]!.agents as string[])[0] = 'x')],
      ['deep', () => ((c.admin.tcp!.listen as { port: number }).port = 1)],
    ];
    for (const [, mutate] of mutations) expect(mutate).toThrow(TypeError);
    expect(c.trustDomain).toBe('prod.example');
  });
});

describe('bad input names the problem', () => {
  const long = `/tmp/${'s'.repeat(120)}.sock`;
  it.each<[string, string, string]>([
    ['unknown-top-level-key', 'trust_domian: x.example\n', 'trust_domian: unknown key (did you mean trust_domain?)'],
    ['unknown-nested-key', 'ca:\n  upstream: { cert_file: a, key_file: b, certfile: c }\n', 'ca.upstream.certfile: unknown key'],
    ['camel-case-key', 'svid:\n  x509Ttl: 5m\n', 'svid.x509Ttl: unknown key (did you mean x509_ttl?)'],
    ['unknown-key-in-list-item', 'federation:\n  - { trust_domain: p.example, url: "https://p" }\n', 'federation[0].url: unknown key'],
    ['unknown-section', 'logging: { level: info }\n', 'logging: unknown key'],
    ['uppercase-trust-domain', 'trust_domain: Example.org\n', 'trust_domain: trust domain "Example.org": trust domain must be lowercase'],
    ['trust-domain-with-port', 'trust_domain: "example.org:8080"\n', 'trust_domain: trust domain "example.org:8080": trust domain must not contain a port'],
    ['empty-trust-domain', 'trust_domain:\n', 'trust_domain: is required'],
    ['duration-without-unit', 'svid:\n  x509_ttl: 15\n', 'svid.x509_ttl: must be a duration string'],
    ['duration-garbage', 'tasks:\n  buffer: soon\n', 'tasks.buffer: "soon" is not a duration'],
    ['cgroup-root-relative', 'tasks:\n  cgroup_root: agents\n', 'tasks.cgroup_root: "agents" must be an absolute cgroup path'],
    ['cgroup-root-dotdot', 'tasks:\n  cgroup_root: /agents/../x\n', 'tasks.cgroup_root: "/agents/../x" must be an absolute cgroup path'],
    ['zero-duration', 'tasks:\n  liveness_interval: 0s\n', 'tasks.liveness_interval: must be greater than zero'],
    ['zero-attest-rate', 'agents:\n  attest_per_minute_per_address: 0\n', 'agents.attest_per_minute_per_address: must be an integer from 1 to 1000000'],
    ['log-format-xml', 'log: { format: xml }\n', 'log.format: must be one of json, pretty, auto'],
    ['section-not-a-mapping', 'log: verbose\n', 'log: must be a mapping'],
    ['rsa-ca-key', 'ca: { key_type: rsa-2048 }\n', 'ca.key_type: must be one of ec-p256, ec-p384'],
    ['rs256-jwt-key', 'jwt: { key_type: RS256 }\n', 'jwt.key_type: must be one of ES256, ES384'],
    ['http-issuer', 'jwt: { issuer: "http://agentid.dev" }\n', 'jwt.issuer: must use https'],
    ['negative-uid', 'admin: { admin_uids: [-1] }\n', 'admin.admin_uids[0]: must be an integer from 0 to 4294967294'],
    ['fractional-uid', 'admin: { admin_uids: [1.5] }\n', 'admin.admin_uids[0]: must be an integer'],
    ['uid-as-name', 'admin: { admin_uids: [root] }\n', 'admin.admin_uids[0]: must be an integer'],
    ['agent-with-slash', 'admin: { orchestrators: [{ uid: 1, agents: ["a/b"] }] }\n', 'admin.orchestrators[0].agents[0]: "a/b" is not a valid SPIFFE ID path segment'],
    ['agent-dot-dot', 'admin: { orchestrators: [{ uid: 1, agents: [".."] }] }\n', 'admin.orchestrators[0].agents[0]: ".." is not a valid SPIFFE ID path segment'],
    ['orchestrator-without-agents', 'admin: { orchestrators: [{ uid: 1, agents: [] }] }\n', 'admin.orchestrators[0].agents: must name at least one agent'],
    ['orchestrator-twice', 'admin: { orchestrators: [{ uid: 1, agents: [a] }, { uid: 1, agents: [b] }] }\n', 'admin.orchestrators[1].uid: uid 1 is listed twice'],
    ['tcp-bad-role', 'admin: { tcp: { spiffe_roles: [{ spiffe_id: "spiffe://agentid.dev/x", role: root }] } }\n', 'admin.tcp.spiffe_roles[0].role: must be one of admin, orchestrator'],
    ['tcp-admin-with-agents', 'admin: { tcp: { spiffe_roles: [{ spiffe_id: "spiffe://agentid.dev/x", role: admin, agents: [a] }] } }\n', 'admin.tcp.spiffe_roles[0].agents: only applies to role orchestrator'],
    ['tcp-orchestrator-without-agents', 'admin: { tcp: { spiffe_roles: [{ spiffe_id: "spiffe://agentid.dev/x", role: orchestrator }] } }\n', 'admin.tcp.spiffe_roles[0].agents: must be a list'],
    ['tcp-bad-spiffe-id', 'admin: { tcp: { spiffe_roles: [{ spiffe_id: "spiffe://agentid.dev/x/", role: admin }] } }\n', 'admin.tcp.spiffe_roles[0].spiffe_id: SPIFFE ID "spiffe://agentid.dev/x/": path must not end with "/"'],
    ['listen-without-port', 'bundle_endpoint: { listen: localhost }\n', 'bundle_endpoint.listen: must be host:port'],
    ['listen-port-too-big', 'bundle_endpoint: { listen: "127.0.0.1:70000" }\n', 'bundle_endpoint.listen: must be host:port'],
    ['https-web-without-cert', 'bundle_endpoint: { enabled: true, profile: https_web }\n', 'bundle_endpoint.cert_file: is required with profile https_web'],
    ['https-spiffe-with-cert', 'bundle_endpoint: { cert_file: a.pem }\n', 'bundle_endpoint.cert_file: only applies to profile https_web'],
    ['enabled-as-string', 'bundle_endpoint: { enabled: "yes" }\n', 'bundle_endpoint.enabled: must be true or false'],
    ['console-listen-without-port', 'console: { listen: localhost }\n', 'console.listen: must be host:port'],
    ['console-cert-without-key', 'console: { listen: "127.0.0.1:0", cert_file: c.pem }\n', 'console.key_file: console.cert_file and console.key_file go together'],
    ['console-session-ttl', 'console: { session_ttl: forever }\n', 'console.session_ttl:'],
    ['federation-not-a-list', 'federation: { trust_domain: p.example }\n', 'federation: must be a list'],
    ['federation-own-trust-domain', 'federation: [{ trust_domain: agentid.dev, bundle_endpoint_url: "https://x", profile: https_web }]\n', 'federation[0].trust_domain: agentid.dev is our own trust domain'],
    ['federation-bad-trust-domain', 'federation: [{ trust_domain: "p/x", bundle_endpoint_url: "https://x", profile: https_web }]\n', 'federation[0].trust_domain: trust domain "p/x"'],
    ['federation-twice', 'federation: [{ trust_domain: p.example, bundle_endpoint_url: "https://x", profile: https_web }, { trust_domain: p.example, bundle_endpoint_url: "https://y", profile: https_web }]\n', 'federation[1].trust_domain: p.example is listed twice'],
    ['federation-http-url', 'federation: [{ trust_domain: p.example, bundle_endpoint_url: "http://x", profile: https_web }]\n', 'federation[0].bundle_endpoint_url: must use https'],
    ['federation-url-with-credentials', 'federation: [{ trust_domain: p.example, bundle_endpoint_url: "https://u:pw@x", profile: https_web }]\n', 'federation[0].bundle_endpoint_url: must not carry credentials'],
    ['federation-no-profile', 'federation: [{ trust_domain: p.example, bundle_endpoint_url: "https://x" }]\n', 'federation[0].profile: must be one of https_web, https_spiffe'],
    ['https-spiffe-without-endpoint-id', 'federation: [{ trust_domain: p.example, bundle_endpoint_url: "https://x", profile: https_spiffe }]\n', 'federation[0].endpoint_spiffe_id: is required'],
    ['https-web-with-endpoint-id', 'federation: [{ trust_domain: p.example, bundle_endpoint_url: "https://x", profile: https_web, endpoint_spiffe_id: "spiffe://p.example/be" }]\n', 'federation[0].endpoint_spiffe_id: only applies to profile https_spiffe'],
    ['https-spiffe-with-ca-file', 'federation: [{ trust_domain: p.example, bundle_endpoint_url: "https://x", profile: https_spiffe, endpoint_spiffe_id: "spiffe://p.example/be", ca_file: ca.pem }]\n', 'federation[0].ca_file: only applies to profile https_web'],
    ['x509-ttl-over-max', 'svid: { x509_ttl: 2h }\n', 'svid.x509_ttl: must not be longer than svid.max_x509_ttl'],
    ['jwt-ttl-over-max', 'svid: { jwt_ttl: 1h, max_jwt_ttl: 30m }\n', 'svid.jwt_ttl: must not be longer than svid.max_jwt_ttl'],
    ['task-default-over-max', 'tasks: { default_ttl: 2h }\n', 'tasks.default_ttl: must not be longer than tasks.max_ttl'],
    ['ca-ttl-over-root', 'ca: { ttl: 9000h }\n', 'ca.ttl: must not be longer than ca.root_ttl'],
    ['upstream-without-key', 'ca: { upstream: { cert_file: a.pem } }\n', 'ca.upstream.key_file: is required'],
    ['socket-path-too-long', `workload_socket: ${long}\n`, `workload_socket: ${long} is 130 bytes; Unix socket paths are limited to 107`],
    ['socket-uri-with-host', 'admin_socket: "unix://host/admin.sock"\n', 'admin_socket: a unix: address must hold an absolute path'],
    ['socket-over-tcp', 'workload_socket: "tcp://127.0.0.1:8081"\n', 'workload_socket: only Unix domain sockets are supported'],
    ['tilde-path', 'data_dir: ~/agentid\n', 'data_dir: "~" is not expanded'],
    ['nul-in-path', 'audit: { file: "a\\0b" }\n', 'audit.file: must not contain a NUL byte'],
    ['negative-hash-limit', 'attest: { sha256_max_bytes: -1 }\n', 'attest.sha256_max_bytes: must be an integer from 0'],
    ['duplicate-yaml-key', 'trust_domain: a.example\ntrust_domain: b.example\n', 'line 2 column 1: Map keys must be unique'],
    ['top-level-list', '- a\n- b\n', 'the top level must be a mapping'],
  ])('%s', (_name, yaml, expected) => {
    expect(problemOf(() => load(yaml)).message).toContain(expected);
  });

  it.each<[string, Record<string, string>, Record<string, string>, string]>([
    ['env-bad-log-level', { AGENTID_LOG_LEVEL: 'loud' }, {}, 'log.level (env AGENTID_LOG_LEVEL): must be one of'],
    ['flag-bad-trust-domain', {}, { trustDomain: 'a b' }, 'trust_domain (flag --trust-domain): trust domain "a b"'],
    ['env-socket-not-unix', { SPIFFE_ENDPOINT_SOCKET: 'tcp://127.0.0.1:1' }, {}, 'workload_socket (env SPIFFE_ENDPOINT_SOCKET): only Unix'],
    ['flag-bad-log-format', {}, { logFormat: 'xml' }, 'log.format (flag --log-format): must be one of json, pretty, auto'],
  ])('%s names its source', (_name, env, flags, expected) => {
    expect(problemOf(() => load(undefined, { env: { ...ENV, ...env }, flags })).message).toContain(expected);
  });

  it('lists every problem at once', () => {
    const yaml = `
trust_domain: BAD
extra: 1
svid: { x509_ttl: forever, max_jwt_ttl: 5 }
admin: { admin_uids: [-3], orchestrators: [{ uid: 7, agents: ["x/y"], role: admin }] }
federation: [{ trust_domain: BAD2, bundle_endpoint_url: "ftp://x", profile: https_spiffe }]
`;
    const { message } = problemOf(() => load(yaml, { env: { ...ENV, AGENTID_LOG_FORMAT: 'xml' } }));
    const expected = [
      'extra: unknown key',
      'admin.orchestrators[0].role: unknown key',
      'trust_domain: trust domain "BAD"',
      'svid.x509_ttl: "forever" is not a duration',
      'svid.max_jwt_ttl: must be a duration string',
      'admin.admin_uids[0]: must be an integer',
      'admin.orchestrators[0].agents[0]: "x/y"',
      'federation[0].trust_domain: trust domain "BAD2"',
      'federation[0].bundle_endpoint_url: must use https',
      'federation[0].endpoint_spiffe_id: is required',
      'log.format (env AGENTID_LOG_FORMAT): must be one of json, pretty, auto',
    ];
    for (const part of expected) expect(message).toContain(part);
    expect(message.split('; ')).toHaveLength(expected.length);
    expect(message).toMatch(/^invalid configuration \(file .*fixture-\d+\.yaml\): /);
  });

  it('refuses a missing file', () => {
    expect(problemOf(() => loadConfig({ ...BASE, file: join(dir, 'absent.yaml') })).message).toMatch(/does not exist/);
  });
});

describe('datastore.url', () => {
  it('defaults to SQLite in the data directory, which follows data_dir', () => {
    expect(load(undefined).datastore).toEqual({ kind: 'sqlite', file: '/home/op/.local/share/agentid/agentid.db' });
    expect(load('data_dir: /var/lib/agentid\n').datastore).toEqual({ kind: 'sqlite', file: '/var/lib/agentid/agentid.db' });
  });

  it.each<[string, Partial<LoadConfigOptions>, string | undefined, { host: string; database: string }]>([
    ['file', {}, 'datastore: { url: "postgresql://agentid:s3cret@db.example.org:5433/agentid?sslmode=require" }\n', { host: 'db.example.org:5433', database: 'agentid' }],
    ['env', { env: { ...ENV, AGENTID_DATASTORE: 'postgresql://agentid:s3cret@db.example.org/ids' } }, undefined, { host: 'db.example.org', database: 'ids' }],
    ['flag over env', { env: { ...ENV, AGENTID_DATASTORE: 'sqlite' }, flags: { datastore: 'postgres://u:s3cret@h/flagdb' } }, undefined, { host: 'h', database: 'flagdb' }],
    ['unix socket', { flags: { datastore: 'postgresql:///agentid?host=/tmp/pg&password=s3cret' } }, undefined, { host: '/tmp/pg', database: 'agentid' }],
    ['socket directory as host', { flags: { datastore: 'postgresql://u:s3cret@%2Frun%2Fpostgresql/agentid' } }, undefined, { host: '/run/postgresql', database: 'agentid' }],
  ])('PostgreSQL from the %s; the password never prints', (_name, options, yaml, target) => {
    const c = load(yaml, options);
    expect(c.datastore).toMatchObject({ kind: 'postgresql', ...target });
    if (c.datastore.kind !== 'postgresql') throw new Error('expected postgresql');
    expect(c.datastore.url.reveal()).toContain('s3cret');
    expect(JSON.stringify(c)).not.toContain('s3cret');
    expect(inspect(c, { depth: 10 })).not.toContain('s3cret');
  });

  it.each<[string, Record<string, string>, string]>([
    ['another database', { AGENTID_DATASTORE: 'mysql://root:s3cret@db/agentid' }, 'datastore.url (env AGENTID_DATASTORE): must be sqlite or a PostgreSQL URL'],
    ['no database name', { AGENTID_DATASTORE: 'postgresql://root:s3cret@db' }, 'datastore.url (env AGENTID_DATASTORE): must be sqlite or a PostgreSQL URL naming a database'],
    ['not a URL', { AGENTID_DATASTORE: 'SQLite s3cret' }, 'datastore.url (env AGENTID_DATASTORE): must be sqlite'],
  ])('refuses %s without quoting it', (_name, env, expected) => {
    const { message } = problemOf(() => load(undefined, { env: { ...ENV, ...env } }));
    expect(message).toContain(expected);
    expect(message).not.toContain('s3cret');
  });
});

describe('configWarnings', () => {
  const own = 'trust_domain: prod.example\n';
  it.each<[string, string, RegExp | null]>([
    ['clean', own, null],
    ['x509-ttl-over-ca-sixth', `${own}ca: { ttl: 1h }\nsvid: { x509_ttl: 15m }\n`, /svid\.x509_ttl \(15m\) is longer than ca\.ttl\/6 \(10m\)/],
    ['max-x509-ttl-over-ca-sixth', `${own}ca: { ttl: 3h }\n`, /svid\.max_x509_ttl \(1h\) is longer than ca\.ttl\/6 \(30m\)/],
    ['dev-trust-domain', '', /development default "agentid.dev"/],
    ['no-admins', `${own}admin: { admin_uids: [] }\n`, /nobody can manage this server/],
    ['https-spiffe-without-bootstrap', `${own}federation: [{ trust_domain: p.example, bundle_endpoint_url: "https://x", profile: https_spiffe, endpoint_spiffe_id: "spiffe://p.example/be" }]\n`, /federation\[0\] \(p\.example\): https_spiffe without bootstrap_bundle_file/],
    ['buffer-over-task-ttl', `${own}tasks: { default_ttl: 1m, buffer: 2m }\n`, /tasks\.buffer is longer than tasks\.default_ttl/],
  ])('%s', (_name, yaml, expected) => {
    const warnings = configWarnings(load(yaml));
    if (expected === null) expect(warnings).toEqual([]);
    else expect(warnings).toEqual([expect.stringMatching(expected)]);
  });
});
