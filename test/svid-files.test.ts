/**
 * `svid fetch --write` and `svid watch --write`: atomic file delivery like spiffe-helper, against
 * a real server, with real files, a second Unix user and real openssl.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, lstatSync, mkdirSync, readFileSync, readdirSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ensureTestUser } from '../src/attest/testing.js';
import { cliArgv, runCli, spawnCli } from './support/cli.js';
import { makeTempDir, startTestServer, type TestServer } from './support/server.js';

const TD = 'files.example';
const A = `spiffe://${TD}/svc/a`;
const B = `spiffe://${TD}/svc/b`;
const ENV = { AGENTID_CONFIG: undefined, AGENTID_DATA_DIR: undefined, AGENTID_TRUST_DOMAIN: undefined, SPIFFE_ENDPOINT_SOCKET: undefined };

let t: TestServer;
let root: string;
const cli = (...args: string[]) => runCli([...args, '--socket', t.config.workloadSocket], { env: ENV });

const PEM_CERT = /-----BEGIN CERTIFICATE-----\n[\s\S]*?-----END CERTIFICATE-----\n?/g;

function openssl(args: string[]): { code: number; out: string } {
  const r = spawnSync('openssl', args, { encoding: 'utf8' });
  return { code: r.status ?? 128, out: `${r.stdout}${r.stderr}` };
}

/** Splits svid.pem into leaf and intermediates for openssl verify. */
function verifyWithCrl(dir: string, names = { cert: 'svid.pem', bundle: 'bundle.pem', crl: 'crl.pem' }, mode = '-crl_check_all') {
  const chain = readFileSync(join(dir, names.cert), 'utf8').match(PEM_CERT)!;
  writeFileSync(join(root, 'leaf.pem'), chain[0]!);
  writeFileSync(join(root, 'untrusted.pem'), chain.slice(1).join(''));
  return openssl(['verify', '-x509_strict', mode, '-CAfile', join(dir, names.bundle), '-CRLfile', join(dir, names.crl), '-untrusted', join(root, 'untrusted.pem'), join(root, 'leaf.pem')]);
}

const uriOf = (dir: string, file = 'svid.pem') => {
  const leaf = readFileSync(join(dir, file), 'utf8').match(PEM_CERT)![0]!;
  writeFileSync(join(root, 'one.pem'), leaf);
  return openssl(['x509', '-in', join(root, 'one.pem'), '-noout', '-ext', 'subjectAltName']).out.match(/URI:(\S+)/)?.[1];
};

beforeAll(async () => {
  root = makeTempDir('agentid-files-');
  t = await startTestServer({ trustDomain: TD });
  for (const id of [A, B]) await t.admin.call('CreateEntry', { entry: { spiffe_id: id, selectors: ['unix:uid:0'] } });
}, 30_000);
afterAll(async () => {
  await t?.cleanup();
  spawnSync('rm', ['-rf', root]);
});

