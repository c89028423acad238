import type { Secret } from '../common/secret.js';

/*
 * The validated configuration: camelCase, durations in milliseconds (fields end in Ms), paths
 * absolute, every optional block either fully present or null. Deeply frozen by loadConfig.
 */

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
/** auto: pretty on a terminal, json otherwise. */
export type LogFormat = 'json' | 'pretty' | 'auto';
export type CaKeyType = 'ec-p256' | 'ec-p384';
export type JwtKeyType = 'ES256' | 'ES384';
export type BundleProfile = 'https_web' | 'https_spiffe';
export type AdminRole = 'admin' | 'orchestrator';

export interface HostPort {
  /** IPv6 addresses without brackets. */
  readonly host: string;
  /** 0 asks the OS for a free port. */
  readonly port: number;
}

/** Where the server keeps its registration data (config key datastore.url). */
export type DatastoreConfig =
  | { readonly kind: 'sqlite'; readonly file: string }
  | {
      readonly kind: 'postgresql';
      /** The connection URL; it may carry a password, hence the wrapper (prints as [redacted]). */
      readonly url: Secret<string>;
      /** For logs: host (or socket directory) and database, never credentials. */
      readonly host: string;
      readonly database: string;
    };

export interface Config {
  readonly trustDomain: string;
  readonly dataDir: string;
  readonly workloadSocket: string;
  readonly adminSocket: string;
  readonly datastore: DatastoreConfig;
  readonly log: { readonly level: LogLevel; readonly format: LogFormat };
  readonly ca: {
    readonly keyType: CaKeyType;
    readonly ttlMs: number;
    readonly rootTtlMs: number;
    readonly upstream: {
      readonly certFile: string;
      readonly keyFile: string;
      /** Roots to publish in the bundle; null: the upstream certificate chain's last certificate. */
      readonly bundleFile: string | null;
    } | null;
  };
  readonly jwt: { readonly keyType: JwtKeyType; readonly keyTtlMs: number; readonly issuer: string };
  readonly svid: {
    readonly x509TtlMs: number;
    readonly jwtTtlMs: number;
    readonly maxX509TtlMs: number;
    readonly maxJwtTtlMs: number;
  };
  readonly tasks: {
    readonly defaultTtlMs: number;
    readonly maxTtlMs: number;
    readonly bufferMs: number;
    readonly livenessIntervalMs: number;
    readonly cgroupRoot: string;
  };
  readonly admin: {
    readonly adminUids: readonly number[];
    readonly orchestrators: readonly { readonly uid: number; readonly agents: readonly string[] }[];
    readonly tcp: {
      readonly listen: HostPort;
      readonly spiffeRoles: readonly {
        readonly spiffeId: string;
        readonly role: AdminRole;
        /** Empty for role admin. */
        readonly agents: readonly string[];
      }[];
    } | null;
  };
  readonly bundleEndpoint: {
    readonly enabled: boolean;
    readonly listen: HostPort;
    readonly profile: BundleProfile;
    readonly certFile: string | null;
    readonly keyFile: string | null;
    readonly refreshHintMs: number;
  };
  readonly console: {
    /** null: the console is off. */
    readonly listen: HostPort | null;
    /** Both set, or both null (the server SVID is served). */
    readonly certFile: string | null;
    readonly keyFile: string | null;
    readonly sessionTtlMs: number;
  };
  readonly federation: readonly {
    readonly trustDomain: string;
    readonly bundleEndpointUrl: string;
    readonly profile: BundleProfile;
    readonly endpointSpiffeId: string | null;
    readonly bootstrapBundleFile: string | null;
    readonly caFile: string | null;
  }[];
  readonly audit: { readonly file: string; readonly reserveBytes: number; readonly refusalIntervalMs: number };
  readonly attest: { readonly sha256MaxBytes: number };
  /** Plain-HTTP operations endpoints; null: off. */
  readonly health: { readonly listen: HostPort | null };
  readonly metrics: { readonly listen: HostPort | null };
  /** Workload API limits (see DEFAULTS.limits for what each one does and why its default). */
  readonly limits: WorkloadLimits;
  /** The listener for per-host agents (`agentid agent`); see DEFAULTS.agents. */
  readonly agents: {
    /** null: off. */
    readonly listen: HostPort | null;
    readonly nodeSvidTtlMs: number;
    readonly attestPerMinutePerAddress: number;
    readonly x509pop: { readonly caBundle: string | null };
  };
}

export interface WorkloadLimits {
  readonly maxHeaderListBytes: number;
  readonly maxMessageBytes: number;
  readonly firstRequestTimeoutMs: number;
  readonly idleTimeoutMs: number;
  readonly keepaliveTimeMs: number;
  readonly keepaliveTimeoutMs: number;
  /** null: three quarters of (open-file limit - descriptorReserve). */
  readonly maxConnectionsPerUid: number | null;
  /** null: bounded by the open-file limit only (minus descriptorReserve). */
  readonly maxConnections: number | null;
  readonly maxStreamsPerUid: number;
  readonly maxStreams: number;
  readonly requestsPerSecondPerUid: number;
  readonly requestsPerSecond: number;
  readonly descriptorReserve: number;
}

/** Command-line flags that override the file and the environment. */
export interface FlagValues {
  trustDomain: string;
  dataDir: string;
  socket: string;
  adminSocket: string;
  datastore: string;
  logLevel: string;
  logFormat: string;
  consoleListen: string;
  healthListen: string;
  metricsListen: string;
  agentListen: string;
}
