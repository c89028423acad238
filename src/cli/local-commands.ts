import { existsSync, mkdirSync, writeFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { Option, type Command } from 'commander';
import { systemClock } from '../common/system-clock.js';
import { silentLogger } from '../common/logger.js';
import { parseDuration } from '../common/duration.js';
import { failedPrecondition, invalidArgument } from '../common/errors.js';
import { SpiffeId, TrustDomain } from '../spiffe/spiffe-id.js';
import type { Config } from '../config/index.js';
import { CertificateAuthority } from '../ca/authority.js';
import { verifyAuditFile, readAuditEvents } from '../audit/index.js';
import { toPem } from '../client/der.js';
import { caOptionsFrom, runningServerPid } from '../server.js';
import { configFrom, withConfigOptions, withJson, type CommonFlags } from './common-options.js';
import { emit, snakeKeys, table } from './output.js';
import { buildDocuments, bundleSequence, parseIssuer, refreshHintSeconds } from '../bundle-endpoint/documents.js';

async function openLocalCa(config: Config, create: boolean): Promise<CertificateAuthority> {
  if (!create && !existsSync(join(config.dataDir, 'ca'))) {
    throw failedPrecondition(`no CA in ${config.dataDir}: start the server once (agentid server) or mint with agentid x509 mint`);
  }
  mkdirSync(config.dataDir, { recursive: true, mode: 0o700 });
  // Next to a running server, only read: the server owns CA rotation.
  const rotateOnOpen = runningServerPid(config.dataDir) === undefined;
  return CertificateAuthority.open({ ...caOptionsFrom(config, { clock: systemClock, logger: silentLogger() }), rotateOnOpen });
}

interface CaItem {
  id: string;
  slot: string;
  subject?: string;
  not_before: string;
  not_after: string;
  issuer_id?: string;
  kid?: string;
  alg?: string;
  published_until?: string;
}
interface CaDescription {
  trust_domain: string;
  mode: string;
  bundle_version: number;
  jwt_keys_version: number;
  jwt_issuer: string;
  upstream?: { id: string; subject: string; not_after: string; bundle: { subject: string; sha256: string }[] };
  roots?: CaItem[];
  signing_cas: CaItem[];
  jwt_keys: CaItem[];
  next_rotation_at: string;
}

/** `ca show` for people: a summary, then one table per kind of key. */
function caText(info: CaDescription): string {
  const keys = (title: string, items: CaItem[], extra: (i: CaItem) => string) =>
    [`${title}:`, table([['SLOT', 'ID', 'NOT BEFORE', 'NOT AFTER', 'DETAILS'], ...items.map((i) => [i.slot, i.id, i.not_before, i.not_after, extra(i)])]).replace(/^/gm, '  ')].join('\n');
  return [
    table([
      ['Trust domain', info.trust_domain],
      ['Mode', info.mode],
      ['JWT issuer', info.jwt_issuer],
      ['Bundle version', String(info.bundle_version)],
      ['JWT keys version', String(info.jwt_keys_version)],
      ['Next rotation', info.next_rotation_at],
      ...(info.upstream ? [['Upstream CA', `${info.upstream.subject} (until ${info.upstream.not_after})`]] : []),
    ]),
    ...(info.roots ? [keys('Roots', info.roots, (i) => i.subject ?? '')] : []),
    keys('Signing CAs', info.signing_cas, (i) => `${i.subject ?? ''}; issuer ${i.issuer_id ?? '-'}`),
    keys('JWT keys', info.jwt_keys, (i) => `${i.alg ?? ''}, published until ${i.published_until ?? '-'}`),
  ].join('\n\n');
}

function writeSecretFile(path: string, data: string | Buffer): void {
  writeFileSync(path, data, { mode: 0o600 });
  chmodSync(path, 0o600);
}

export function registerLocalCommands(program: Command): void {
  const ca = program.command('ca').description('certificate authority (reads the data directory)');
  withJson(withConfigOptions(ca.command('show')))
    .description('show the root CA, signing CAs and JWT keys (no secrets)')
    .action(async (flags: CommonFlags) => {
      const authority = await openLocalCa(configFrom(flags), false);
      const info = snakeKeys(authority.describe()) as CaDescription;
      emit(!!flags.json, info, () => caText(info));
    });

  const bundle = program.command('bundle').description('trust bundles');
  withJson(withConfigOptions(bundle.command('show')))
    .description('print the trust bundle of the local CA: pem (CA certificates), spiffe (the SPIFFE bundle document the bundle endpoint serves) or jwks')
    .addOption(new Option('--format <format>', 'output format').choices(['pem', 'spiffe', 'jwks']).default('pem'))
    .action(async (flags: CommonFlags & { format: 'pem' | 'spiffe' | 'jwks' }) => {
      const config = configFrom(flags);
      const authority = await openLocalCa(config, false);
      if (flags.format === 'pem') {
        const pem = toPem(authority.x509Bundle(), 'CERTIFICATE');
        emit(!!flags.json, { format: 'pem', pem }, () => pem.trimEnd());
        return;
      }
      // The same document the bundle endpoint serves: x509-svid and jwt-svid keys, spiffe_sequence.
      const doc = JSON.parse(buildDocuments({
        trustDomain: TrustDomain.parse(config.trustDomain),
        x509Authorities: authority.x509Bundle(),
        jwtKeys: authority.jwtKeys(),
        sequence: bundleSequence(authority),
        refreshHintSeconds: refreshHintSeconds(config.bundleEndpoint.refreshHintMs),
        issuer: parseIssuer(config.jwt.issuer),
      }).bundle) as Record<string, unknown>;
      // jwks: the same keys and sequence, without the endpoint's polling hint.
      if (flags.format === 'jwks') delete doc.spiffe_refresh_hint;
      process.stdout.write(`${JSON.stringify(doc, null, 2)}\n`);
    });

  const x509 = program.command('x509').description('offline X.509-SVID tools (development and tests)');
  withJson(withConfigOptions(x509.command('mint')))
    .description('mint an X.509-SVID from the local CA and write svid.pem, svid.key (0600) and bundle.pem')
    .requiredOption('--spiffe-id <id>', 'SPIFFE ID in the trust domain')
    .option('--ttl <duration>', 'lifetime', '15m')
    .option('--dns-name <name...>', 'DNS SANs')
    .requiredOption('--out <dir>', 'output directory')
    .action(async (flags: CommonFlags & { spiffeId: string; ttl: string; out: string; dnsName?: string[] }) => {
      const config = configFrom(flags);
      const id = SpiffeId.parse(flags.spiffeId);
      const ttlMs = parseDuration(flags.ttl, '--ttl');
      if (!id.isMemberOf(TrustDomain.parse(config.trustDomain))) throw invalidArgument(`--spiffe-id must be in trust domain ${config.trustDomain}`);
      const authority = await openLocalCa(config, true);
      const svid = authority.mintX509Svid({ spiffeId: id, ttlMs, dnsNames: flags.dnsName ?? [] });
      mkdirSync(flags.out, { recursive: true, mode: 0o700 });
      writeFileSync(join(flags.out, 'svid.pem'), toPem(svid.chainDer, 'CERTIFICATE'));
      writeSecretFile(join(flags.out, 'svid.key'), toPem(svid.privateKeyPkcs8.reveal(), 'PRIVATE KEY'));
      writeFileSync(join(flags.out, 'bundle.pem'), toPem(authority.x509Bundle(), 'CERTIFICATE'));
      const out = { spiffe_id: svid.spiffeId, serial: svid.serial, not_after: new Date(svid.notAfter).toISOString(), dir: flags.out };
      emit(!!flags.json, out, () => `wrote ${flags.out}/svid.pem, svid.key, bundle.pem for ${svid.spiffeId} (serial ${svid.serial}, expires ${out.not_after})`);
    });

  const jwt = program.commands.find((c) => c.name() === 'jwt') ?? program.command('jwt').description('JWT-SVID tools');
  withJson(withConfigOptions(jwt.command('mint')))
    .description('mint a JWT-SVID from the local CA (development and tests); prints the token')
    .requiredOption('--spiffe-id <id>', 'SPIFFE ID in the trust domain')
    .requiredOption('--audience <aud...>', 'audience(s)')
    .option('--ttl <duration>', 'lifetime', '5m')
    .action(async (flags: CommonFlags & { spiffeId: string; audience: string[]; ttl: string }) => {
      const config = configFrom(flags);
      const id = SpiffeId.parse(flags.spiffeId);
      const ttlMs = parseDuration(flags.ttl, '--ttl');
      if (!id.isMemberOf(TrustDomain.parse(config.trustDomain))) throw invalidArgument(`--spiffe-id must be in trust domain ${config.trustDomain}`);
      const authority = await openLocalCa(config, true);
      const svid = authority.mintJwtSvid({ spiffeId: id, audience: flags.audience, ttlMs });
      emit(!!flags.json, { spiffe_id: svid.spiffeId, token: svid.token.reveal(), jti: svid.jti, expires_at: new Date(svid.expiresAt).toISOString() }, () => svid.token.reveal());
    });

  const audit = program.command('audit').description('the hash-chained audit trail');
  withJson(withConfigOptions(audit.command('verify')))
    .description('check the hash chain; names the first edited, removed or reordered line')
    .argument('[file]', 'audit file (default <data-dir>/audit.log)')
    .action((file: string | undefined, flags: CommonFlags) => {
      const path = file ?? configFrom(flags).audit.file;
      const result = verifyAuditFile(path);
      emit(!!flags.json, result, () => (result.ok ? `ok: ${result.count} records, chain intact` : `BROKEN at line ${result.line}: ${result.reason}`));
      if (!result.ok) process.exitCode = 1;
    });
  withJson(withConfigOptions(audit.command('show')))
    .description('print audit events, optionally filtered')
    .option('--task <task>', 'task ID')
    .option('--agent <agent>', 'agent name')
    .option('--spiffe-id <id>', 'SPIFFE ID')
    .option('--type <type>', 'event type, e.g. svid.issued')
    .option('--since <duration>', 'only events newer than this, e.g. 1h')
    .option('--file <file>', 'audit file (default <data-dir>/audit.log)')
    .action((flags: CommonFlags & { task?: string; agent?: string; spiffeId?: string; type?: string; since?: string; file?: string }) => {
      const path = flags.file ?? configFrom(flags).audit.file;
      const since = flags.since ? systemClock.now() - parseDuration(flags.since, '--since') : undefined;
      const events = readAuditEvents(path, { task: flags.task, agent: flags.agent, spiffeId: flags.spiffeId, type: flags.type, since });
      emit(!!flags.json, events, () => events.map((e) => JSON.stringify(e)).join('\n'));
    });
}
