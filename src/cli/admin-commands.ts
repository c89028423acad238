import { spawn } from 'node:child_process';
import type { Command } from 'commander';
import { parseDuration } from '../common/duration.js';
import { invalidArgument, isAgentIdError } from '../common/errors.js';
import { constants } from 'node:os';
import { checkSelectorKind, parseSelector } from '../spiffe/selector.js';
import { AdminClient, ADMIN_SOCKET_ENV, ADMIN_URL_ENV, fetchCallerSvid, parseAdminUrl } from './admin-client.js';
import { collect, configFrom, withAdminSocket, withJson, type AdminTransportFlags, type CommonFlags } from './common-options.js';
import { emit, isoSeconds, table } from './output.js';

function adminSocketPath(flags: CommonFlags): string {
  if (flags.adminSocket) return flags.adminSocket;
  if (process.env[ADMIN_SOCKET_ENV]) return process.env[ADMIN_SOCKET_ENV]!;
  return configFrom(flags).adminSocket;
}

/** --socket > SPIFFE_ENDPOINT_SOCKET > the configured server's socket. */
function workloadSocketPath(flags: CommonFlags): string {
  return flags.socket ?? process.env.SPIFFE_ENDPOINT_SOCKET ?? configFrom(flags).workloadSocket;
}

/**
 * The admin URL, or undefined for the Unix socket. A flag beats the environment; naming both
 * transports at the same level is a usage error rather than a silent pick.
 */
function adminUrl(flags: CommonFlags & AdminTransportFlags): string | undefined {
  if (flags.adminUrl !== undefined && flags.adminSocket !== undefined) throw invalidArgument('--admin-url and --admin-socket are mutually exclusive');
  if (flags.adminUrl !== undefined) return flags.adminUrl;
  if (flags.adminSocket !== undefined) return undefined;
  const envUrl = process.env[ADMIN_URL_ENV] || undefined;
  if (envUrl && process.env[ADMIN_SOCKET_ENV]) throw invalidArgument(`${ADMIN_URL_ENV} and ${ADMIN_SOCKET_ENV} are both set; unset one or pass --admin-url or --admin-socket`);
  return envUrl;
}

async function adminClient(flags: CommonFlags & AdminTransportFlags): Promise<AdminClient> {
  const url = adminUrl(flags);
  if (url === undefined) {
    for (const [flag, value] of [['--admin-server-id', flags.adminServerId], ['--admin-spiffe-id', flags.adminSpiffeId]] as const) {
      if (value !== undefined) throw invalidArgument(`${flag} applies only with --admin-url (or ${ADMIN_URL_ENV})`);
    }
    return new AdminClient(adminSocketPath(flags));
  }
  parseAdminUrl(url); // a usage error before any Workload API call
  const { svid, crls } = await fetchCallerSvid({ socketPath: workloadSocketPath(flags), spiffeId: flags.adminSpiffeId });
  return new AdminClient({ url, svid, crls, serverId: flags.adminServerId });
}

export async function withAdmin<T>(flags: CommonFlags & AdminTransportFlags, f: (client: AdminClient) => Promise<T>): Promise<T> {
  const client = await adminClient(flags);
  try {
    return await f(client);
  } finally {
    client.close();
  }
}

const seconds = (text: string | undefined, what: string) => (text === undefined ? 0 : Math.ceil(parseDuration(text, what) / 1000));

/** "k=v" pairs; the first "=" splits. */
function parseMeta(pairs: string[] = []): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of pairs) {
    const eq = pair.indexOf('=');
    if (eq <= 0) throw invalidArgument(`--meta "${pair}" must be key=value`);
    out[pair.slice(0, eq)] = pair.slice(eq + 1);
  }
  return out;
}

interface EntryFlags extends CommonFlags {
  spiffeId?: string;
  selector?: string[];
  x509Ttl?: string;
  jwtTtl?: string;
  hint?: string;
  dnsName?: string[];
  federatesWith?: string[];
  includeTasks?: boolean;
  expiresAt?: string;
  node?: string;
}

