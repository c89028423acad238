/**
 * Example: an internal HTTPS service that only the task identities of one agent may call.
 *
 *   node --import tsx examples/task-service.ts --agent coder [--trust-domain example.org]
 *        [--socket unix:///path/workload.sock] [--spiffe-id <own id>] [--host 127.0.0.1] [--port 8443]
 *
 * Its own X.509-SVID comes from the Workload API (X509Source follows rotations): the one named by
 * --spiffe-id, else the default (svids[0]), which for a Unix user with several entries is the
 * oldest entry's identity, not necessarily the service's. Every client must
 * present an SVID of spiffe://<td>/agent/<agent>/task/<task> that chains to the trust bundle and is
 * not on a CRL. Prints `listening <port>` as its first stdout line; logs JSON lines to stderr,
 * one warning per refusal with a stable `reason`.
 */
import https from 'node:https';
import type { Socket } from 'node:net';
import type tls from 'node:tls';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { X509Source, type X509Svid } from '../src/client/index.js';
import { SpiffeId } from '../src/spiffe/index.js';
import { authorizeTaskOf, isVerificationError, serverTlsOptions } from '../src/verify/index.js';

const USAGE = 'usage: task-service --agent <name> [--trust-domain <td>] [--socket <unix:///path>] [--spiffe-id <own id>] [--host <addr>] [--port <n>] [--wait-ms <n>]';

function usage(problem: string): never {
  process.stderr.write(`task-service: ${problem}\n${USAGE}\n`);
  process.exit(2);
}

function parseFlags() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        agent: { type: 'string' },
        'trust-domain': { type: 'string' },
        socket: { type: 'string' },
        'spiffe-id': { type: 'string' },
        host: { type: 'string', default: '127.0.0.1' },
        port: { type: 'string', default: '8443' },
        'wait-ms': { type: 'string', default: '30000' },
      },
      strict: true,
    }));
  } catch (err) {
    usage((err as Error).message);
  }
  if (!values.agent) usage('--agent is required');
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) usage(`--port must be an integer from 0 to 65535, not "${values.port}"`);
  let ownId: string | undefined;
  try {
    ownId = values['spiffe-id'] === undefined ? undefined : SpiffeId.parse(values['spiffe-id']).toString();
  } catch (err) {
    usage(`--spiffe-id: ${(err as Error).message}`);
  }
  const waitMs = Number(values['wait-ms']);
  if (!Number.isInteger(waitMs) || waitMs <= 0) usage(`--wait-ms must be a positive integer, not "${values['wait-ms']}"`);
  return {
    agent: values.agent,
    trustDomain: values['trust-domain'] ?? process.env.AGENTID_TRUST_DOMAIN,
    // Unset means X509Source reads SPIFFE_ENDPOINT_SOCKET itself.
    socket: values.socket,
    ownId,
    host: values.host,
    port,
    waitMs,
  };
}

const peerOf = (socket: Socket) => `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;

async function main(): Promise<void> {
  const flags = parseFlags();
  const log = pino({ base: { app: 'task-service' } }, pino.destination({ dest: 2, sync: true }));

  let source: X509Source;
  try {
    const picker = flags.ownId === undefined ? undefined : (svids: readonly X509Svid[]) => svids.find((s) => s.spiffeId === flags.ownId);
    source = await X509Source.create({ socketPath: flags.socket, picker, signal: AbortSignal.timeout(flags.waitMs) });
  } catch (err) {
    log.error({ err: (err as Error).message }, `no X.509-SVID from the Workload API within ${flags.waitMs} ms`);
    process.exit(1);
  }
  let own: X509Svid;
  try {
    own = source.getX509Svid();
  } catch {
    const held = source.getX509Context().svids.map((s) => s.spiffeId);
    log.error({ wanted: flags.ownId, held }, 'this process holds no X.509-SVID for --spiffe-id');
    process.exit(1);
  }
  // Without --trust-domain the service trusts tasks of its own trust domain only.
  const trustDomain = flags.trustDomain ?? SpiffeId.parse(own.spiffeId).trustDomain.name;
  log.info({ spiffe_id: own.spiffeId, not_after: new Date(own.notAfter).toISOString(), agent: flags.agent, trust_domain: trustDomain }, 'serving as');

  source.on('update', () => {
    try {
      const svid = source.getX509Svid();
      log.info({ spiffe_id: svid.spiffeId, not_after: new Date(svid.notAfter).toISOString(), crls: source.getCrls().length }, 'X.509 context updated');
    } catch (err) {
      log.error({ err: (err as Error).message }, 'X.509 context update unusable');
    }
  });
  source.on('watchError', (err) => log.warn({ code: err.code, err: err.message }, 'Workload API stream interrupted; retrying'));
  // The last SVID keeps serving until it expires; after that every handshake fails.
  source.on('stopped', (err) => log.error({ code: err.code, err: err.message }, 'Workload API stream stopped for good'));

  const mtls = serverTlsOptions({ source, authorize: authorizeTaskOf(trustDomain, flags.agent), logger: log });

  const server = https.createServer(mtls.options, (req, res) => {
    const socket = req.socket as tls.TLSSocket;
    let peer;
    try {
      // attach() already verified this client when the connection opened. Checking again per
      // request means a kept-alive connection does not outlive a revocation (the CRLs are the
      // latest pushed) or the client's SVID expiry.
      peer = mtls.verifyPeer(socket);
    } catch (err) {
      const reason = isVerificationError(err) ? err.reason : 'internal';
      log.warn({ peer: peerOf(socket), reason, err: (err as Error).message }, 'request refused');
      res.writeHead(403, { 'content-type': 'text/plain; charset=utf-8', connection: 'close' }).end('forbidden\n');
      return;
    }
    const id = peer.spiffeId.toString();
    log.info({ peer: peerOf(socket), spiffe_id: id, method: req.method, path: req.url }, 'request');
    res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' }).end(`hello ${id}\n`);
  });
  mtls.attach(server);
  // Failures before a handshake completes (no shared protocol, a client that rejects our chain)
  // never reach attach()'s hook; log them as refusals too.
  server.on('tlsClientError', (err, socket) => {
    log.warn({ peer: peerOf(socket), reason: 'tls_handshake', err: err.message }, 'TLS handshake failed');
  });

  server.listen(flags.port, flags.host, () => {
    const address = server.address();
    const port = typeof address === 'object' && address ? address.port : flags.port;
    process.stdout.write(`listening ${port}\n`);
    log.info({ host: flags.host, port }, 'listening');
  });

  const stop = (signal: NodeJS.Signals) => {
    log.info({ signal }, 'stopping');
    server.close();
    server.closeAllConnections();
    mtls.close();
    void source.close();
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

await main();
