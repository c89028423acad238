/**
 * A crash loses nothing acknowledged: a real server process takes admin writes (entries, task
 * starts, revocations) from several concurrent callers and is SIGKILLed at a random moment, five
 * times; after each restart every write it acknowledged is there, and the revoked tasks' SPIFFE
 * IDs are on the deny list. (What was in flight when it died may or may not be there: it was
 * never acknowledged.)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { startServerProcess } from './support/cli.js';
import { makeTempDir } from './support/server.js';

const TD = 'crash.example';
const KILLS = 5;

describe('SIGKILL under load', { timeout: 600_000 }, () => {
  const dir = makeTempDir('agentid-crash-');
  const dataDir = join(dir, 'data');
  const configFile = join(dir, 'agentid.yaml');
  writeFileSync(configFile, [`trust_domain: ${TD}`, `data_dir: ${dataDir}`, 'log:', '  level: warn', ''].join('\n'));
  // A live process for tasks to bind to, for the whole test.
  const holder = spawn('sleep', ['600']);
  const children: ChildProcess[] = [holder];
  afterAll(() => {
    for (const c of children) c.kill('SIGKILL');
  });

  const start = () => startServerProcess(configFile, dataDir, children);

  it(`keeps every acknowledged entry, task and revocation across ${KILLS} SIGKILLs`, async () => {
    const entries = new Set<string>();
    const tasks = new Set<string>();
    const revoked = new Set<string>();
    let n = 0;

    for (let round = 0; round < KILLS; round++) {
      const { child, admin } = await start();
      // Everything acknowledged so far survived the previous kill.
      const listed = new Set((await admin.call('ListEntries', {})).entries.map((e: { spiffe_id: string }) => e.spiffe_id));
      for (const id of entries) expect(listed.has(id), `entry ${id} after kill ${round}`).toBe(true);
      const deny = new Set((await admin.call('ListRevocations', {})).revocations.map((r: { spiffe_id: string }) => r.spiffe_id));
      for (const id of revoked) expect(deny.has(id), `revocation of ${id} after kill ${round}`).toBe(true);
      for (const key of tasks) {
        const [agent, id] = key.split('/');
        const task = await admin.call('GetTask', { agent, id });
        if (revoked.has(task.spiffe_id)) expect(task.state).toBe('revoked');
      }

      // Load: four callers writing as fast as the server acknowledges, until the kill.
      let dead = false;
      const caller = async (k: number) => {
        while (!dead) {
          const i = n++;
          try {
            if (k === 0) {
              const spiffeId = `spiffe://${TD}/w/${i}`;
              await admin.call('CreateEntry', { entry: { spiffe_id: spiffeId, selectors: [`unix:uid:${60000 + i}`] } });
              entries.add(spiffeId);
            } else if (k === 1 && tasks.size > revoked.size) {
              const key = [...tasks].find((t) => !revoked.has(`spiffe://${TD}/agent/${t.split('/')[0]}/task/${t.split('/')[1]}`))!;
              const [agent, id] = key.split('/');
              const task = await admin.call('RevokeTask', { agent, id, reason: 'crash test' });
              revoked.add(task.spiffe_id);
            } else {
              const id = `t-${i}`;
              await admin.call('StartTask', { agent: `agent-${k}`, id, pid: holder.pid, ttl_seconds: 3600 });
              tasks.add(`agent-${k}/${id}`);
            }
          } catch {
            // In flight when the server died: never acknowledged, so nothing is promised about it.
            if (!dead) await new Promise((r) => setTimeout(r, 10));
          }
        }
      };
      const load = Promise.all([0, 1, 2, 3].map(caller));
      await new Promise((r) => setTimeout(r, 500 + Math.floor(Math.random() * 1500)));
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
      dead = true;
      await load;
      admin.close();
    }
    expect(entries.size).toBeGreaterThan(KILLS);
    expect(revoked.size).toBeGreaterThan(0);

    // A last clean start reads everything back once more.
    const { child, admin } = await start();
    const listed = new Set((await admin.call('ListEntries', {})).entries.map((e: { spiffe_id: string }) => e.spiffe_id));
    for (const id of entries) expect(listed.has(id)).toBe(true);
    admin.close();
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
  });
});