function entryInput(flags: EntryFlags) {
  if (!flags.spiffeId) throw invalidArgument('--spiffe-id is required');
  const selectors = flags.selector ?? [];
  for (const s of selectors) checkSelectorKind(parseSelector(s)); // a usage error (exit 2) before calling the server
  let expiresAt = 0;
  if (flags.expiresAt) {
    const t = Date.parse(flags.expiresAt);
    if (Number.isNaN(t)) throw invalidArgument(`--expires-at "${flags.expiresAt}" is not an ISO 8601 time`);
    expiresAt = Math.floor(t / 1000);
  }
  return {
    spiffe_id: flags.spiffeId,
    selectors,
    x509_ttl_seconds: seconds(flags.x509Ttl, '--x509-ttl'),
    jwt_ttl_seconds: seconds(flags.jwtTtl, '--jwt-ttl'),
    hint: flags.hint ?? '',
    dns_names: flags.dnsName ?? [],
    federates_with: flags.federatesWith ?? [],
    include_tasks: flags.includeTasks === true,
    expires_at: expiresAt,
    node: flags.node ?? '',
  };
}

const entryOptions = (cmd: Command) =>
  cmd
    .option('--spiffe-id <id>', 'SPIFFE ID to issue')
    .option('--selector <type:key:value>', 'selector the caller must have (repeatable, all must match)', collect)
    .option('--x509-ttl <duration>', 'X.509-SVID lifetime (default from config, 15m)')
    .option('--jwt-ttl <duration>', 'JWT-SVID lifetime (default from config, 5m)')
    .option('--hint <hint>', 'hint delivered with the SVID')
    .option('--dns-name <name>', 'DNS SAN (repeatable)', collect)
    .option('--federates-with <td>', 'deliver this foreign trust domain\'s bundle (repeatable)', collect)
    .option('--expires-at <time>', 'ISO 8601 time after which the entry no longer matches')
    .option('--include-tasks', 'also serve processes bound to a task (by default they receive only their task identity)')
    .option('--no-include-tasks', 'serve no process bound to a task (the default)')
    .option('--node <name>', 'serve only on this node\'s agent, never on the server\'s socket ("" on update: everywhere again)');

function entryText(e: any): string {
  return table([
    ['Entry ID', e.id],
    ['SPIFFE ID', e.spiffe_id],
    ['Selectors', e.selectors.join(' ')],
    ['X.509 TTL', `${e.x509_ttl_seconds}s`],
    ['JWT TTL', `${e.jwt_ttl_seconds}s`],
    ['Hint', e.hint || '-'],
    ['DNS names', e.dns_names.join(' ') || '-'],
    ['Federates with', e.federates_with.join(' ') || '-'],
    ['Serves tasks', e.include_tasks ? 'yes' : 'no'],
    ['Expires', isoSeconds(e.expires_at)],
    ['Node', e.node || '- (every agent and the server)'],
    ['Revision', String(e.revision)],
  ]);
}

function taskText(t: any): string {
  return table([
    ['Task', `${t.agent}/${t.id}`],
    ['SPIFFE ID', t.spiffe_id],
    ['State', t.state + (t.end_reason ? ` (${t.end_reason})` : '')],
    ['Bound to', t.binding_kind === 'process' ? `pid ${t.pid} (start ${t.start_time || 'pinned by the node agent'})${t.descendants ? ' and descendants' : ''}` : `cgroup ${t.cgroup}`],
    ['Host', t.node ? `node ${t.node}` : 'the server'],
    ['Created', `${isoSeconds(t.created_at)} by ${t.created_by}`],
    ['Expires', isoSeconds(t.expires_at)],
    ['Ended', isoSeconds(t.ended_at)],
    ['Metadata', Object.entries(t.metadata ?? {}).map(([k, v]) => `${k}=${v}`).join(' ') || '-'],
    ['Live serials', t.live_serials.join(' ') || '-'],
    ['Issuances', String(t.issuance_count)],
  ]);
}

