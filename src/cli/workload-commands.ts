import type { Command } from 'commander';
import { WorkloadApiClient } from '../client/workload-client.js';
import { X509Source } from '../client/sources.js';
import { toPem } from '../client/der.js';
import type { JwtSvid, X509Context } from '../client/types.js';
import { systemClock } from '../common/system-clock.js';
import { invalidArgument } from '../common/errors.js';
import { collect, configFrom, withJson, type CommonFlags } from './common-options.js';
import { emit, remote, table } from './output.js';
import {
  FILE_LAYOUTS, SvidFileWriter, fileNamesFrom, jwtRefreshDelay, pickSvid, reloadActionFrom, runReload,
  type DeliveryContent, type ReloadAction,
} from './svid-files.js';

/** --socket > SPIFFE_ENDPOINT_SOCKET > the configured server's socket. */
function socketFrom(flags: CommonFlags): string {
  if (flags.socket) return flags.socket;
  if (process.env.SPIFFE_ENDPOINT_SOCKET) return process.env.SPIFFE_ENDPOINT_SOCKET;
  return configFrom(flags).workloadSocket;
}

const withWorkloadSocket = (cmd: Command) =>
  cmd
    .option('--socket <path>', 'Workload API socket (env SPIFFE_ENDPOINT_SOCKET; default <data-dir>/workload.sock)')
    .option('--data-dir <dir>', 'data directory of the local server (for its default socket)')
    .option('--config <file>', 'YAML config file');

interface WriteFlags extends CommonFlags {
  write?: string;
  spiffeId?: string;
  names: string;
  certFile?: string;
  keyFile?: string;
  bundleFile?: string;
  crlFile?: string;
  jwtFile?: string;
  jwtAudience?: string[];
  includeFederated?: boolean;
  exec?: string;
  signal?: string;
  pidFile?: string;
}

const withWriteOptions = (cmd: Command) =>
  cmd
    .option('--write <dir>', 'write the SVID, key (0600), bundle and CRLs into this directory, atomically')
    .option('--spiffe-id <id>', 'which of this process\'s identities to deliver (default: the first, svids[0])')
    .option('--names <layout>', `file names: ${Object.entries(FILE_LAYOUTS).map(([k, v]) => `${k} (${v.cert}, ${v.key}, ${v.bundle})`).join(' or ')}`, 'agentid')
    .option('--cert-file <name>', 'certificate chain file name (leaf first)')
    .option('--key-file <name>', 'private key file name (PKCS#8 PEM, 0600)')
    .option('--bundle-file <name>', 'trust bundle file name')
    .option('--crl-file <name>', 'CRL file name: every CRL in one PEM file, for nginx ssl_crl or openssl -CRLfile (default crl.pem)')
    .option('--jwt-audience <aud>', 'also write a JWT-SVID for this audience (repeatable)', collect)
    .option('--jwt-file <name>', 'JWT-SVID file name (0600; default jwt_svid.token)')
    .option('--include-federated', 'append federated trust domains\' CA certificates to the bundle file')
    .option('--exec <command>', 'run this shell command after the files change (e.g. "nginx -s reload")')
    .option('--signal <sig>', 'send this signal (e.g. HUP) after the files change, to the process in --pid-file')
    .option('--pid-file <file>', 'with --signal: file holding the process ID to signal');

