import { Option, type Command } from 'commander';
import { loadConfig, type Config } from '../config/index.js';

export interface CommonFlags {
  config?: string;
  dataDir?: string;
  trustDomain?: string;
  socket?: string;
  adminSocket?: string;
  logLevel?: string;
  logFormat?: string;
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

export const withAdminSocket = (cmd: Command) =>
  cmd
    .addOption(new Option('--admin-socket <path>', 'admin API socket (env AGENTID_ADMIN_SOCKET; default <data-dir>/admin.sock)'))
    .option('--data-dir <dir>', 'data directory whose admin socket to use (env AGENTID_DATA_DIR)')
    .option('--config <file>', 'YAML config file (env AGENTID_CONFIG)');

/** Flags > env > file > defaults, validated once (config/). */
export function configFrom(flags: CommonFlags): Config {
  return loadConfig({
    file: flags.config ?? process.env.AGENTID_CONFIG,
    env: process.env,
    flags: {
      trustDomain: flags.trustDomain,
      dataDir: flags.dataDir,
      socket: flags.socket,
      adminSocket: flags.adminSocket,
      logLevel: flags.logLevel,
      logFormat: flags.logFormat as 'json' | 'pretty' | undefined,
    },
  });
}

/** Collects repeatable options (--selector a --selector b). */
export const collect = (value: string, previous: string[] = []) => [...previous, value];
