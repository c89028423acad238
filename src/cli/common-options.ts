import { Option, type Command } from 'commander';
import { loadConfig, type Config } from '../config/index.js';
import { storedTrustDomain } from '../ca/stored-trust-domain.js';

export interface CommonFlags {
  config?: string;
  dataDir?: string;
  trustDomain?: string;
  socket?: string;
  adminSocket?: string;
  datastore?: string;
  logLevel?: string;
  logFormat?: string;
  consoleListen?: string;
  healthListen?: string;
  metricsListen?: string;
  agentListen?: string;
  json?: boolean;
}

export const withConfigOptions = (cmd: Command) =>
  cmd
    .option('--config <file>', 'YAML config file (env AGENTID_CONFIG)')
    .option('--data-dir <dir>', 'data directory (env AGENTID_DATA_DIR)')
    .option('--trust-domain <td>', 'trust domain (env AGENTID_TRUST_DOMAIN)');

export const withJson = (cmd: Command) => cmd.option('--json', 'print JSON');

export const withSocket = (cmd: Command) =>
  cmd.addOption(new Option('--socket <path>', 'Workload API socket (env SPIFFE_ENDPOINT_SOCKET; default <data-dir>/workload.sock)'));

/** How an admin command reaches the admin API when it does not use the Unix socket. */
export interface AdminTransportFlags {
  adminUrl?: string;
  adminServerId?: string;
  adminSpiffeId?: string;
}

export const withAdminSocket = (cmd: Command) =>
  cmd
    .addOption(new Option('--admin-socket <path>', 'admin API socket (env AGENTID_ADMIN_SOCKET; default <data-dir>/admin.sock)'))
    .addOption(new Option('--admin-url <url>', 'reach the admin API over mTLS at https://HOST:PORT instead, as this process\'s X.509-SVID (env AGENTID_ADMIN_URL)'))
    .addOption(new Option('--admin-server-id <id>', 'with --admin-url: SPIFFE ID the server must present (default spiffe://<td>/agentid/server)'))
    .addOption(new Option('--admin-spiffe-id <id>', 'with --admin-url: which of this process\'s SVIDs to authenticate with (default: the first)'))
    .addOption(new Option('--socket <path>', 'Workload API socket: where --admin-url gets this process\'s SVID, and what `run` hands to its command (env SPIFFE_ENDPOINT_SOCKET; default <data-dir>/workload.sock)'))
    .option('--data-dir <dir>', 'data directory whose admin socket to use (env AGENTID_DATA_DIR)')
    .option('--config <file>', 'YAML config file (env AGENTID_CONFIG)');

/** Flags > env > file > defaults, validated once (config/). */
export function configFrom(flags: CommonFlags): Config {
  return loadConfig({
    file: flags.config ?? process.env.AGENTID_CONFIG,
    env: process.env,
    storedTrustDomain,
    flags: {
      trustDomain: flags.trustDomain,
      dataDir: flags.dataDir,
      socket: flags.socket,
      adminSocket: flags.adminSocket,
      datastore: flags.datastore,
      logLevel: flags.logLevel,
      logFormat: flags.logFormat as 'json' | 'pretty' | undefined,
      consoleListen: flags.consoleListen,
      healthListen: flags.healthListen,
      metricsListen: flags.metricsListen,
      agentListen: flags.agentListen,
    },
  });
}

/** Collects repeatable options (--selector a --selector b). */
export const collect = (value: string, previous: string[] = []) => [...previous, value];