/** Checks every --write related flag before anything is fetched (usage errors exit 2). */
function deliveryFrom(flags: WriteFlags) {
  const writeOnly = ['spiffeId', 'certFile', 'keyFile', 'bundleFile', 'crlFile', 'jwtFile', 'jwtAudience', 'includeFederated', 'exec', 'signal', 'pidFile'] as const;
  const names = fileNamesFrom(flags.names, { cert: flags.certFile, key: flags.keyFile, bundle: flags.bundleFile, crl: flags.crlFile, jwt: flags.jwtFile });
  const reload = reloadActionFrom(flags);
  if (!flags.write) {
    const given = writeOnly.filter((k) => flags[k] !== undefined && k !== 'spiffeId');
    if (given.length > 0) throw invalidArgument(`${given.map((k) => `--${k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`).join(', ')} need --write <dir>`);
    return undefined;
  }
  if (flags.jwtFile !== undefined && !flags.jwtAudience) throw invalidArgument('--jwt-file needs --jwt-audience');
  return { dir: flags.write, names, reload };
}

function summarize(ctx: X509Context) {
  return ctx.svids.map((s) => ({ spiffe_id: s.spiffeId, hint: s.hint, not_after: new Date(s.notAfter).toISOString(), chain_length: s.chainDer.length }));
}

function contentOf(ctx: X509Context, flags: WriteFlags, jwt: JwtSvid | undefined): DeliveryContent {
  return {
    svid: pickSvid(ctx, flags.spiffeId),
    crls: ctx.crls,
    federated: flags.includeFederated ? [...ctx.federatedBundles.values()].flat() : [],
    ...(jwt ? { jwt } : {}),
  };
}

async function fetchJwt(client: WorkloadApiClient, flags: WriteFlags): Promise<JwtSvid | undefined> {
  if (!flags.jwtAudience) return undefined;
  const svids = await client.fetchJwtSvids({ audience: flags.jwtAudience, spiffeId: flags.spiffeId });
  return svids[0];
}

async function withClient<T>(flags: CommonFlags, f: (c: WorkloadApiClient) => Promise<T>): Promise<T> {
  const client = new WorkloadApiClient({ socketPath: socketFrom(flags) });
  try {
    return await f(client);
  } catch (err) {
    throw remote(err, socketFrom(flags));
  } finally {
    client.close();
  }
}

const say = (text: string) => process.stderr.write(`agentid: ${text}\n`);

export function registerWorkloadCommands(program: Command): void {
  const svid = program.command('svid').description('fetch X.509-SVIDs over the Workload API');
  withJson(withWriteOptions(withWorkloadSocket(svid.command('fetch'))))
    .description('fetch this process\'s X.509-SVIDs; --write stores one as svid.pem, svid.key (0600), bundle.pem, crl.pem')
    .action(async (flags: WriteFlags) => {
      const delivery = deliveryFrom(flags);
      await withClient(flags, async (c) => {
        const ctx = await c.fetchX509Context();
        if (delivery) {
          const writer = new SvidFileWriter(delivery.dir, delivery.names);
          const changed = writer.write(contentOf(ctx, flags, await fetchJwt(c, flags)));
          if (changed.length > 0) await runReload(delivery.reload);
        }
        const rows = summarize(ctx);
        emit(!!flags.json, rows, () => table([['SPIFFE ID', 'HINT', 'EXPIRES'], ...rows.map((r) => [r.spiffe_id, r.hint || '-', r.not_after])]));
      });
    });
  withJson(withWriteOptions(withWorkloadSocket(svid.command('watch'))))
    .description('follow the X.509-SVID stream; one line per update (rotation, entry change, revocation); --write rewrites the files and reloads')
    .action(async (flags: WriteFlags) => {
      const delivery = deliveryFrom(flags);
      const socketPath = socketFrom(flags);
      const source = await X509Source.create({ socketPath }).catch((err) => Promise.reject(remote(err, socketPath)));
      const client = delivery && flags.jwtAudience ? new WorkloadApiClient({ socketPath }) : undefined;
      const writer = delivery ? new SvidFileWriter(delivery.dir, delivery.names) : undefined;
      const stop = new AbortController();
      let jwt: JwtSvid | undefined;
      // Updates are written one at a time, in order, so a reload never sees a half-applied update.
      let queue = Promise.resolve();
      const deliver = (reason: string) => {
        queue = queue.then(async () => {
          const ctx = source.getX509Context();
          const line = { svids: summarize(ctx), crls: ctx.crls.length, ...(writer ? { changed: [] as string[] } : {}) };
          if (writer && delivery) {
            try {
              line.changed = writer.write(contentOf(ctx, flags, jwt));
              if (line.changed.length > 0) await runReload(delivery.reload);
            } catch (err) {
              say(`${reason}: ${(err as Error).message}`);
            }
          }
          process.stdout.write(flags.json
            ? `${JSON.stringify(line)}\n`
            : `${line.svids.map((s) => `${s.spiffe_id} expires ${s.not_after}`).join(', ')} (crls: ${line.crls}${line.changed ? `; wrote: ${line.changed.join(' ') || 'nothing new'}` : ''})\n`);
        });
      };
      const refreshJwt = async () => {
        while (client && !stop.signal.aborted) {
          let wait = 5000;
          try {
            jwt = await fetchJwt(client, flags);
            if (jwt) wait = jwtRefreshDelay(systemClock.now(), jwt.expiresAt);
            deliver('JWT-SVID refresh');
          } catch (err) {
            say(`cannot fetch the JWT-SVID: ${remote(err, socketPath).message}; retrying`);
          }
          await systemClock.sleep(wait, stop.signal).catch(() => undefined);
        }
      };
      if (client) {
        jwt = await fetchJwt(client, flags).catch((err) => Promise.reject(remote(err, socketPath)));
      }
      deliver('first update');
      source.on('update', () => deliver('update'));
      source.on('watchError', (err) => say(`stream: ${err.message}; reconnecting`));
      const refreshing = client ? systemClock.sleep(jwt ? jwtRefreshDelay(systemClock.now(), jwt.expiresAt) : 5000, stop.signal).then(refreshJwt, () => undefined) : undefined;
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
      stop.abort();
      await refreshing;
      await queue;
      client?.close();
      await source.close();
    });

  const jwt = program.commands.find((c) => c.name() === 'jwt') ?? program.command('jwt').description('JWT-SVID tools');
  withJson(withWorkloadSocket(jwt.command('fetch')))
    .description('fetch JWT-SVIDs for an audience; prints the default token')
    .requiredOption('--audience <aud>', 'audience (repeatable)', collect)
    .option('--spiffe-id <id>', 'only this identity')
    .action((flags: CommonFlags & { audience: string[]; spiffeId?: string }) =>
      withClient(flags, async (c) => {
        const svids = await c.fetchJwtSvids({ audience: flags.audience, spiffeId: flags.spiffeId });
        emit(!!flags.json, svids.map((s) => ({ spiffe_id: s.spiffeId, hint: s.hint, expires_at: new Date(s.expiresAt).toISOString(), token: s.token.reveal() })), () => svids[0]!.token.reveal());
      }));
  withJson(withWorkloadSocket(jwt.command('validate')))
    .description('validate a JWT-SVID through the Workload API; exit 1 when it is refused')
    .requiredOption('--audience <aud>', 'audience the token must carry')
    .argument('<token>')
    .action((token: string, flags: CommonFlags & { audience: string }) =>
      withClient(flags, async (c) => {
        const result = await c.validateJwtSvid(token, flags.audience);
        emit(!!flags.json, { spiffe_id: result.spiffeId, claims: result.claims }, () => `valid: ${result.spiffeId}`);
      }));

  const bundle = program.commands.find((c) => c.name() === 'bundle') ?? program.command('bundle');
  withJson(withWorkloadSocket(bundle.command('fetch')))
    .description('fetch X.509 trust bundles over the Workload API (PEM per trust domain)')
    .action((flags: CommonFlags) =>
      withClient(flags, async (c) => {
        const { bundles, crls } = await c.fetchX509Bundles();
        const out = Object.fromEntries([...bundles].map(([td, certs]) => [td, toPem(certs, 'CERTIFICATE')]));
        emit(!!flags.json, { bundles: out, crls: crls.length }, () => Object.entries(out).map(([td, pem]) => `# ${td}\n${pem.trimEnd()}`).join('\n'));
      }));
}
