/**
 * Running the server as people and service managers do: `npm start` stopped by SIGTERM (npm runs
 * the start script through sh, which must not be left holding an orphaned server), SIGHUP
 * reloading, the banner and pretty logs on a terminal, JSON lines otherwise.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { makeTempDir } from '../support/server.js';
import { REPO, runCli, spawnCli } from '../support/cli.js';
import { waitFor } from '../support/wait.js';
import { AdminClient } from '../../src/cli/admin-client.js';
import { WorkloadApiClient } from '../../src/client/workload-client.js';

const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** The pid a running server wrote into its data directory, once it has. */
const serverPidIn = (dataDir: string) => () =>
  existsSync(join(dataDir, 'server.pid')) ? Number(readFileSync(join(dataDir, 'server.pid'), 'utf8')) : undefined;

const exitOf = (child: ChildProcess) => new Promise<number | null>((resolve) => (child.exitCode !== null ? resolve(child.exitCode) : child.once('exit', (code) => resolve(code))));

describe('running agentid', () => {
  const dir = makeTempDir('agentid-run-');
  const started: ChildProcess[] = [];
  /** Servers known by pid only (behind npm or script): killed even when a test failed half-way. */
  const serverPids: number[] = [];
  afterAll(() => {
    for (const c of started) if (c.exitCode === null) c.kill('SIGKILL');
    for (const pid of serverPids) if (alive(pid)) process.kill(pid, 'SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });

  it('SIGTERM to `npm start` stops the server itself (no orphan) and it shuts down cleanly', async () => {
    // A package with agentid's own start script; its bin runs the CLI from source (no build needed).
    const pkg = join(dir, 'pkg');
    mkdirSync(join(pkg, 'bin'), { recursive: true });
    const start = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')).scripts.start as string;
    writeFileSync(join(pkg, 'package.json'), JSON.stringify({ name: 'agentid-start-test', version: '0.0.0', private: true, type: 'module', scripts: { start } }));
    writeFileSync(
      join(pkg, 'bin', 'agentid.js'),
      `import { register } from ${JSON.stringify(join(REPO, 'node_modules/tsx/dist/esm/api/index.mjs'))};\n` +
        `register();\nconst { main } = await import(${JSON.stringify(join(REPO, 'src/cli/main.ts'))});\nprocess.exitCode = await main(process.argv);\n`,
    );
    const dataDir = join(dir, 'npm-data');
    const npm = spawn('npm', ['start', '--silent', '--', '--data-dir', dataDir, '--trust-domain', 'run.example'], { cwd: pkg, stdio: ['ignore', 'pipe', 'pipe'] });
    started.push(npm);
    let err = '';
    let out = '';
    npm.stderr!.on('data', (d) => (err += d));
    npm.stdout!.on('data', (d) => (out += d));
    const serverPid = await waitFor(serverPidIn(dataDir), 90_000, 'server.pid');
    serverPids.push(serverPid);
    expect(serverPid).not.toBe(npm.pid);
    npm.kill('SIGTERM');
    await exitOf(npm);
    await waitFor(() => !alive(serverPid), 30_000, 'the server process to exit');
    expect(err).toMatch(/"signal":"SIGTERM"/);
    expect(err).toMatch(/agentid server stopped/);
    expect(existsSync(join(dataDir, 'server.pid'))).toBe(false);
    // Not a terminal: no banner on stdout, and the server's log lines are JSON (npm may add its own notes).
    expect(out).toBe('');
    for (const line of err.trim().split('\n').filter((l) => !l.startsWith('npm '))) expect(() => JSON.parse(line), `${line}\n--- all stderr:\n${err}`).not.toThrow();
  });

  it('SIGHUP reloads the log level (in every module), names what needs a restart, survives a broken file', async () => {
    const dataDir = join(dir, 'hup-data');
    const config = join(dir, 'hup.yaml');
    const yaml = (level: string, extra = '') => `trust_domain: hup.example\ndata_dir: ${dataDir}\nlog:\n  level: ${level}\n${extra}`;
    writeFileSync(config, yaml('warn'));
    const server = spawnCli(['server', '--config', config]);
    started.push(server);
    let err = '';
    server.stderr!.on('data', (d) => (err += d));
    const socket = join(dataDir, 'workload.sock');
    await waitFor(() => existsSync(socket), 90_000, 'the socket');
    const pid = server.pid!;

    // At warn, a refused Workload API call is not logged...
    expect((await runCli(['healthcheck', '--socket', socket])).code).toBe(0);
    expect(err).not.toMatch(/request refused/);

    // A workload stream that stays open (an entry for this uid), to meet the new stream cap.
    const admin = new AdminClient(join(dataDir, 'admin.sock'));
    await admin.call('CreateEntry', { entry: { spiffe_id: 'spiffe://hup.example/hup', selectors: [`unix:uid:${process.getuid!()}`] } });
    admin.close();
    const workload = new WorkloadApiClient({ socketPath: socket });
    const firstStream = new AbortController();
    const opened = new Promise<void>((resolve) => {
      workload.watchX509Context(() => resolve(), () => undefined, firstStream.signal).catch(() => undefined);
    });
    await opened;

    writeFileSync(config, yaml('info', 'svid:\n  x509_ttl: 20m\nlimits:\n  max_streams_per_uid: 1\n  max_message_bytes: 2048\n'));
    process.kill(pid, 'SIGHUP');
    await waitFor(() => /reloaded on SIGHUP/.test(err), 30_000, 'the reload line');
    const lines = err.trim().split('\n').map((l) => JSON.parse(l));
    const reloaded = lines.find((l) => /reloaded on SIGHUP/.test(l.msg));
    expect(reloaded.applied).toEqual(['log.level: warn -> info', expect.stringMatching(/^limits: max_streams_per_uid \d+ -> 1$/)]);
    expect(reloaded.needsRestart).toEqual(['svid.x509_ttl', 'limits.max_message_bytes']);
    expect(lines.some((l) => l.level === 40 && /take effect after a restart: svid.x509_ttl, limits.max_message_bytes/.test(l.msg))).toBe(true);
    // The new cap holds at once: a second stream of this uid is refused, the open one stays.
    await expect(workload.fetchX509Context()).rejects.toMatchObject({ grpcCode: 8 /* RESOURCE_EXHAUSTED */ });

    // ...at info it is, by the Workload API's own child logger: the new level reached it.
    await expect(workload.fetchJwtSvid({ audience: ['hup'], spiffeId: 'spiffe://hup.example/not-mine' })).rejects.toMatchObject({ code: 'permission_denied' });
    firstStream.abort();
    workload.close();
    await waitFor(() => /request refused/.test(err), 30_000, 'a request refused line');
    expect(err).toMatch(/"api":"workload"[^\n]*request refused|request refused[^\n]*"api":"workload"/);

    writeFileSync(config, 'log: [this is: not valid');
    process.kill(pid, 'SIGHUP');
    await waitFor(() => /SIGHUP: configuration not reloaded/.test(err), 30_000, 'the refusal line');
    expect(alive(pid)).toBe(true);
    expect((await runCli(['healthcheck', '--socket', socket])).code).toBe(0);

    server.kill('SIGTERM');
    expect(await exitOf(server)).toBe(0);
  });

  it('on a terminal: a banner with the sockets and the next commands, and pretty logs', async () => {
    const dataDir = join(dir, 'tty-data');
    // script(1) gives the server a pseudo-terminal for stdout and stderr.
    const cmd = [process.execPath, '--import', 'tsx', join(REPO, 'src/cli/main.ts'), 'server', '--data-dir', dataDir, '--trust-domain', 'tty.example']
      .map((a) => `'${a}'`).join(' ');
    const tty = spawn('script', ['-qfec', cmd, '/dev/null'], { cwd: REPO, stdio: ['pipe', 'pipe', 'pipe'] });
    started.push(tty);
    let out = '';
    tty.stdout!.on('data', (d) => (out += d));
    const pid = await waitFor(serverPidIn(dataDir), 90_000, 'server.pid');
    serverPids.push(pid);
    await waitFor(() => /Next, in another terminal/.test(out), 30_000, 'the banner');
    expect(out).toMatch(/agentid server \d+ is up: trust domain tty\.example/);
    expect(out).toContain(`Workload API  ${join(dataDir, 'workload.sock')}`);
    expect(out).toContain(`npx agentid entry create --data-dir ${dataDir} --spiffe-id spiffe://tty.example/myservice`);
    expect(out).toContain(`npx agentid svid fetch --socket ${join(dataDir, 'workload.sock')}`);
    // pino-pretty, not JSON: "INFO" with the message, no {"level":30 objects.
    await waitFor(() => /INFO.*agentid server started/.test(out), 30_000, 'a pretty log line');
    expect(out).not.toMatch(/"level":30/);
    process.kill(pid, 'SIGTERM');
    await waitFor(() => !alive(pid), 30_000, 'the server to exit');
  });
});

describe('contrib/systemd/agentid.service', () => {
  it.runIf(spawnSync('systemd-analyze', ['--version']).status === 0)('passes systemd-analyze verify', () => {
    const dir = makeTempDir('agentid-unit-');
    // verify resolves ExecStart: point it at a real executable in a copy of the unit.
    const unit = readFileSync(join(REPO, 'contrib/systemd/agentid.service'), 'utf8').replace(/^ExecStart=\S+/m, `ExecStart=${process.execPath}`);
    writeFileSync(join(dir, 'agentid.service'), unit);
    const r = spawnSync('systemd-analyze', ['verify', join(dir, 'agentid.service')], { encoding: 'utf8' });
    rmSync(dir, { recursive: true, force: true });
    // Warnings about the test machine (no agentid user, no systemd as PID 1) are not about the unit.
    const problems = (r.stderr + r.stdout).split('\n').filter((l) => l.trim() && !/Failed to resolve user|not been booted with systemd|is not running|System has not been booted|Failed to (?:connect|open)|Bus|D-Bus|\/run\/systemd/i.test(l));
    expect(problems, r.stderr).toEqual([]);
  });
});
