import type { Command } from 'commander';
import { withAdmin } from './admin-commands.js';
import { withAdminSocket, withJson, type AdminTransportFlags, type CommonFlags } from './common-options.js';
import { emit, isoSeconds, table } from './output.js';

interface AuthorityWire {
  kind: string;
  id: string;
  slot: string;
  tainted: boolean;
  not_after: number;
  issuer_id: string;
}

const KIND_TEXT: Record<string, string> = { root: 'root CA', x509: 'signing CA', jwt: 'JWT key' };

function authoritiesText(res: { changes: string[]; authorities: AuthorityWire[] }, kinds: string[]): string {
  const rows = res.authorities
    .filter((a) => kinds.includes(a.kind))
    .map((a) => [KIND_TEXT[a.kind] ?? a.kind, a.id, a.slot + (a.tainted ? ' (tainted)' : ''), isoSeconds(a.not_after), a.issuer_id || '-']);
  return [...res.changes, ...(res.changes.length ? [''] : []), table([['KIND', 'ID', 'SLOT', 'NOT AFTER', 'ISSUER'], ...rows])].join('\n');
}

type Flags = CommonFlags & AdminTransportFlags;

/**
 * The key-compromise drill (admin only, over the admin API, audited):
 *   agentid ca prepare [--root] | activate ID | taint ID | revoke ID | list
 *   agentid jwt-key prepare | activate ID | taint ID | revoke ID | list
 */
export function registerAuthorityCommands(program: Command): void {
  const ca = program.commands.find((c) => c.name() === 'ca') ?? program.command('ca').description('certificate authority');
  const jwtKey = program.command('jwt-key').description('JWT signing keys: list, prepare, activate, taint and revoke them (admin)');
  const families = [
    { cmd: ca, family: 'ca', kinds: ['root', 'x509'], what: 'root or signing CA' },
    { cmd: jwtKey, family: 'jwt', kinds: ['jwt'], what: 'JWT key' },
  ] as const;

  for (const { cmd, family, kinds, what } of families) {
    const run = (method: string, request: object, flags: Flags) =>
      withAdmin(flags, (client) => client.call(method, request)).then((res) => emit(!!flags.json, res, () => authoritiesText(res, [...kinds])));

    withJson(withAdminSocket(cmd.command('list')))
      .description(`list the ${family === 'ca' ? 'roots and signing CAs' : 'JWT keys'} the running server holds, with slots and taint`)
      .action((flags: Flags) => run('ListAuthorities', {}, flags));

    const prepare = withJson(withAdminSocket(cmd.command('prepare')))
      .description(family === 'ca'
        ? 'create a new signing CA (or with --root a new root CA, published in the bundle at once) in the prepared slot'
        : 'create a new JWT key in the prepared slot (published in the JWT bundle at once)');
    if (family === 'ca') prepare.option('--root', 'prepare a root CA instead of a signing CA');
    prepare.action((flags: Flags & { root?: boolean }) => run('PrepareAuthority', { kind: family === 'jwt' ? 'jwt' : flags.root ? 'root' : 'x509' }, flags));

    const byId = [
      ['activate', 'ActivateAuthority', `make a prepared ${what} active; the active one is retired${family === 'ca' ? ' (activating a root also creates a signing CA under it)' : ''}`],
      ['taint', 'TaintAuthority', `mark a retired ${what} as compromised: everything it signed is re-issued at once and pushed on open streams`],
      ['revoke', 'RevokeAuthority', `remove a tainted ${what}${family === 'ca' ? ' (a root leaves the bundle; a signing CA goes on its root\'s CRL)' : ' from the JWT bundle'}, once nothing in use chains to it`],
    ] as const;
    for (const [name, method, description] of byId) {
      withJson(withAdminSocket(cmd.command(name)))
        .description(description)
        .argument('<id>', `${what} ID (see \`agentid ${family === 'ca' ? 'ca' : 'jwt-key'} list\`)`)
        .action((id: string, flags: Flags) => run(method, { family, id }, flags));
    }
  }
}
