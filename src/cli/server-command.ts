import type { Command } from 'commander';
import { Option } from 'commander';
import * as grpc from '@grpc/grpc-js';
import { systemClock } from '../common/system-clock.js';
import { createLogger } from '../common/logger.js';
import { workloadService } from '../common/proto.js';
import { configWarnings, type Config } from '../config/index.js';
import { startServer, type RunningServer } from '../server.js';
import { configFrom, withConfigOptions, type CommonFlags } from './common-options.js';
import { parseRecover } from '../integrity/index.js';

interface ServerFlags extends CommonFlags {
  healthListen?: string;
  metricsListen?: string;
  recover: string[];
}

const collectRecover = (value: string, previous: string[]) => [...previous, value];

/** What a person starting the server on a terminal needs next: where it listens and what to try. */
export function banner(config: Config, server: RunningServer, pid: number): string {
  const td = config.trustDomain;
  const dataDirFlag = `--data-dir ${config.dataDir}`;
  const lines = [
    `agentid server ${pid} is up: trust domain ${td}`,
    `  Workload API  ${server.workloadSocket}   (SPIFFE_ENDPOINT_SOCKET=unix://${server.workloadSocket})`,
    `  Admin API     ${server.adminSocket}`,
    ...(server.healthUrl ? [`  Health        ${server.healthUrl}/ready`] : []),
    ...(server.metricsUrl ? [`  Metrics       ${server.metricsUrl}/metrics`] : []),
    ...(server.bundleEndpointUrl ? [`  Bundle        ${server.bundleEndpointUrl}`] : []),
    ...(server.consoleUrl ? [`  Console       ${server.consoleUrl}`] : []),
    '',
    'Next, in another terminal:',
    `  npx agentid entry create ${dataDirFlag} --spiffe-id spiffe://${td}/myservice --selector unix:uid:${process.getuid?.() ?? 1000}`,
    `  npx agentid svid fetch --socket ${server.workloadSocket}`,
    `  npx agentid healthcheck --socket ${server.workloadSocket}`,
    '',
    `Ctrl-C or SIGTERM stops it; SIGHUP (kill -HUP ${pid}) reloads the log level and limits and re-fetches federated bundles.`,
    '',
  ];
  return lines.join('\n');
}

/** Pretty logs only for a person at a terminal; a pipe, a file or journald gets JSON lines. */
function prettyLogs(config: Config): boolean {
  if (config.log.format !== 'auto') return config.log.format === 'pretty';
  return process.stdout.isTTY === true && process.stderr.isTTY === true;
}

export function registerServerCommand(program: Command): void {
  withConfigOptions(program.command('server'))
    .description('run the agentid server in the foreground (Workload API + admin API); SIGINT/SIGTERM stop it, SIGHUP reloads')
    .option('--socket <path>', 'Workload API socket (default <data-dir>/workload.sock)')
    .option('--admin-socket <path>', 'admin API socket (default <data-dir>/admin.sock)')
    .option('--datastore <url>', 'sqlite (default) or postgresql://... shared by several servers (env AGENTID_DATASTORE; keep passwords in PGPASSWORD or ~/.pgpass)')
    .option('--log-level <level>', 'log level (trace, debug, info, warn, error)')
    .addOption(new Option('--log-format <format>', 'json, pretty, or auto (pretty on a terminal)'))
    .option('--console-listen <host:port>', 'serve the web console over HTTPS here, e.g. 127.0.0.1:8445 (env AGENTID_CONSOLE_LISTEN)')
    .option('--health-listen <host:port>', 'serve GET /live and /ready here (env AGENTID_HEALTH_LISTEN)')
    .option('--metrics-listen <host:port>', 'serve GET /metrics (Prometheus) here; may equal --health-listen (env AGENTID_METRICS_LISTEN)')
    .option('--agent-listen <host:port>', 'serve per-host agents (agentid agent) over TLS here, e.g. 0.0.0.0:8446 (env AGENTID_AGENT_LISTEN)')
    .option('--recover <parts>', 'start although the database, ca or audit trail (comma list) was lost or replaced; recorded in the audit trail', collectRecover, [] as string[])
    .action(async (flags: ServerFlags) => {
      const config = configFrom(flags);
      const recover = parseRecover(flags.recover);
      const pretty = prettyLogs(config);
      const logger = createLogger({ level: config.log.level, pretty, colorize: pretty && process.stderr.isTTY === true });
      for (const warning of configWarnings(config)) logger.warn({ warning }, 'configuration warning');
      // Signals are taken before the server starts: a SIGTERM during startup (a service manager
      // giving up, Ctrl-C) still ends in a clean stop rather than Node's default exit.
      let server: RunningServer | undefined;
      let stopping: string | undefined;
      let reloading = Promise.resolve();
      let stopped!: () => void;
      const done = new Promise<void>((resolve) => (stopped = resolve));
      const onHup = () => {
        if (!server) return logger.warn('SIGHUP during startup: nothing to reload yet');
        const running = server;
        // A config that no longer parses keeps the running one: say why and carry on.
        reloading = reloading.then(async () => {
          try {
            await running.reload(configFrom(flags));
          } catch (err) {
            logger.error({ err: err instanceof Error ? err.message : String(err) }, 'SIGHUP: configuration not reloaded; the running one stays');
          }
        });
      };
      const stop = (signal: string) => {
        if (stopping) return;
        stopping = signal;
        logger.info({ signal }, 'stopping');
        process.off('SIGHUP', onHup);
        server?.stop().then(stopped, stopped);
      };
      process.once('SIGINT', () => stop('SIGINT'));
      process.once('SIGTERM', () => stop('SIGTERM'));
      process.on('SIGHUP', onHup);
      server = await startServer(config, { clock: systemClock, logger, recover });
      if (stopping) server.stop().then(stopped, stopped);
      else if (process.stdout.isTTY) process.stdout.write(banner(config, server, process.pid));
      await done;
    });
}