const taskRef = (ref: string, agent?: string) => {
  const slash = ref.indexOf('/');
  return slash > 0 && !agent ? { agent: ref.slice(0, slash), id: ref.slice(slash + 1) } : { agent: agent ?? '', id: ref };
};

export function registerAdminCommands(program: Command): void {
  const entry = program.command('entry').description('registration entries (admin)');
  withJson(withAdminSocket(entryOptions(entry.command('create'))))
    .description('create a registration entry; prints its ID')
    .action((flags: EntryFlags) =>
      withAdmin(flags, async (c) => {
        const e = await c.call('CreateEntry', { entry: entryInput(flags) });
        emit(!!flags.json, e, () => e.id);
      }));
  withJson(withAdminSocket(entry.command('list')))
    .description('list registration entries')
    .action((flags: CommonFlags) =>
      withAdmin(flags, async (c) => {
        const { entries } = await c.call('ListEntries', {});
        emit(!!flags.json, entries, () =>
          entries.length === 0 ? 'no entries' : table([['ID', 'SPIFFE ID', 'SELECTORS'], ...entries.map((e: any) => [e.id, e.spiffe_id, e.selectors.join(' ')])]));
      }));
  withJson(withAdminSocket(entry.command('show')))
    .argument('<id>')
    .description('show one entry')
    .action((id: string, flags: CommonFlags) =>
      withAdmin(flags, async (c) => {
        const e = await c.call('GetEntry', { id });
        emit(!!flags.json, e, () => entryText(e));
      }));
  withJson(withAdminSocket(entryOptions(entry.command('update'))))
    .argument('<id>')
    .option('--revision <n>', 'fail unless the entry is still at this revision')
    .description('replace an entry\'s fields (unset options keep their current value)')
    .action((id: string, flags: EntryFlags & { revision?: string }) =>
      withAdmin(flags, async (c) => {
        const current = await c.call('GetEntry', { id });
        const merged: EntryFlags = {
          ...flags,
          spiffeId: flags.spiffeId ?? current.spiffe_id,
          selector: flags.selector ?? current.selectors,
          hint: flags.hint ?? current.hint,
          dnsName: flags.dnsName ?? current.dns_names,
          federatesWith: flags.federatesWith ?? current.federates_with,
          includeTasks: flags.includeTasks ?? current.include_tasks,
          x509Ttl: flags.x509Ttl ?? `${current.x509_ttl_seconds}s`,
          jwtTtl: flags.jwtTtl ?? `${current.jwt_ttl_seconds}s`,
          expiresAt: flags.expiresAt ?? (current.expires_at > 0 ? new Date(current.expires_at * 1000).toISOString() : undefined),
          node: flags.node ?? current.node,
        };
        const e = await c.call('UpdateEntry', { id, entry: entryInput(merged), expected_revision: Number(flags.revision ?? current.revision) });
        emit(!!flags.json, e, () => entryText(e));
      }));
  withJson(withAdminSocket(entry.command('delete')))
    .argument('<id>')
    .description('delete an entry; its SPIFFE ID is revoked unless another entry still issues it')
    .action((id: string, flags: CommonFlags) =>
      withAdmin(flags, async (c) => {
        const e = await c.call('DeleteEntry', { id });
        emit(!!flags.json, e, () => `deleted ${e.id} (${e.spiffe_id})`);
      }));

  const task = program.command('task').description('per-task identities');
  withJson(withAdminSocket(task.command('start')))
    .description('start a task identity spiffe://<td>/agent/<agent>/task/<task> bound to a process or cgroup')
    .requiredOption('--agent <agent>', 'agent name')
    .requiredOption('--task <task>', 'task ID (never reused)')
    .option('--pid <pid>', 'bind to this process (pid + start time)')
    .option('--cgroup <path>', 'bind to this cgroup v2 path (and its sub-cgroups)')
    .option('--descendants', 'with --pid: also issue to descendants of the process')
    .option('--ttl <duration>', 'task lifetime (default 30m, capped by policy)')
    .option('--meta <k=v>', 'audit metadata (repeatable)', collect)
    .option('--node <name>', 'bind on that node\'s host, not the server\'s (admin only)')
    .option('--start-time <ticks>', 'with --node and --pid: the process start time from /proc/<pid>/stat on that host (omitted: the node agent pins it when it first sees the task)')
    .action((flags: CommonFlags & { agent: string; task: string; pid?: string; cgroup?: string; descendants?: boolean; ttl?: string; meta?: string[]; node?: string; startTime?: string }) =>
      withAdmin(flags, async (c) => {
        const pid = flags.pid === undefined ? 0 : Number(flags.pid);
        if (flags.pid !== undefined && (!Number.isInteger(pid) || pid <= 0)) throw invalidArgument(`--pid "${flags.pid}" is not a process ID`);
        const t = await c.call('StartTask', {
          agent: flags.agent, id: flags.task, pid, cgroup: flags.cgroup ?? '', descendants: !!flags.descendants,
          ttl_seconds: seconds(flags.ttl, '--ttl'), metadata: parseMeta(flags.meta),
          node: flags.node ?? '', start_time: flags.startTime ?? '',
        });
        emit(!!flags.json, t, () => t.spiffe_id);
      }));
  for (const [name, method, about] of [['end', 'EndTask', 'end a task; its SPIFFE ID is revoked'], ['revoke', 'RevokeTask', 'revoke a task (admin); open streams drop it and CRLs list its serials']] as const) {
    withJson(withAdminSocket(task.command(name)))
      .argument('<task>', 'task ID, or agent/task')
      .option('--agent <agent>', 'agent name')
      .option('--reason <reason>', 'why (recorded in the audit trail)')
      .description(about)
      .action((ref: string, flags: CommonFlags & { agent?: string; reason?: string }) =>
        withAdmin(flags, async (c) => {
          if (name === 'revoke' && !flags.reason) throw invalidArgument('--reason is required for task revoke');
          const t = await c.call(method, { ...taskRef(ref, flags.agent), reason: flags.reason ?? '' });
          emit(!!flags.json, t, () => `${t.agent}/${t.id}: ${t.state}`);
        }));
  }
  withJson(withAdminSocket(task.command('list')))
    .option('--agent <agent>', 'only this agent')
    .option('--state <state>', 'active, ended, revoked or expired')
    .description('list tasks you may see')
    .action((flags: CommonFlags & { agent?: string; state?: string }) =>
      withAdmin(flags, async (c) => {
        const { tasks } = await c.call('ListTasks', { agent: flags.agent ?? '', state: flags.state ?? '' });
        emit(!!flags.json, tasks, () =>
          tasks.length === 0 ? 'no tasks' : table([['AGENT/TASK', 'STATE', 'EXPIRES', 'SPIFFE ID'], ...tasks.map((t: any) => [`${t.agent}/${t.id}`, t.state, isoSeconds(t.expires_at), t.spiffe_id])]));
      }));
  withJson(withAdminSocket(task.command('show')))
    .argument('<task>', 'task ID, or agent/task')
    .option('--agent <agent>', 'agent name')
    .description('show a task: bound process, live SVID serials, issuance count, state')
    .action((ref: string, flags: CommonFlags & { agent?: string }) =>
      withAdmin(flags, async (c) => {
        const t = await c.call('GetTask', taskRef(ref, flags.agent));
        emit(!!flags.json, t, () => taskText(t));
      }));

  const revocations = program.command('revocations').description('the deny list');
  withJson(withAdminSocket(revocations.command('list')))
    .description('list revoked SPIFFE IDs')
    .action((flags: CommonFlags) =>
      withAdmin(flags, async (c) => {
        const { revocations: list } = await c.call('ListRevocations', {});
        emit(!!flags.json, list, () =>
          list.length === 0 ? 'no revocations' : table([['SPIFFE ID', 'REVOKED', 'UNTIL', 'BY', 'REASON'], ...list.map((r: any) => [r.spiffe_id, isoSeconds(r.revoked_at), isoSeconds(r.keep_until), r.revoked_by, r.reason])]));
      }));

  const webConsole = program.command('console').description('the web console (server started with --console-listen)');
  withAdminSocket(webConsole.command('login'))
    .description('print a one-time sign-in link for your role (admin or orchestrator); it works once, within a minute')
    .action((flags: CommonFlags) =>
      withAdmin(flags, async (c) => {
        const login = await c.call('CreateConsoleLogin', {});
        // The link is the only stdout line, so `open "$(agentid console login)"` works.
        process.stdout.write(`${login.url}\n`);
      }));

  withAdminSocket(program.command('run'))
    .description('run a command as a new task: binds it, sets SPIFFE_ENDPOINT_SOCKET, forwards signals, ends the task on exit')
    .requiredOption('--agent <agent>', 'agent name')
    .requiredOption('--task <task>', 'task ID')
    .option('--ttl <duration>', 'task lifetime')
    .option('--meta <k=v>', 'audit metadata (repeatable)', collect)
    .option('--no-descendants', 'issue to the command\'s own process only, not to its children')
    .argument('<command...>', 'command and arguments (after --)')
    .action((command: string[], flags: CommonFlags & { agent: string; task: string; ttl?: string; meta?: string[]; descendants: boolean }) =>
      runTask(command, flags));
}

