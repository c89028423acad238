/**
 * Example: an agent-side client that calls a service with mutual TLS using its X.509-SVID.
 *
 *   node --import tsx examples/agent-client.ts --url https://127.0.0.1:8443/ --server-id spiffe://example.org/service/tasks
 *        [--socket unix:///path/workload.sock] [--spiffe-id <own id>] [--loop [--interval-ms 200]]
 *
 * Run it as a task (`agentid run --agent coder --task t-1 -- node --import tsx examples/agent-client.ts ...`)
 * and its default SVID (svids[0]) is the task identity. The server must present exactly --server-id.
 * One call: prints the response body and exits 0 on HTTP 200, else prints the error to stderr and exits 1.
 * --loop: one JSON line per call on stdout ({"ok","as","status","body"} or {"ok":false,"as","error"}) until SIGTERM.
 */
import https from 'node:https';
import { parseArgs } from 'node:util';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { X509Source, type X509Svid } from '../src/client/index.js';
import { SpiffeId } from '../src/spiffe/index.js';
import { authorizeId, clientTlsOptions } from '../src/verify/index.js';

const USAGE =
  'usage: agent-client --url <https://host:port/path> --server-id <spiffe id> [--socket <unix:///path>] [--spiffe-id <own id>] [--loop] [--interval-ms <n>] [--wait-ms <n>]';

function usage(problem: string): never {
  process.stderr.write(`agent-client: ${problem}\n${USAGE}\n`);
  process.exit(2);
}

function positiveInt(text: string, flag: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n <= 0) usage(`${flag} must be a positive integer, not "${text}"`);
  return n;
}

function parseFlags() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        url: { type: 'string' },
        'server-id': { type: 'string' },
        socket: { type: 'string' },
        'spiffe-id': { type: 'string' },
        loop: { type: 'boolean', default: false },
        'interval-ms': { type: 'string', default: '200' },
        'wait-ms': { type: 'string', default: '30000' },
        'timeout-ms': { type: 'string', default: '5000' },
      },
      strict: true,
    }));
  } catch (err) {
    usage((err as Error).message);
  }
  if (!values.url) usage('--url is required');
  if (!values['server-id']) usage('--server-id is required');
  let url: URL;
  try {
    url = new URL(values.url);
  } catch {
    usage(`--url "${values.url}" is not a URL`);
  }
  if (url.protocol !== 'https:') usage('--url must be https://');
  let serverId: SpiffeId;
  let ownId: string | undefined;
  try {
    serverId = SpiffeId.parse(values['server-id']);
    ownId = values['spiffe-id'] === undefined ? undefined : SpiffeId.parse(values['spiffe-id']).toString();
  } catch (err) {
    usage((err as Error).message);
  }
  return {
    url,
    serverId,
    ownId,
    socket: values.socket,
    loop: values.loop,
    intervalMs: positiveInt(values['interval-ms'], '--interval-ms'),
    waitMs: positiveInt(values['wait-ms'], '--wait-ms'),
    timeoutMs: positiveInt(values['timeout-ms'], '--timeout-ms'),
  };
}

interface CallResult {
  status: number;
  body: string;
}

function get(url: URL, agent: https.Agent, timeoutMs: number): Promise<CallResult> {
  return new Promise((resolve, reject) => {
    const req = https.get(url, { agent, timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no response within ${timeoutMs} ms`)));
    req.on('error', reject);
  });
}

async function main(): Promise<void> {
  const flags = parseFlags();
  const log = pino({ base: { app: 'agent-client' } }, pino.destination({ dest: 2, sync: true }));

  const picker = flags.ownId === undefined ? undefined : (svids: readonly X509Svid[]) => svids.find((s) => s.spiffeId === flags.ownId);
  let source: X509Source;
  try {
    source = await X509Source.create({ socketPath: flags.socket, picker, signal: AbortSignal.timeout(flags.waitMs) });
  } catch (err) {
    process.stderr.write(`agent-client: no X.509-SVID from the Workload API within ${flags.waitMs} ms: ${(err as Error).message}\n`);
    process.exit(1);
  }
  source.on('watchError', (err) => log.warn({ code: err.code, err: err.message }, 'Workload API stream interrupted; retrying'));

  const mtls = clientTlsOptions({ source, authorize: authorizeId(flags.serverId), logger: log });
  // No keep-alive: each call is a new handshake with the SVID held at that moment, so a rotation
  // or a revocation shows on the very next call instead of hiding behind a pooled connection.
  const agent = mtls.agent({ keepAlive: false });
  const currentId = () => {
    try {
      return source.getX509Svid().spiffeId;
    } catch {
      return null;
    }
  };

  const shutdown = async () => {
    agent.destroy();
    mtls.close();
    await source.close();
  };

  if (!flags.loop) {
    try {
      const res = await get(flags.url, agent, flags.timeoutMs);
      if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${res.body.trim()}`);
      process.stdout.write(res.body.endsWith('\n') ? res.body : `${res.body}\n`);
    } catch (err) {
      process.stderr.write(`agent-client: call to ${flags.url.href} as ${currentId() ?? '(no usable SVID)'} failed: ${(err as Error).message}\n`);
      process.exitCode = 1;
    }
    await shutdown();
    return;
  }

  const stop = new AbortController();
  process.once('SIGTERM', () => stop.abort());
  process.once('SIGINT', () => stop.abort());
  while (!stop.signal.aborted) {
    const as = currentId();
    const line = await get(flags.url, agent, flags.timeoutMs).then(
      (res) => ({ ok: res.status === 200, as, status: res.status, body: res.body.trim() }),
      (err: Error) => ({ ok: false, as, error: err.message }),
    );
    process.stdout.write(`${JSON.stringify(line)}\n`);
    await sleep(flags.intervalMs, undefined, { signal: stop.signal }).catch(() => undefined);
  }
  await shutdown();
}

await main();
