import type { Command } from 'commander';
import { systemClock } from '../common/system-clock.js';
import { createLogger } from '../common/logger.js';
import { loadAgentConfig, type AgentFlags } from '../agent/config.js';
import { startAgent, type RunningAgent } from '../agent/agent.js';

/** Exit status of an agent whose node was evicted (distinct from a crash or a bad start). */
export const EVICTED_EXIT_CODE = 3;

export function registerAgentCommand(program: Command): void {
  program
    .command('agent')
    .description('run a per-host agent: the Workload API on this host, identities from an agentid server (SIGINT/SIGTERM stop it)')
    .option('--config <file>', 'agent YAML config file (keys: data_dir, server, join_token, trust_bundle, x509pop {cert, key}, socket, admin_socket, orchestrators, admin_uids, health_listen, metrics_listen, log_level, task_buffer)')
    .option('--data-dir <dir>', 'agent data directory: node key and SVID, replica, sockets')
    .option('--server <host:port>', 'the server\'s agent listener (agentid server --agent-listen)')
    .option('--join-token <token>', 'one-time join token (agentid token generate --node NAME); only needed until the node has an SVID (env AGENTID_JOIN_TOKEN)')
    .option('--trust-bundle <file>', 'PEM roots of the trust domain, to verify the server at first contact')
    .option('--x509pop-cert <file>', 'attest with this host certificate (PEM) instead of a join token')
    .option('--x509pop-key <file>', 'the host certificate\'s private key (PEM, mode 0600)')
    .option('--socket <path>', 'Workload API socket (default <data-dir>/workload.sock)')
    .option('--admin-socket <path>', 'admin socket for agentid run on this host (default <data-dir>/admin.sock)')
    .option('--health-listen <host:port>', 'serve GET /live and /ready (ready only while connected to the server)')
    .option('--metrics-listen <host:port>', 'serve GET /metrics (Prometheus) here; may equal --health-listen')
    .option('--log-level <level>', 'log level (trace, debug, info, warn, error)')
    .action(async (flags: AgentFlags) => {
      const config = loadAgentConfig({ ...flags, joinToken: flags.joinToken ?? process.env.AGENTID_JOIN_TOKEN });
      const logger = createLogger({ level: config.logLevel });
      // Signals are taken before the agent starts: a SIGTERM during start-up still ends in a clean stop.
      let stopRequested!: () => void;
      const stopSignal = new Promise<void>((resolve) => (stopRequested = resolve));
      for (const signal of ['SIGINT', 'SIGTERM'] as const) {
        process.once(signal, () => {
          logger.info({ signal }, 'stopping');
          stopRequested();
        });
      }
      const agent: RunningAgent = await startAgent(config, { clock: systemClock, logger });
      const outcome = await Promise.race([stopSignal.then(() => undefined), agent.evicted]);
      await agent.stop();
      if (outcome !== undefined) {
        process.stderr.write(`agentid agent: node ${agent.node} was evicted by the agentid server (${outcome}); its identities are dropped. A new join token is needed to rejoin.\n`);
        process.exitCode = EVICTED_EXIT_CODE;
      }
    });
}