/**
 * `agentid healthcheck`: exit 0 only when the Workload API answers a real call. FetchJWTBundles
 * runs the server's whole request path (header check, attestation, identity lookup); an answer
 * of "no identity" for this caller still proves the API works.
 */
export function registerHealthcheckCommand(program: Command): void {
  program
    .command('healthcheck')
    .description('exit 0 when the Workload API answers a real call (for container and systemd health checks), 1 otherwise')
    .option('--socket <path>', 'Workload API socket (env SPIFFE_ENDPOINT_SOCKET; default <data-dir>/workload.sock)')
    .option('--data-dir <dir>', 'data directory of the server (for its default socket)')
    .option('--timeout <ms>', 'give up after this many milliseconds', '3000')
    .option('--verbose', 'say what answered')
    .action(async (flags: { socket?: string; dataDir?: string; timeout: string; verbose?: boolean }) => {
      const socket = (flags.socket ?? process.env.SPIFFE_ENDPOINT_SOCKET ?? configFrom({ dataDir: flags.dataDir }).workloadSocket).replace(/^unix:(\/\/)?/, '');
      const timeoutMs = Number(flags.timeout);
      const verdict = await probeWorkloadApi(socket, Number.isFinite(timeoutMs) && timeoutMs > 0 ? timeoutMs : 3000);
      if (verdict.ok) {
        if (flags.verbose) process.stdout.write(`ok: ${verdict.detail}\n`);
        return;
      }
      process.stderr.write(`agentid healthcheck: Workload API at ${socket} is not healthy: ${verdict.detail}\n`);
      process.exitCode = 1;
    });
}

/** One FetchJWTBundles call: OK or PERMISSION_DENIED (no identity for this caller) are answers; anything else is not. */
export function probeWorkloadApi(socket: string, timeoutMs: number): Promise<{ ok: boolean; detail: string }> {
  const Ctor = workloadService();
  const client = new Ctor(`unix://${socket}`, grpc.credentials.createInsecure()) as unknown as grpc.Client & {
    FetchJWTBundles(req: object, md: grpc.Metadata, opts: grpc.CallOptions): grpc.ClientReadableStream<unknown>;
  };
  const md = new grpc.Metadata();
  md.set('workload.spiffe.io', 'true');
  return new Promise((resolve) => {
    let done = false;
    const finish = (ok: boolean, detail: string) => {
      if (done) return;
      done = true;
      stream.cancel();
      client.close();
      resolve({ ok, detail });
    };
    const stream = client.FetchJWTBundles({}, md, { deadline: systemClock.now() + timeoutMs });
    stream.on('data', () => finish(true, 'the Workload API sent this caller its JWT bundles'));
    stream.on('error', (err: grpc.ServiceError) => {
      if (err.code === grpc.status.PERMISSION_DENIED) finish(true, 'the Workload API answered (no identity for this caller)');
      else if (err.code === grpc.status.DEADLINE_EXCEEDED) finish(false, `no answer within ${timeoutMs} ms`);
      else if (err.code === grpc.status.UNAVAILABLE) finish(false, 'cannot connect (is the server running, and is this the right socket?)');
      else finish(false, `unexpected answer ${grpc.status[err.code] ?? err.code}`);
    });
    stream.on('end', () => finish(false, 'the stream ended without an answer'));
  });
}