/**
 * Starts the command in a held state (a shell waiting on a pipe, with PR_SET_PDEATHSIG so it dies
 * with us), binds the task to its pid and start time, then lets it exec the real command: the pid
 * and start time survive exec, so the task is bound before the command runs any code.
 */
async function runTask(command: string[], flags: CommonFlags & { agent: string; task: string; ttl?: string; meta?: string[]; descendants: boolean }): Promise<void> {
  const config = configFrom(flags);
  const socket = flags.socket ?? config.workloadSocket;
  await withAdmin(flags, async (client) => {
    const child = spawn('setpriv', ['--pdeathsig', 'KILL', '--', '/bin/sh', '-c', 'read -r _ <&3 && exec "$@"', 'agentid-run', ...command], {
      stdio: ['inherit', 'inherit', 'inherit', 'pipe'],
      env: { ...process.env, SPIFFE_ENDPOINT_SOCKET: `unix://${socket}` },
    });
    const gate = child.stdio[3] as NodeJS.WritableStream;
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
      child.on('exit', (code, signal) => resolve({ code, signal })));
    const forward = (signal: NodeJS.Signals) => () => child.kill(signal);
    for (const s of ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'] as const) process.on(s, forward(s));
    try {
      await client.call('StartTask', {
        agent: flags.agent, id: flags.task, pid: child.pid, cgroup: '', descendants: flags.descendants,
        ttl_seconds: seconds(flags.ttl, '--ttl'), metadata: parseMeta(flags.meta),
      });
    } catch (err) {
      child.kill('SIGKILL');
      throw err;
    }
    gate.end('go\n');
    const { code, signal } = await exited;
    try {
      await client.call('EndTask', { agent: flags.agent, id: flags.task, reason: signal ? `command killed by ${signal}` : `command exited with ${code}` });
    } catch (err) {
      // The server's liveness check may have ended it first, when the command exited.
      if (!isAgentIdError(err, 'failed_precondition')) {
        process.stderr.write(`agentid: could not end task ${flags.agent}/${flags.task}: ${(err as Error).message}\n`);
      }
    }
    process.exitCode = code ?? 128 + (signal ? (constants.signals[signal] ?? 9) : 9);
  });
}
