/**
 * The agentid CLI as users run it: real processes from source, real data directories under /tmp,
 * real openssl, and one short real server run for the audit trail.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AdminClient } from '../src/cli/admin-client.js';
import { WorkloadApiClient } from '../src/client/workload-client.js';
import { runCli, spawnCli, type CliResult } from './support/cli.js';

const TD = 'cli.example';
const ID = `spiffe://${TD}/w`;
// The developer's own environment must not steer these runs.
const ENV = { AGENTID_CONFIG: undefined, AGENTID_DATA_DIR: undefined, AGENTID_TRUST_DOMAIN: undefined, SPIFFE_ENDPOINT_SOCKET: undefined };
const cli = (...args: string[]): Promise<CliResult> => runCli(args, { env: ENV });

const root = mkdtempSync(join(tmpdir(), 'agentid-cli-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

const PEM_CERT = /-----BEGIN CERTIFICATE-----\n[\s\S]*?-----END CERTIFICATE-----\n?/g;
const pemCerts = (file: string) => readFileSync(file, 'utf8').match(PEM_CERT) ?? [];

function openssl(args: string[]): { code: number; out: string } {
  const r = spawnSync('openssl', args, { encoding: 'utf8' });
  return { code: r.status ?? 128, out: `${r.stdout}${r.stderr}` };
}

/** Every file under dir (relative path -> mode and bytes), to prove a refused command changed nothing. */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of readdirSync(dir, { recursive: true }) as string[]) {
    const p = join(dir, name);
    const st = statSync(p);
    if (st.isFile()) out[name] = `${(st.mode & 0o777).toString(8)}:${readFileSync(p).toString('base64')}`;
  }
  return out;
}

