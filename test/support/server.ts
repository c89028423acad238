import { mkdtempSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Clock } from '../../src/common/clock.js';
import { systemClock } from '../../src/common/system-clock.js';
import { createLogger } from '../../src/common/logger.js';
import { loadConfig } from '../../src/config/index.js';
import type { Config } from '../../src/config/types.js';
import { startServer, type RunningServer } from '../../src/server.js';
import { AdminClient } from '../../src/cli/admin-client.js';

export interface TestServer {
  dir: string;
  config: Config;
  server: RunningServer;
  admin: AdminClient;
  /** Stops the server (keeps the data directory, so a test can start it again). */
  stop(): Promise<void>;
  /** Stops and removes everything. */
  cleanup(): Promise<void>;
}

/** A temp directory other users can traverse (tests run clients as other Unix users). */
export function makeTempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  chmodSync(dir, 0o755);
  return dir;
}

/**
 * Starts a real server in this process on real Unix sockets, with its data directory under a temp
 * dir. `yaml` adds config (admin uids, orchestrators...); `clock` lets a test drive time.
 */
export async function startTestServer(opts: { dir?: string; yaml?: string; clock?: Clock; trustDomain?: string } = {}): Promise<TestServer> {
  const dir = opts.dir ?? makeTempDir('agentid-it-');
  const dataDir = join(dir, 'data');
  const configFile = join(dir, 'agentid.yaml');
  writeFileSync(configFile, [`trust_domain: ${opts.trustDomain ?? 'it.example'}`, `data_dir: ${dataDir}`, 'log:', '  level: warn', opts.yaml ?? ''].join('\n'));
  const config = loadConfig({ file: configFile, env: {}, flags: {} });
  const logger = createLogger({ level: process.env.AGENTID_TEST_LOG ?? 'silent' });
  const server = await startServer(config, { clock: opts.clock ?? systemClock, logger });
  const admin = new AdminClient(config.adminSocket);
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    admin.close();
    await server.stop();
  };
  return {
    dir,
    config,
    server,
    admin,
    stop,
    async cleanup() {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