describe('svid fetch --write', () => {
  it('writes the chain, a 0600 key, the bundle and one CRL file that openssl uses with full-chain CRL checking', async () => {
    const dir = join(root, 'plain');
    const r = await cli('svid', 'fetch', '--write', dir);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(readdirSync(dir).sort()).toEqual(['bundle.pem', 'crl.pem', 'svid.key', 'svid.pem']);
    expect(statSync(join(dir, 'svid.key')).mode & 0o777).toBe(0o600);
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    const v = verifyWithCrl(dir);
    expect(v.out).toContain(': OK');
    expect(v.code).toBe(0);
  });

  it('picks the identity named by --spiffe-id, and refuses one it does not hold (exit 1)', async () => {
    const dir = join(root, 'pick');
    for (const id of [A, B]) {
      const r = await cli('svid', 'fetch', '--write', dir, '--spiffe-id', id);
      expect(r.code, r.stderr).toBe(0);
      expect(uriOf(dir)).toBe(id);
    }
    const missing = await cli('svid', 'fetch', '--write', join(root, 'pick-missing'), '--spiffe-id', `spiffe://${TD}/svc/none`);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain('it holds:');
    expect(existsSync(join(root, 'pick-missing', 'svid.pem'))).toBe(false);
  });

  it('replaces a planted svid.key symlink and leaves the file it pointed to untouched', async () => {
    const victim = ensureTestUser('agentid-files-victim');
    const victimDir = join(root, 'victim');
    mkdirSync(victimDir);
    const victimFile = join(victimDir, 'notes.txt');
    writeFileSync(victimFile, 'belongs to the victim\n', { mode: 0o644 });
    chownSync(victimFile, victim.uid, victim.gid);
    const dir = join(root, 'planted');
    mkdirSync(dir, { mode: 0o700 });
    symlinkSync(victimFile, join(dir, 'svid.key'));
    symlinkSync(victimFile, join(dir, 'crl-0.pem'));

    const r = await cli('svid', 'fetch', '--write', dir);
    expect(r.code, r.stderr).toBe(0);
    expect(readFileSync(victimFile, 'utf8')).toBe('belongs to the victim\n');
    expect(statSync(victimFile).uid).toBe(victim.uid);
    const key = lstatSync(join(dir, 'svid.key'));
    expect(key.isSymbolicLink()).toBe(false);
    expect(key.mode & 0o777).toBe(0o600);
    expect(readFileSync(join(dir, 'svid.key'), 'utf8')).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
    // The stale per-CRL file from earlier versions is removed (the link, not its target).
    expect(existsSync(join(dir, 'crl-0.pem'))).toBe(false);
    expect(existsSync(victimFile)).toBe(true);
  });

  it('refuses a directory owned by another user, a symlinked directory and a group-writable one, writing nothing', async () => {
    const other = ensureTestUser('agentid-files-victim');
    const owned = join(root, 'owned-by-other');
    mkdirSync(owned, { mode: 0o700 });
    chownSync(owned, other.uid, other.gid);
    const real = join(root, 'real');
    mkdirSync(real, { mode: 0o700 });
    const link = join(root, 'link');
    symlinkSync(real, link);
    const open = join(root, 'open');
    mkdirSync(open);
    spawnSync('chmod', ['0777', open]);
    for (const [dir, why] of [[owned, /owned by uid \d+/], [link, /is a symlink/], [open, /writable by group or others/]] as const) {
      const r = await cli('svid', 'fetch', '--write', dir);
      expect(r.code, dir).toBe(1);
      expect(r.stderr).toMatch(why);
      expect(readdirSync(dir === link ? real : dir)).toEqual([]);
    }
  });

  it('uses spiffe-helper\'s file names on request, and custom names per file', async () => {
    const dir = join(root, 'helper');
    const r = await cli('svid', 'fetch', '--write', dir, '--names', 'spiffe-helper');
    expect(r.code, r.stderr).toBe(0);
    expect(readdirSync(dir).sort()).toEqual(['crl.pem', 'svid.pem', 'svid_bundle.pem', 'svid_key.pem']);
    const custom = join(root, 'custom');
    const c = await cli('svid', 'fetch', '--write', custom, '--cert-file', 'tls.crt', '--key-file', 'tls.key', '--bundle-file', 'ca.crt', '--crl-file', 'revoked.crl');
    expect(c.code, c.stderr).toBe(0);
    expect(readdirSync(custom).sort()).toEqual(['ca.crt', 'revoked.crl', 'tls.crt', 'tls.key']);
    expect(verifyWithCrl(custom, { cert: 'tls.crt', bundle: 'ca.crt', crl: 'revoked.crl' }).code).toBe(0);
  });

  it('writes a JWT-SVID for an audience (0600), for the chosen identity', async () => {
    const dir = join(root, 'jwt');
    const r = await cli('svid', 'fetch', '--write', dir, '--spiffe-id', B, '--jwt-audience', 'https://api.internal');
    expect(r.code, r.stderr).toBe(0);
    const token = readFileSync(join(dir, 'jwt_svid.token'), 'utf8').trim();
    expect(statSync(join(dir, 'jwt_svid.token')).mode & 0o777).toBe(0o600);
    const claims = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString('utf8'));
    expect(claims).toMatchObject({ sub: B, aud: ['https://api.internal'] });
  });

  it.each([
    [['--signal', 'HUP'], /--signal needs --pid-file/],
    [['--signal', 'NOPE', '--pid-file', '/x'], /not a signal name/],
    [['--names', 'envoy'], /--names must be one of/],
    [['--cert-file', '../escape.pem'], /plain file name/],
    [['--cert-file', 'same', '--key-file', 'same'], /must differ/],
  ])('usage error %j exits 2 and writes nothing', async (extra, why) => {
    const dir = join(root, `usage-${extra.join('')}`.replace(/[^a-z0-9-]/gi, ''));
    const r = await cli('svid', 'fetch', '--write', dir, ...extra);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(why);
    expect(existsSync(dir)).toBe(false);
  });

  it('signals the process in --pid-file after writing', async () => {
    const dir = join(root, 'signal');
    const sleeper = spawn('sh', ['-c', `trap 'echo hup > ${root}/got-hup; exit 0' HUP; echo ready; while :; do sleep 0.1; done`], { stdio: ['ignore', 'pipe', 'ignore'] });
    await new Promise((res) => sleeper.stdout.once('data', res));
    writeFileSync(join(root, 'sleeper.pid'), `${sleeper.pid}\n`);
    const r = await cli('svid', 'fetch', '--write', dir, '--signal', 'HUP', '--pid-file', join(root, 'sleeper.pid'));
    expect(r.code, r.stderr).toBe(0);
    for (let i = 0; i < 100 && !existsSync(join(root, 'got-hup')); i++) await new Promise((res) => setTimeout(res, 50));
    expect(readFileSync(join(root, 'got-hup'), 'utf8')).toBe('hup\n');
  });
});

