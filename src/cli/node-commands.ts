import type { Command } from 'commander';
import { parseDuration } from '../common/duration.js';
import { withAdmin } from './admin-commands.js';
import { collect, withAdminSocket, withJson, type CommonFlags } from './common-options.js';
import { emit, isoSeconds, table } from './output.js';

function nodeText(n: any): string {
  return table([
    ['Node', n.name],
    ['SPIFFE ID', n.spiffe_id],
    ['State', n.state + (n.evicted_at > 0 ? ` (since ${isoSeconds(n.evicted_at)})` : '')],
    ['Attestation', n.attestation],
    ['Task agents', n.task_agents.join(' ') || '-'],
    ['Created', isoSeconds(n.created_at)],
    ['Last seen', isoSeconds(n.last_seen_at)],
    ['Node SVID expires', isoSeconds(n.svid_expires_at)],
  ]);
}

/** "a,b" and repeated flags alike. */
const agentList = (values: string[] = []) => values.flatMap((v) => v.split(',')).map((v) => v.trim()).filter((v) => v !== '');

/** `agentid token generate` and `agentid node list|show|evict` (admin). */
export function registerNodeCommands(program: Command): void {
  const token = program.command('token').description('one-time join tokens for per-host agents (admin)');
  withAdminSocket(token.command('generate'))
    .description('print a one-time join token for `agentid agent --join-token` (its only stdout line)')
    .requiredOption('--node <name>', 'the node name the agent attests as (spiffe://<td>/agentid/node/<name>)')
    .option('--ttl <duration>', 'how long the token may be used (default 1h, at most 7d)', '1h')
    .option('--task-agents <a,b>', 'agent namespaces whose tasks this node\'s agent may start for local orchestrators', collect)
    .action((flags: CommonFlags & { node: string; ttl: string; taskAgents?: string[] }) =>
      withAdmin(flags, async (c) => {
        const ttlSeconds = Math.ceil(parseDuration(flags.ttl, '--ttl') / 1000);
        const t = await c.call('GenerateJoinToken', { node: flags.node, ttl_seconds: ttlSeconds, task_agents: agentList(flags.taskAgents) });
        // The token is the only stdout line, so `T=$(agentid token generate --node web-1)` works.
        process.stdout.write(`${t.token}\n`);
        process.stderr.write(`join token for node ${t.node}, valid until ${isoSeconds(Number(t.expires_at))}, usable once\n`);
      }));

  const node = program.command('node').description('per-host agents (admin)');
  withJson(withAdminSocket(node.command('list')))
    .description('list nodes')
    .action((flags: CommonFlags) =>
      withAdmin(flags, async (c) => {
        const { nodes } = await c.call('ListNodes', {});
        emit(!!flags.json, nodes, () =>
          nodes.length === 0 ? 'no nodes' : table([['NODE', 'STATE', 'ATTESTATION', 'LAST SEEN', 'SPIFFE ID'], ...nodes.map((n: any) => [n.name, n.state, n.attestation, isoSeconds(Number(n.last_seen_at)), n.spiffe_id])]));
      }));
  withJson(withAdminSocket(node.command('show')))
    .argument('<name>')
    .description('show one node')
    .action((name: string, flags: CommonFlags) =>
      withAdmin(flags, async (c) => {
        const n = await c.call('GetNode', { name });
        emit(!!flags.json, n, () => nodeText(n));
      }));
  withJson(withAdminSocket(node.command('evict')))
    .argument('<name>')
    .option('--reason <reason>', 'why (recorded in the audit trail)')
    .description('evict a node: its SVID is revoked, its tasks are revoked, its agent is told to stop serving')
    .action((name: string, flags: CommonFlags & { reason?: string }) =>
      withAdmin(flags, async (c) => {
        const n = await c.call('EvictNode', { name, reason: flags.reason ?? '' });
        emit(!!flags.json, n, () => `${n.name}: ${n.state}`);
      }));
  withJson(withAdminSocket(node.command('task-agents')))
    .argument('<name>')
    .argument('[agents...]', 'the agent namespaces whose tasks the node may start (the whole list; none: it may start no tasks)')
    .option('--reason <reason>', 'why (recorded in the audit trail)')
    .description('set the agent namespaces a node may start tasks for (an x509pop node has none until set)')
    .action((name: string, agents: string[], flags: CommonFlags & { reason?: string }) =>
      withAdmin(flags, async (c) => {
        const n = await c.call('SetNodeTaskAgents', { name, task_agents: agents, reason: flags.reason ?? '' });
        emit(!!flags.json, n, () => `${n.name}: task agents ${n.task_agents.length > 0 ? n.task_agents.join(', ') : '(none)'}`);
      }));
}