describe('agentid x509 mint', () => {
  const D = join(root, 'data');
  const O = join(root, 'out');
  let first: CliResult;

  beforeAll(async () => {
    first = await cli('x509', 'mint', '--data-dir', D, '--trust-domain', TD, '--spiffe-id', ID, '--out', O);
  });

  it('writes svid.pem, svid.key (0600) and bundle.pem', () => {
    expect(first.stderr).toBe('');
    expect(first.code).toBe(0);
    expect(first.stdout).toContain(ID);
    for (const f of ['svid.pem', 'svid.key', 'bundle.pem']) expect(existsSync(join(O, f)), f).toBe(true);
    expect(statSync(join(O, 'svid.key')).mode & 0o777).toBe(0o600);
    expect(readFileSync(join(O, 'svid.key'), 'utf8')).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
  });

  it('writes a chain that openssl verifies strictly against the bundle', () => {
    const chain = pemCerts(join(O, 'svid.pem'));
    expect(chain).toHaveLength(2);
    writeFileSync(join(root, 'leaf.pem'), chain[0]!);
    writeFileSync(join(root, 'intermediate.pem'), chain[1]!);
    const r = openssl(['verify', '-x509_strict', '-CAfile', join(O, 'bundle.pem'), '-untrusted', join(root, 'intermediate.pem'), join(root, 'leaf.pem')]);
    expect(r.out).toContain(': OK');
    expect(r.code).toBe(0);
  });

  it('gives the leaf exactly the X509-SVID extensions', () => {
    const text = openssl(['x509', '-in', join(root, 'leaf.pem'), '-noout', '-text']).out;
    const lines = text.split('\n').map((l) => l.trim());
    const after = (header: string) => lines[lines.indexOf(header) + 1];
    // Extension headers sit at one indent below "X509v3 extensions:", whatever openssl calls them.
    const raw = text.split('\n');
    const start = raw.findIndex((l) => l.trim() === 'X509v3 extensions:');
    const end = raw.findIndex((l, i) => i > start && /^ {0,4}\S/.test(l));
    expect(start).toBeGreaterThan(0);
    const extensions = raw.slice(start + 1, end < 0 ? undefined : end).filter((l) => /^ {12}\S/.test(l)).map((l) => l.trim()).sort();
    expect(extensions).toEqual([
      'X509v3 Authority Key Identifier:',
      'X509v3 Basic Constraints: critical',
      'X509v3 Extended Key Usage:',
      'X509v3 Key Usage: critical',
      'X509v3 Subject Alternative Name:',
      'X509v3 Subject Key Identifier:',
    ]);
    expect(after('X509v3 Basic Constraints: critical')).toBe('CA:FALSE');
    expect(after('X509v3 Key Usage: critical')).toBe('Digital Signature');
    expect(after('X509v3 Extended Key Usage:')).toBe('TLS Web Server Authentication, TLS Web Client Authentication');
    expect(after('X509v3 Subject Key Identifier:')).toMatch(/^[0-9A-F]{2}(:[0-9A-F]{2})+$/);
    expect(after('X509v3 Authority Key Identifier:')).toMatch(/[0-9A-F]{2}(:[0-9A-F]{2})+$/);
    expect(after('X509v3 Subject Alternative Name:')).toBe(`URI:${ID}`);
  });

  it('reuses the same CA on a second run', async () => {
    const show = () => cli('bundle', 'show', '--format', 'pem', '--data-dir', D, '--trust-domain', TD);
    const before = await show();
    expect(before.code).toBe(0);
    expect(before.stdout).toContain('-----BEGIN CERTIFICATE-----');
    const again = await cli('x509', 'mint', '--data-dir', D, '--trust-domain', TD, '--spiffe-id', ID, '--out', join(root, 'out2'));
    expect(again.code).toBe(0);
    const after = await show();
    expect(after).toEqual(before);
    // Both SVIDs chain to the one root.
    expect(readFileSync(join(root, 'out2', 'bundle.pem'), 'utf8')).toBe(readFileSync(join(O, 'bundle.pem'), 'utf8'));
  });

  it('shows the CA as snake_case JSON, and as text without --json', async () => {
    const r = await cli('ca', 'show', '--json', '--data-dir', D, '--trust-domain', TD);
    expect(r.code).toBe(0);
    const info = JSON.parse(r.stdout);
    expect(info.trust_domain).toBe(TD);
    expect(info.roots.length).toBeGreaterThan(0);
    const keys = (v: unknown): string[] => (Array.isArray(v) ? v.flatMap(keys) : v && typeof v === 'object' ? Object.entries(v).flatMap(([k, x]) => [k, ...keys(x)]) : []);
    expect(keys(info).filter((k) => /[A-Z]/.test(k))).toEqual([]);
    expect(r.stdout).not.toMatch(/PRIVATE KEY/);
    const text = await cli('ca', 'show', '--data-dir', D);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(new RegExp(`^Trust domain +${TD.replace('.', '\\.')}$`, 'm'));
    expect(text.stdout).toMatch(/^Signing CAs:$/m);
    expect(text.stdout).not.toMatch(/[{}"]/);
  });

  it('reads the trust domain from the data directory when none is given, and names the fix on a mismatch', async () => {
    for (const args of [['bundle', 'show'], ['x509', 'mint', '--spiffe-id', ID, '--out', join(root, 'out-no-td')], ['jwt', 'mint', '--spiffe-id', ID, '--audience', 'a']]) {
      const r = await cli(...args, '--data-dir', D);
      expect(r.stderr, args.join(' ')).toBe('');
      expect(r.code).toBe(0);
    }
    const other = await cli('bundle', 'show', '--data-dir', D, '--trust-domain', 'other.example');
    expect(other.code).toBe(1);
    expect(other.stderr).toContain(`belongs to trust domain ${TD}`);
    expect(other.stderr).toContain('leave out --trust-domain');
    expect(other.stderr).not.toMatch(/another data directory/);
  });

  it('bundle show --format spiffe prints the SPIFFE bundle document; jwks the same keys and sequence', async () => {
    const { parseSpiffeBundle } = await import('../src/verify/bundle.js');
    const spiffe = await cli('bundle', 'show', '--format', 'spiffe', '--data-dir', D);
    expect(spiffe.code).toBe(0);
    const doc = JSON.parse(spiffe.stdout);
    expect(new Set(doc.keys.map((k: { use: string }) => k.use))).toEqual(new Set(['x509-svid', 'jwt-svid']));
    expect(doc.spiffe_sequence).toBeGreaterThan(0);
    expect(doc.spiffe_refresh_hint).toBeGreaterThan(0);
    const parsed = parseSpiffeBundle(TD, spiffe.stdout);
    const pem = await cli('bundle', 'show', '--format', 'pem', '--data-dir', D);
    expect(parsed.x509!.toPem()).toBe(pem.stdout);
    const jwks = JSON.parse((await cli('bundle', 'show', '--format', 'jwks', '--data-dir', D)).stdout);
    expect(jwks.keys).toEqual(doc.keys);
    expect(jwks.spiffe_sequence).toBe(doc.spiffe_sequence);
    const bad = await cli('bundle', 'show', '--format', 'pem|jwks', '--data-dir', D);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/Allowed choices are pem, spiffe, jwks/);
  });

  it('refuses to use a CA key file that group can read, and replaces nothing', async () => {
    const caDir = join(D, 'ca');
    const keyFile = readdirSync(caDir)
      .map((n) => join(caDir, n))
      .find((p) => statSync(p).isFile() && p.includes('signing') && readFileSync(p, 'utf8').includes('PRIVATE KEY'));
    expect(keyFile, 'signing CA key file under ca/').toBeDefined();
    chmodSync(keyFile!, 0o640);
    try {
      const data = snapshot(D);
      const out = snapshot(O);
      const fresh = join(root, 'out-perm');
      const r = await cli('x509', 'mint', '--data-dir', D, '--trust-domain', TD, '--spiffe-id', ID, '--out', fresh);
      expect(r.code).toBe(1);
      expect(r.stderr).toContain(keyFile!);
      expect(r.stderr).toMatch(/0640|readable .* by group/);
      expect(r.stderr).not.toMatch(/BEGIN|PRIVATE KEY/);
      expect(snapshot(D)).toEqual(data);
      expect(snapshot(O)).toEqual(out);
      expect(existsSync(fresh)).toBe(false);
    } finally {
      chmodSync(keyFile!, 0o600);
    }
  });
});

describe.concurrent('refusals exit 2, name the problem and write nothing', () => {
  let n = 0;
  const refuse = async (args: string[], message: RegExp) => {
    const dir = join(root, `refused-${n++}`);
    const data = join(dir, 'data');
    const out = join(dir, 'out');
    const r = await cli('x509', 'mint', '--data-dir', data, '--out', out, ...args);
    expect(r.stderr).toMatch(message);
    expect(r.code).toBe(2);
    expect(existsSync(data), 'data dir created').toBe(false);
    expect(existsSync(out), 'out dir created').toBe(false);
  };

  it.each([
    ['uppercase trust domain', 'spiffe://CLI.example/w', /lowercase/],
    ['trailing slash', 'spiffe://cli.example/w/', /must not end with "\/"/],
    ['".." segment', 'spiffe://cli.example/a/../w', /"\.\."/],
    ['query', 'spiffe://cli.example/w?x=1', /query/],
    ['wrong trust domain', 'spiffe://other.example/w', /trust domain cli\.example/],
  ])('SPIFFE ID with %s', async (_name, id, message) => {
    await refuse(['--trust-domain', TD, '--spiffe-id', id], message);
  });

  it.each([
    ['0s', /--ttl.*greater than zero/],
    ['abc', /--ttl.*"abc" is not a duration/],
    ['-5m', /--ttl.*"-5m" is not a duration/],
  ])('--ttl %s', async (ttl, message) => {
    await refuse(['--trust-domain', TD, '--spiffe-id', ID, `--ttl=${ttl}`], message);
  });

  it('an unknown key in the config file', async () => {
    const file = join(root, 'unknown-key.yaml');
    writeFileSync(file, `trust_domain: ${TD}\ntrust_domian_typo: ${TD}\n`);
    await refuse(['--config', file, '--spiffe-id', ID], /trust_domian_typo: unknown key/);
  });
});

describe.concurrent('other commands', () => {
  it('jwt mint prints an ES256 token with kid and typ JWT', async () => {
    const r = await cli('jwt', 'mint', '--data-dir', join(root, 'jwt-data'), '--trust-domain', TD, '--audience', 'a', '--spiffe-id', ID);
    expect(r.code).toBe(0);
    const parts = r.stdout.trim().split('.');
    expect(parts).toHaveLength(3);
    const header = JSON.parse(Buffer.from(parts[0]!, 'base64url').toString('utf8'));
    expect(header).toMatchObject({ alg: 'ES256', typ: 'JWT' });
    expect(typeof header.kid).toBe('string');
    expect(header.kid.length).toBeGreaterThan(0);
    const claims = JSON.parse(Buffer.from(parts[1]!, 'base64url').toString('utf8'));
    expect(claims).toMatchObject({ sub: ID, aud: ['a'] });
  });

  it('--version prints the package version', async () => {
    const r = await cli('--version');
    expect(r.code).toBe(0);
    expect(r.stdout.trim()).toBe(JSON.parse(readFileSync(join(import.meta.dirname, '..', 'package.json'), 'utf8')).version);
  });

  it.each([
    ['task', 'list'], ['task', 'revoke', 't-1', '--reason', 'x'], ['revocations', 'list'], ['entry', 'list'],
  ])('%s %s with --data-dir and no server: exit 1, names the socket and what to do, no gRPC internals', async (...args) => {
    const dir = join(root, 'no-server');
    const r = await cli(...args, '--data-dir', dir);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(join(dir, 'admin.sock'));
    expect(r.stderr).toMatch(/agentid server --data-dir/);
    expect(r.stderr).not.toMatch(/No connection established|Resolution note|Last error/);
  });

  it.each([
    ['uid:0', /unknown kind; known: unix:uid/],
    ['unix:uid:abc', /must be a decimal user ID/],
    ['unix:uidd:0', /unknown kind/],
    ['k8s:ns:default', /unknown kind/],
  ])('entry create --selector %s is a usage error (exit 2) before any server is asked', async (selector, message) => {
    const r = await cli('entry', 'create', '--data-dir', join(root, 'no-server'), '--spiffe-id', ID, '--selector', selector);
    expect(r.stderr).toMatch(message);
    expect(r.code).toBe(2);
  });

  it.each([[['--help']], [['entry', 'create', '--help']]])('%j exits 0 with usage', async (args) => {
    const r = await cli(...args);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^Usage: agentid/);
  });
});

