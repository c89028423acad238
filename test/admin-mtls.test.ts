/**
 * The CLI reaching the admin API over mTLS (--admin-url): a real server with admin.tcp, real CLI
 * processes authenticating with the SVID they fetch from the Workload API, and verifying the
 * server's SVID and SPIFFE ID themselves.
 */
import { spawnSync } from 'node:child_process';
import { createServer, type AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AdminClient, fetchCallerSvid, parseAdminUrl } from '../src/cli/admin-client.js';
import { isAgentIdError } from '../src/common/errors.js';
import { runCli, type CliResult } from './support/cli.js';
import { startTestServer, type TestServer } from './support/server.js';

const TD = 'mtls.example';
const ALICE = `spiffe://${TD}/ops/alice`; // mapped to the admin role
const BOB = `spiffe://${TD}/ops/bob`; // a valid SVID with no admin role

/** A port free at the time of asking (the server binds it moments later). */
async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const { port } = srv.address() as AddressInfo;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

let t: TestServer;
let url: string;
let entryIds: string[];
// Nothing from the developer's environment may choose the transport or the sockets.
const baseEnv = () => ({
  AGENTID_ADMIN_SOCKET: undefined,
  AGENTID_ADMIN_URL: undefined,
  AGENTID_CONFIG: undefined,
  AGENTID_DATA_DIR: undefined,
  SPIFFE_ENDPOINT_SOCKET: undefined,
});
const cli = (args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> =>
  runCli(args, { env: { ...baseEnv(), ...env } });

const noKeyMaterial = (r: CliResult) => expect(`${r.stdout}${r.stderr}`).not.toMatch(/PRIVATE KEY|BEGIN/);

beforeAll(async () => {
  const port = await freePort();
  url = `https://127.0.0.1:${port}`;
  t = await startTestServer({
    trustDomain: TD,
    yaml: ['admin:', '  tcp:', `    listen: "127.0.0.1:${port}"`, '    spiffe_roles:', `      - spiffe_id: ${ALICE}`, '        role: admin'].join('\n'),
  });
  // Alice's entry is created first, so her SVID is this process's default one (svids[0]).
  entryIds = [];
  for (const id of [ALICE, BOB]) {
    const e = await t.admin.call('CreateEntry', { entry: { spiffe_id: id, selectors: ['unix:uid:0'] } });
    entryIds.push(e.id);
  }
});

afterAll(async () => {
  await t?.cleanup();
});

describe('agentid admin commands over --admin-url', () => {
  it('lists entries as the mapped admin SVID', async () => {
    const r = await cli(['entry', 'list', '--json', '--admin-url', url, '--socket', t.config.workloadSocket]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const listed = JSON.parse(r.stdout) as { id: string; spiffe_id: string }[];
    expect(listed.map((e) => e.id).sort()).toEqual([...entryIds].sort());
    expect(listed.map((e) => e.spiffe_id).sort()).toEqual([ALICE, BOB]);
  });

  it('is refused by the server as an SVID without a role (chosen with --admin-spiffe-id, URL from AGENTID_ADMIN_URL)', async () => {
    const r = await cli(['entry', 'list', '--json', '--admin-spiffe-id', BOB], { AGENTID_ADMIN_URL: url, SPIFFE_ENDPOINT_SOCKET: `unix://${t.config.workloadSocket}` });
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/ListEntries: caller has no role on the admin API/);
    noKeyMaterial(r);
  });

  it('refuses a server whose SPIFFE ID is not the expected one, naming both', async () => {
    const wrong = `spiffe://${TD}/agentid/impostor`;
    const r = await cli(['entry', 'list', '--json', '--admin-url', url, '--socket', t.config.workloadSocket, '--admin-server-id', wrong]);
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain(`presented SPIFFE ID spiffe://${TD}/agentid/server, expected ${wrong}`);
    noKeyMaterial(r);
  });

  it.each([
    ['both transports named', ['--admin-url', 'https://127.0.0.1:1', '--admin-socket', '/tmp/x.sock'], /--admin-url and --admin-socket are mutually exclusive/],
    ['an mTLS-only flag without --admin-url', ['--admin-socket', '/tmp/x.sock', '--admin-server-id', `spiffe://${TD}/agentid/server`], /--admin-server-id applies only with --admin-url/],
    ['a plain-text URL', ['--admin-url', 'http://127.0.0.1:1'], /must use https:\/\//],
  ])('exits 2 on a usage error: %s', async (_name, args, message) => {
    const r = await cli(['entry', 'list', ...args]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(message);
  });
});

describe('AdminClient over mTLS (in process)', () => {
  it('calls the same API as over the Unix socket', async () => {
    const { svid, crls } = await fetchCallerSvid({ socketPath: t.config.workloadSocket });
    expect(svid.spiffeId).toBe(ALICE);
    const client = new AdminClient({ url, svid, crls });
    try {
      const overTcp = await client.call('ListEntries', {});
      const overUnix = await t.admin.call('ListEntries', {});
      expect(overTcp.entries).toEqual(overUnix.entries);
      expect(await client.call('WhoAmI', {})).toMatchObject({ role: 'admin', caller: `${ALICE} (admin)` });
    } finally {
      client.close();
    }
  });

  it('refuses a server whose chain does not lead to the caller\'s own bundle', async () => {
    const { svid } = await fetchCallerSvid({ socketPath: t.config.workloadSocket });
    // A CA of nobody's trust domain stands in for the bundle: the real server cannot chain to it.
    const ca = spawnSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', '/dev/null',
      '-subj', '/CN=unrelated CA', '-days', '1', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign', '-outform', 'DER']);
    expect(ca.status).toBe(0);
    const client = new AdminClient({ url, svid: { ...svid, bundleDer: [ca.stdout] } });
    try {
      const err = await client.call('ListEntries', {}).catch((e: unknown) => e);
      expect(isAgentIdError(err)).toBe(true);
      expect((err as Error).message).toMatch(/admin API at https:\/\/127\.0\.0\.1:\d+ unavailable.*(local issuer|verify the first certificate)/);
    } finally {
      client.close();
    }
  });

  it('refuses a server ID outside the caller\'s trust domain before connecting', async () => {
    const { svid } = await fetchCallerSvid({ socketPath: t.config.workloadSocket });
    expect(() => new AdminClient({ url, svid, serverId: 'spiffe://other.example/agentid/server' })).toThrow(/not in the caller's trust domain mtls\.example/);
  });

  it('names the SVIDs it holds when asked for one it does not', async () => {
    const err = await fetchCallerSvid({ socketPath: t.config.workloadSocket, spiffeId: `spiffe://${TD}/ops/carol` }).catch((e: unknown) => e);
    expect(isAgentIdError(err, 'not_found')).toBe(true);
    expect((err as Error).message).toContain(`holds no X.509-SVID for spiffe://${TD}/ops/carol (it holds: ${ALICE}, ${BOB})`);
  });
});

describe('parseAdminUrl', () => {
  it.each([
    ['https://127.0.0.1:8444', { host: '127.0.0.1', port: 8444 }],
    ['https://admin.internal:8444/', { host: 'admin.internal', port: 8444 }],
    ['https://[::1]:8444', { host: '::1', port: 8444 }],
    ['https://admin.internal', { host: 'admin.internal', port: 443 }],
  ])('accepts %s', (text, expected) => {
    expect(parseAdminUrl(text)).toEqual(expected);
  });

  it.each([
    ['not-a-url', /is not a URL/],
    ['http://127.0.0.1:8444', /must use https/],
    ['https://u:p@127.0.0.1:8444', /must not carry credentials/],
    ['https://127.0.0.1:8444/admin', /no path, query or fragment/],
    ['https://127.0.0.1:8444?x=1', /no path, query or fragment/],
  ])('refuses %s', (text, message) => {
    expect(() => parseAdminUrl(text)).toThrow(message);
  });
});