describe('svid watch --write --exec', () => {
  let watch: ChildProcess;
  let stdout = '';
  let stderr = '';
  const dir = () => join(root, 'watched');
  const log = () => join(root, 'exec.log');

  beforeAll(async () => {
    // The command sees the files already in place: it records the SPIFFE ID and key of what it found.
    const exec = `openssl x509 -in ${dir()}/svid.pem -noout -ext subjectAltName | grep -o 'URI:.*' >> ${log()}; openssl pkey -in ${dir()}/svid.key -pubout | sha256sum >> ${log()}`;
    watch = spawnCli(['svid', 'watch', '--socket', t.config.workloadSocket, '--json', '--write', dir(), '--spiffe-id', A, '--exec', exec], ENV);
    watch.stdout!.on('data', (d) => (stdout += d));
    watch.stderr!.on('data', (d) => (stderr += d));
    // The JSON line is printed once the command has run.
    for (let i = 0; i < 300 && !stdout.includes('\n'); i++) await new Promise((r) => setTimeout(r, 50));
  }, 30_000);
  afterAll(() => {
    watch?.kill('SIGTERM');
  });

  it('writes on the first update and runs the command once the files are in place', () => {
    const lines = readFileSync(log(), 'utf8').trim().split('\n');
    expect(lines[0], stderr).toBe(`URI:${A}`);
    expect(lines).toHaveLength(2);
    expect(JSON.parse(stdout.split('\n')[0]!).changed).toEqual(['bundle.pem', 'crl.pem', 'svid.key', 'svid.pem']);
  });

  it('rewrites and runs the command again when the CRL changes (a revocation elsewhere), keeping the key', async () => {
    // A live task that holds an SVID, so its revocation puts a serial on the CRL.
    const fetched = join(root, 'task-svid');
    const fetch = cliArgv('svid', 'fetch', '--socket', t.config.workloadSocket, '--write', fetched).map((a) => `'${a}'`).join(' ');
    const child = spawnCli(['run', '--admin-socket', t.config.adminSocket, '--socket', t.config.workloadSocket, '--agent', 'coder', '--task', 't-files', '--',
      '/bin/sh', '-c', `${fetch} && exec sleep 600`], ENV);
    try {
      for (let i = 0; i < 1200 && !existsSync(join(fetched, 'svid.pem')); i++) await new Promise((r) => setTimeout(r, 50));
      // Let the watcher finish its reaction to the task's start.
      for (let i = 0; i < 600 && readFileSync(log(), 'utf8').trim().split('\n').length !== stdout.trim().split('\n').length * 2; i++) await new Promise((r) => setTimeout(r, 50));
      const linesBefore = readFileSync(log(), 'utf8').trim().split('\n').length;
      const stdoutBefore = stdout.trim().split('\n').length;
      const before = readFileSync(join(dir(), 'crl.pem'), 'utf8');
      await t.admin.call('RevokeTask', { agent: 'coder', id: 't-files', reason: 'test' });
      // The JSON line is printed after the command ran.
      for (let i = 0; i < 600 && stdout.trim().split('\n').length < stdoutBefore + 1; i++) await new Promise((r) => setTimeout(r, 50));
      const lines = readFileSync(log(), 'utf8').trim().split('\n');
      expect(lines, stderr).toHaveLength(linesBefore + 2);
      expect(lines[linesBefore]).toBe(`URI:${A}`);
      expect(readFileSync(join(dir(), 'crl.pem'), 'utf8')).not.toBe(before);
      const last = JSON.parse(stdout.trim().split('\n').at(-1)!);
      expect(last.changed).toEqual(['crl.pem']);
    } finally {
      child.kill('SIGTERM');
    }
  });
});
