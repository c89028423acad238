import { mkdirSync, writeFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import type { Command } from 'commander';
import { WorkloadApiClient } from '../client/workload-client.js';
import { X509Source } from '../client/sources.js';
import { toPem } from '../client/der.js';
import type { X509Context } from '../client/types.js';
import { collect, configFrom, withJson, type CommonFlags } from './common-options.js';
import { emit, table } from './output.js';

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

function summarize(ctx: X509Context) {
  return ctx.svids.map((s) => ({ spiffe_id: s.spiffeId, hint: s.hint, not_after: new Date(s.notAfter).toISOString(), chain_length: s.chainDer.length }));
}

function writeSvid(dir: string, ctx: X509Context): void {
  const svid = ctx.svids[0]!;
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeFileSync(join(dir, 'svid.pem'), toPem(svid.chainDer, 'CERTIFICATE'));
  writeFileSync(join(dir, 'svid.key'), toPem(svid.keyPkcs8Der.reveal(), 'PRIVATE KEY'), { mode: 0o600 });
  chmodSync(join(dir, 'svid.key'), 0o600);
  writeFileSync(join(dir, 'bundle.pem'), toPem(svid.bundleDer, 'CERTIFICATE'));
  ctx.crls.forEach((crl, i) => writeFileSync(join(dir, `crl-${i}.pem`), toPem(crl, 'X509 CRL')));
}

async function withClient<T>(flags: CommonFlags, f: (c: WorkloadApiClient) => Promise<T>): Promise<T> {
  const client = new WorkloadApiClient({ socketPath: socketFrom(flags) });
  try {
    return await f(client);
  } finally {
    client.close();
  }
}

export function registerWorkloadCommands(program: Command): void {
  const svid = program.command('svid').description('fetch X.509-SVIDs over the Workload API');
  withJson(withWorkloadSocket(svid.command('fetch')))
    .description('fetch this process\'s X.509-SVIDs; --write stores the default one as svid.pem, svid.key (0600), bundle.pem')
    .option('--write <dir>', 'directory to write the default SVID to')
    .action((flags: CommonFlags & { write?: string }) =>
      withClient(flags, async (c) => {
        const ctx = await c.fetchX509Context();
        if (flags.write) writeSvid(flags.write, ctx);
        const rows = summarize(ctx);
        emit(!!flags.json, rows, () => table([['SPIFFE ID', 'HINT', 'EXPIRES'], ...rows.map((r) => [r.spiffe_id, r.hint || '-', r.not_after])]));
      }));
  withJson(withWorkloadSocket(svid.command('watch')))
    .description('follow the X.509-SVID stream; one line per update (rotation, entry change, revocation)')
    .option('--write <dir>', 'rewrite the files on every update')
    .action(async (flags: CommonFlags & { write?: string }) => {
      const source = await X509Source.create({ socketPath: socketFrom(flags) });
      const print = () => {
        const ctx = source.getX509Context();
        if (flags.write) writeSvid(flags.write, ctx);
        const line = { svids: summarize(ctx), crls: ctx.crls.length };
        process.stdout.write(flags.json ? `${JSON.stringify(line)}\n` : `${line.svids.map((s) => `${s.spiffe_id} expires ${s.not_after}`).join(', ')} (crls: ${line.crls})\n`);
      };
      print();
      source.on('update', print);
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
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
    .description('validate a JWT-SVID through the Workload API')
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
