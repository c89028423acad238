/*
 * The defaults table, in the file's own shape (snake_case keys, durations as strings). It is the
 * documentation of every option: agentid.example.yaml mirrors it and a test keeps them equal.
 * null marks a value derived at load time (the comment says from what) or an optional block
 * that is off unless configured.
 * Precedence: flags > environment > file > these defaults.
 */
import { deepFreeze } from '../common/freeze.js';

export const DEFAULTS = deepFreeze({
  /** Trust domain of every SPIFFE ID issued. The default is for development: set your own. env AGENTID_TRUST_DOMAIN, flag --trust-domain. */
  trust_domain: 'agentid.dev',
  /** Keys, datastore, sockets and audit file. null: $XDG_DATA_HOME/agentid, else ~/.local/share/agentid. env AGENTID_DATA_DIR, flag --data-dir. */
  data_dir: null as string | null,
  /** Workload API socket. null: <data_dir>/workload.sock. env SPIFFE_ENDPOINT_SOCKET (unix:///path, unix:/path or a path), flag --socket. */
  workload_socket: null as string | null,
  /** Admin API socket (0600 plus uid checks). null: <data_dir>/admin.sock. env AGENTID_ADMIN_SOCKET, flag --admin-socket. */
  admin_socket: null as string | null,
  datastore: {
    /**
     * Where entries, tasks and revocations live: sqlite (the file agentid.db in data_dir, for one
     * server) or a PostgreSQL URL shared by several servers: postgresql://user:password@host:5432/agentid,
     * or postgresql:///agentid?host=/run/postgresql for a Unix socket. Prefer PGPASSWORD or ~/.pgpass
     * to a password in the URL. env AGENTID_DATASTORE, flag --datastore.
     */
    url: 'sqlite',
  },
  log: {
    /** fatal, error, warn, info, debug, trace or silent. env AGENTID_LOG_LEVEL, flag --log-level. */
    level: 'info',
    /** json (one object per line), pretty (for people), or auto: pretty when stdout and stderr are a terminal, else json. env AGENTID_LOG_FORMAT, flag --log-format. */
    format: 'auto',
  },
  ca: {
    /** Key type of the root and signing CAs: ec-p256 or ec-p384. */
    key_type: 'ec-p256',
    /** Lifetime of a signing CA; it is rotated well before it expires, and no SVID outlives it. */
    ttl: '24h',
    /** Lifetime of the self-signed root (unused with an upstream CA). */
    root_ttl: '8760h',
    /** Chain to an existing PKI instead of a self-signed root: { cert_file, key_file, bundle_file? }. */
    upstream: null as { cert_file: string; key_file: string; bundle_file?: string } | null,
  },
  jwt: {
    /** JWT-SVID signing algorithm: ES256 or ES384. */
    key_type: 'ES256',
    /** Lifetime of a JWT signing key before rotation. */
    key_ttl: '24h',
    /** OIDC issuer (iss claim, discovery document). null: https://<trust_domain>. */
    issuer: null as string | null,
  },
  svid: {
    /** X.509-SVID lifetime unless an entry or task asks for another. */
    x509_ttl: '15m',
    /** JWT-SVID lifetime unless an entry or task asks for another. */
    jwt_ttl: '5m',
    /** Upper bound on any requested X.509-SVID lifetime. */
    max_x509_ttl: '1h',
    /** Upper bound on any requested JWT-SVID lifetime. */
    max_jwt_ttl: '1h',
  },
  tasks: {
    /** Task lifetime when the orchestrator does not give one. */
    default_ttl: '30m',
    /** Upper bound on a task's lifetime. */
    max_ttl: '1h',
    /** Grace after a task's end during which its last SVIDs may still be valid. */
    buffer: '2m',
    /** How often bound processes are re-checked (exit, PID reuse). */
    liveness_interval: '1s',
    /** cgroup v2 subtree (path below the cgroup2 mount) that task cgroup bindings must lie in; "/" allows any. */
    cgroup_root: '/',
  },
  admin: {
    /** uids allowed every admin call on the admin socket. null: the uid running the server. */
    admin_uids: null as number[] | null,
    /** uids allowed to start and end tasks for the listed agents: [{ uid: 1001, agents: [builder] }]. */
    orchestrators: [] as { uid: number; agents: string[] }[],
    /** Admin API over mTLS on TCP: { listen: "127.0.0.1:8444", spiffe_roles: [{ spiffe_id, role: admin|orchestrator, agents }] }. */
    tcp: null as { listen?: string; spiffe_roles?: { spiffe_id: string; role: string; agents?: string[] }[] } | null,
  },
  bundle_endpoint: {
    /** Serve the SPIFFE bundle, OIDC discovery and JWKS over HTTPS. */
    enabled: false,
    /** host:port to listen on. */
    listen: '127.0.0.1:8443',
    /** https_spiffe (server authenticates with an SVID) or https_web (with cert_file/key_file). */
    profile: 'https_spiffe',
    /** Web PKI certificate chain (PEM); required for https_web. */
    cert_file: null as string | null,
    /** Its private key (PEM); required for https_web. */
    key_file: null as string | null,
    /** spiffe_refresh_hint published in the bundle. */
    refresh_hint: '5m',
  },
  console: {
    /** Web console for security teams, served over HTTPS at host:port (keep it on loopback). null: off. env AGENTID_CONSOLE_LISTEN, flag --console-listen. */
    listen: null as string | null,
    /** Certificate chain (PEM) the console presents. null: the server's own X.509-SVID (browsers do not trust it by themselves). */
    cert_file: null as string | null,
    /** Its private key (PEM); required with cert_file. */
    key_file: null as string | null,
    /** How long a console session lasts after sign-in. */
    session_ttl: '8h',
  },
  /**
   * Foreign trust domains whose bundles are fetched: [{ trust_domain, bundle_endpoint_url (https),
   * profile, endpoint_spiffe_id (https_spiffe only, required), bootstrap_bundle_file?, ca_file? (https_web only) }].
   */
  federation: [] as {
    trust_domain: string;
    bundle_endpoint_url: string;
    profile: string;
    endpoint_spiffe_id?: string;
    bootstrap_bundle_file?: string;
    ca_file?: string;
  }[],
  audit: {
    /** Hash-chained audit trail (JSON lines). null: <data_dir>/audit.log. */
    file: null as string | null,
    /** Bytes kept free on the volumes of the audit log and the database: below it new issuance pauses (32 MiB). 0: off. */
    reserve_bytes: 33_554_432,
    /** Repeated refusals of one uid for one reason become one counted audit line per this interval. */
    refusal_interval: '1m',
  },
  attest: {
    /** Largest executable hashed for a sha256 selector (bytes); bigger ones get no sha256 selector. */
    sha256_max_bytes: 268_435_456,
  },
  health: {
    /** host:port serving GET /live and /ready over plain HTTP. null: off. env AGENTID_HEALTH_LISTEN, flag --health-listen. */
    listen: null as string | null,
  },
  metrics: {
    /** host:port serving GET /metrics (Prometheus text) over plain HTTP; may equal health.listen. null: off. env AGENTID_METRICS_LISTEN, flag --metrics-listen. */
    listen: null as string | null,
  },
  agents: {
    /** host:port where per-host agents (`agentid agent`) attest, sync and mint, over TLS (gRPC, agentid.node.v1). null: off. env AGENTID_AGENT_LISTEN, flag --agent-listen. */
    listen: null as string | null,
    /** Lifetime of node SVIDs (spiffe://<td>/agentid/node/<name>); agents renew at half-life. An evicted node's SVID is refused at once regardless. */
    node_svid_ttl: '1h',
    /**
     * Attest calls (the only call a peer makes without a credential) per minute from one source
     * address, IPv6 counted per /64: a burst of this many, refilled evenly. Over it: RESOURCE_EXHAUSTED,
     * counted (metrics), not audited. Raise it when many hosts attest from behind one NAT address.
     */
    attest_per_minute_per_address: 60,
    x509pop: {
      /** PEM CA certificates whose host certificates may attest (node name = subject CN). null: x509pop is refused, join tokens only. */
      ca_bundle: null as string | null,
    },
  },
  /*
   * Workload API limits. Any local user can connect to the Workload API socket, so every resource
   * a connection can hold is bounded; a caller over a limit gets RESOURCE_EXHAUSTED (or, for
   * connections, a connection that answers RESOURCE_EXHAUSTED and then closes) while everyone
   * else is served. Refusals are counted, not audited one by one.
   */
  limits: {
    /** Largest request metadata (HTTP/2 header list, bytes, 32 per entry included as in RFC 7541); real clients send under 1 KiB. */
    max_header_list_bytes: 16_384,
    /** Largest request message (bytes). Workload API requests are a few audiences or one JWT. */
    max_message_bytes: 65_536,
    /** A connection that has not started a call within this is closed (a peer that never speaks, or a stuck HTTP/2 header). */
    first_request_timeout: '10s',
    /** A connection with no call in progress for this long is closed; clients reconnect when they next need it. */
    idle_timeout: '5m',
    /** The server pings a connection that has been quiet this long... */
    keepalive_time: '1m',
    /** ...and closes it when the ping is not answered within this (a peer that stopped reading). */
    keepalive_timeout: '20s',
    /**
     * Open Workload API connections per uid (a process usually needs one). null: three quarters of
     * (open-file limit - descriptor_reserve), so one uid never takes every connection, yet 10,000
     * agents running as one service user still fit under a 20,000 open-file limit.
     */
    max_connections_per_uid: null as number | null,
    /** Open Workload API connections in all. null: only the open-file limit minus descriptor_reserve. */
    max_connections: null as number | null,
    /** Open streams (FetchX509SVID, FetchX509Bundles, FetchJWTBundles) per uid. */
    max_streams_per_uid: 16_384,
    /** Open streams in all. */
    max_streams: 65_536,
    /** Calls started per second per uid (token bucket, bursts up to one second's worth); a reconnect storm of one uid's agents fits. */
    requests_per_second_per_uid: 5000,
    /** Calls started per second in all. */
    requests_per_second: 20_000,
    /** Descriptors kept free for the admin socket, the datastore and the audit log: Workload API connections are refused this close to the open-file limit. */
    descriptor_reserve: 64,
  },
});

export type ConfigDefaults = typeof DEFAULTS;
