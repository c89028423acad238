/**
 * Debian's nginx, as a throwaway process with its own prefix, serving mTLS from the files that
 * `svid watch --write --signal HUP --pid-file nginx.pid` keeps up to date: `ssl_verify_client on`
 * and `ssl_crl` (OpenSSL's CRL check of every certificate in the chain). A task's curl succeeds;
 * after `task revoke`, the watcher rewrites crl.pem, HUPs nginx, and the same curl is refused.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { spawnCli } from './support/cli.js';
import { makeTempDir, startTestServer, type TestServer } from './support/server.js';

const TD = 'nginx.example';
const SERVICE = `spiffe://${TD}/svc/nginx`;
const TASK = `spiffe://${TD}/agent/coder/task/t-nginx`;
const ENV = { AGENTID_CONFIG: undefined, AGENTID_DATA_DIR: undefined, AGENTID_TRUST_DOMAIN: undefined, SPIFFE_ENDPOINT_SOCKET: undefined };
const NGINX = ['/usr/sbin/nginx', '/usr/bin/nginx'].find(existsSync);

let t: TestServer;
let root: string;
let port: number;
let nginx: ChildProcess | undefined;
let watch: ChildProcess | undefined;
let watchLog = '';
let task: ChildProcess | undefined;

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port: p } = s.address() as { port: number };
      s.close(() => resolve(p));
    });
    s.on('error', reject);
  });

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The task's curl: its own SVID and key, the trust bundle to check nginx with. */
function curl(): { status: string; out: string } {
  const client = join(root, 'client');
  const r = spawnSync('curl', [
    '-sS', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '10',
    '--resolve', `localhost:${port}:127.0.0.1`, '--cacert', join(client, 'bundle.pem'),
    '--cert', join(client, 'svid.pem'), '--key', join(client, 'svid.key'), `https://localhost:${port}/`,
  ], { encoding: 'utf8' });
  return { status: r.stdout.trim(), out: `${r.stdout}${r.stderr}` };
}

beforeAll(async () => {
  root = makeTempDir('agentid-nginx-');
  t = await startTestServer({ trustDomain: TD });
  await t.admin.call('CreateEntry', { entry: { spiffe_id: SERVICE, selectors: ['unix:uid:0'], dns_names: ['localhost'] } });
  port = await freePort();

  // The service's files, kept current by the watcher, which HUPs nginx after each change.
  const svc = join(root, 'svc');
  const prefix = join(root, 'nginx');
  mkdirSync(join(prefix, 'logs'), { recursive: true });
  watch = spawnCli(['svid', 'watch', '--socket', t.config.workloadSocket, '--json', '--write', svc, '--spiffe-id', SERVICE,
    '--signal', 'HUP', '--pid-file', join(prefix, 'nginx.pid')], ENV);
  watch.stdout!.on('data', (d) => (watchLog += d));
  watch.stderr!.on('data', (d) => (watchLog += d));
  for (let i = 0; i < 300 && !existsSync(join(svc, 'svid.pem')); i++) await sleep(50);

  writeFileSync(join(prefix, 'nginx.conf'), `
daemon off;
master_process on;
worker_processes 1;
pid ${prefix}/nginx.pid;
error_log ${prefix}/logs/error.log info;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path ${prefix}/body; proxy_temp_path ${prefix}/proxy; fastcgi_temp_path ${prefix}/fastcgi;
  uwsgi_temp_path ${prefix}/uwsgi; scgi_temp_path ${prefix}/scgi;
  server {
    listen 127.0.0.1:${port} ssl;
    server_name localhost;
    ssl_certificate ${svc}/svid.pem;
    ssl_certificate_key ${svc}/svid.key;
    ssl_client_certificate ${svc}/bundle.pem;
    ssl_verify_client on;
    ssl_verify_depth 4;
    ssl_crl ${svc}/crl.pem;
    location / { return 200 "hello\\n"; }
  }
}
`);
  nginx = spawn(NGINX!, ['-p', prefix, '-c', join(prefix, 'nginx.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
  nginx.stderr!.on('data', (d) => (watchLog += `nginx: ${d}`));
  for (let i = 0; i < 200 && !existsSync(join(prefix, 'nginx.pid')); i++) await sleep(50);

  // The task: `agentid run` binds it, then its command fetches its SVID into the client directory
  // and stays alive (a task ends, and its SVIDs are revoked, when its command exits).
  const fetch = [process.execPath, '--import', 'tsx', 'src/cli/main.ts', 'svid', 'fetch', '--write', join(root, 'client'), '--spiffe-id', TASK].map((a) => `'${a}'`).join(' ');
  task = spawnCli(['run', '--admin-socket', t.config.adminSocket, '--socket', t.config.workloadSocket, '--agent', 'coder', '--task', 't-nginx', '--',
    '/bin/sh', '-c', `${fetch} && exec sleep 600`], ENV);
  let taskErr = '';
  task.stderr!.on('data', (d) => (taskErr += d));
  for (let i = 0; i < 1200 && !existsSync(join(root, 'client', 'svid.pem')); i++) await sleep(50);
  if (!existsSync(join(root, 'client', 'svid.pem'))) throw new Error(`the task wrote no SVID: ${taskErr}`);
  // The watcher's reaction to the task's start (new CRLs, a reload) has settled when its last line is a few ticks old.
  await sleep(1000);
}, 60_000);

afterAll(async () => {
  task?.kill('SIGTERM');
  nginx?.kill('SIGQUIT');
  watch?.kill('SIGTERM');
  await t?.cleanup();
  spawnSync('rm', ['-rf', root]);
});

describe.runIf(NGINX)('nginx with ssl_verify_client and ssl_crl from svid watch --write', () => {
  it('accepts the task\'s curl while the task is valid', async () => {
    // A reload the watcher triggered (the task's start changed the CRLs) may still be swapping
    // workers: only a connection that never got an HTTP answer ("000") is asked again.
    let r = curl();
    for (let i = 0; i < 50 && r.status === '000'; i++) {
      await sleep(100);
      r = curl();
    }
    expect(r.status, `${r.out}\n${watchLog}\n${readFileSync(join(root, 'nginx', 'logs', 'error.log'), 'utf8').slice(-2000)}`).toBe('200');
  });

  it('refuses the same curl after task revoke, once the watcher has rewritten crl.pem and HUPed nginx', async () => {
    await t.admin.call('RevokeTask', { agent: 'coder', id: 't-nginx', reason: 'nginx test' });
    // The reload is asynchronous (new workers replace old ones); ask until the answer changes.
    let r = curl();
    for (let i = 0; i < 100 && r.status === '200'; i++) {
      await sleep(100);
      r = curl();
    }
    expect(r.status, `${r.out}\n${watchLog}`).toBe('400');
    expect(readFileSync(join(root, 'nginx', 'logs', 'error.log'), 'utf8')).toMatch(/certificate revoked/);
  });
});