describe('audit trail of a real server run', () => {
  const D = join(root, 'server-data');
  const sock = join(D, 'workload.sock');
  const auditFile = join(D, 'audit.log');
  let stderr = '';

  beforeAll(async () => {
    const child = spawnCli(['server', '--data-dir', D, '--trust-domain', TD], ENV);
    child.stderr!.on('data', (d) => (stderr += d));
    child.stdout!.on('data', (d) => (stderr += d));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
    try {
      // server.pid is written once every listener is up (the workload socket comes before the admin one).
      const deadline = Date.now() + 60_000;
      while (!existsSync(join(D, 'server.pid'))) {
        if (child.exitCode !== null) throw new Error(`server exited early (${child.exitCode}): ${stderr}`);
        if (Date.now() > deadline) throw new Error(`no server.pid within 60 s: ${stderr}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      // Some traffic, so the trail has more than one record and holds issued SVIDs.
      const admin = new AdminClient(join(D, 'admin.sock'));
      try {
        for (const name of ['a', 'b']) await admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${TD}/${name}`, selectors: ['unix:uid:0'] } });
      } finally {
        admin.close();
      }
      const client = new WorkloadApiClient({ socketPath: sock });
      try {
        await client.fetchX509Context();
        await client.fetchJwtSvid({ audience: ['aud'], spiffeId: `spiffe://${TD}/a` });
      } finally {
        client.close();
      }
    } finally {
      child.kill('SIGTERM');
    }
    const { code, signal } = await exited;
    expect({ code, signal }).toEqual({ code: 0, signal: null });
  });

  it('stops on SIGTERM and removes its sockets', () => {
    expect(existsSync(sock)).toBe(false);
    expect(existsSync(join(D, 'admin.sock'))).toBe(false);
  });

  it('keeps key material and tokens out of the audit log and the server log', () => {
    const trail = readFileSync(auditFile, 'utf8');
    expect(trail).toContain('svid.issued');
    for (const [name, text] of [['audit.log', trail], ['server stderr', stderr]] as const) {
      for (const needle of ['BEGIN', 'PRIVATE KEY', 'eyJ']) expect(text.includes(needle), `${needle} in ${name}`).toBe(false);
    }
  });

  it('verifies the chain, then names the line whose byte was edited', async () => {
    const ok = await cli('audit', 'verify', '--data-dir', D, '--trust-domain', TD);
    expect(ok.stdout).toMatch(/^ok: \d+ records/);
    expect(ok.code).toBe(0);

    const lines = readFileSync(auditFile, 'utf8').split('\n');
    const records = lines.filter((l) => l !== '').length;
    expect(records).toBeGreaterThanOrEqual(3);
    const index = Math.floor(records / 2); // 0-based; never the first or last record
    const line = lines[index]!;
    const at = line.indexOf('"time":"') + '"time":"'.length;
    const digit = line[at]!;
    lines[index] = `${line.slice(0, at)}${digit === '2' ? '3' : '2'}${line.slice(at + 1)}`;
    writeFileSync(auditFile, lines.join('\n'));

    const broken = await cli('audit', 'verify', auditFile);
    expect(broken.code).toBe(1);
    expect(broken.stdout).toMatch(new RegExp(`\\bline ${index + 1}\\b`));
  });
});
