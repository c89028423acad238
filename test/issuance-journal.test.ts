/**
 * No certificate is handed out before its issuance record is durable (src/datastore/
 * issuance-journal.ts), end to end with real processes: a workload receives a new task SVID, the
 * server is SIGKILLed at once (well inside the interval in which issuance records wait in memory
 * for their batch), and after the restart a revocation of the task still lists that certificate's
 * serial in the CRLs every stream carries.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { WorkloadApiClient } from '../src/client/workload-client.js';
import { x509 } from '../src/ca/x509-lib.js';
import { REPO, startServerProcess } from './support/cli.js';
import { makeTempDir } from './support/server.js';

const TD = 'journal.example';
const FETCH_CLIENT = join(import.meta.dirname, 'support', 'fetch-client.ts');

describe('issuance records and a crash', { timeout: 120_000 }, () => {
  const dir = makeTempDir('agentid-journal-');
  const dataDir = join(dir, 'data');
  const configFile = join(dir, 'agentid.yaml');
  writeFileSync(configFile, [`trust_domain: ${TD}`, `data_dir: ${dataDir}`, 'log:', '  level: warn', ''].join('\n'));
  const children: ChildProcess[] = [];
  /** Process groups (the task's shell and the workload it starts). */
  const groups: number[] = [];
  afterAll(() => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    for (const pgid of groups) {
      try {
        process.kill(-pgid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  });

  const start = () => startServerProcess(configFile, dataDir, children);

  it('a certificate handed out just before a SIGKILL is on the CRL once its task is revoked after the restart', async () => {
    const first = await start();
    const socket = join(dataDir, 'workload.sock');
    // The test process reads CRLs through its own stream.
    await first.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${TD}/root`, selectors: ['unix:uid:0'] } });
    // The task's process: a shell that outlives the server, whose child fetches once the task exists.
    const watch = `read go; "${process.execPath}" --import tsx "${FETCH_CLIENT}" "${socket}" watch; sleep 600`;
    const shell = spawn('/bin/sh', ['-c', watch], { cwd: REPO, stdio: ['pipe', 'pipe', 'inherit'], detached: true });
    groups.push(shell.pid!);
    await first.admin.call('StartTask', { agent: 'coder', id: 't-crash', pid: shell.pid, descendants: true });
    const taskId = `spiffe://${TD}/agent/coder/task/t-crash`;

    const firstMessage = new Promise<{ ids: string[]; chainPem: string }>((resolve) => {
      let buf = '';
      shell.stdout!.on('data', (d) => {
        buf += d;
        for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
          const line = JSON.parse(buf.slice(0, nl));
          buf = buf.slice(nl + 1);
          if (line.ids?.[0] === taskId) resolve(line);
        }
      });
    });
    shell.stdin!.write('go\n');
    const handedOut = await firstMessage;
    first.child.kill('SIGKILL');
    await new Promise((r) => first.child.once('exit', r));
    first.admin.close();
    const serial = new X509Certificate(handedOut.chainPem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/)![0]).serialNumber.toLowerCase();

    const second = await start();
    try {
      await second.admin.call('RevokeTask', { agent: 'coder', id: 't-crash', reason: 'crash test' });
      const client = new WorkloadApiClient({ socketPath: socket });
      try {
        // The CRLs are re-signed on a turn after the call returns: look until they list it (the
        // test's timeout ends a wait for a serial that never comes).
        for (;;) {
          const ctx = await client.fetchX509Context();
          const listed = ctx.crls.flatMap((der) => new x509.X509Crl(der).entries.map((e) => e.serialNumber.toLowerCase().replace(/^0+/, '')));
          if (listed.includes(serial.replace(/^0+/, ''))) break;
          await new Promise((r) => setTimeout(r, 200));
        }
      } finally {
        client.close();
      }
    } finally {
      second.admin.close();
      second.child.kill('SIGTERM');
      await new Promise((r) => second.child.once('exit', r));
    }
    expect(handedOut.ids[0]).toBe(taskId);
  });
});
