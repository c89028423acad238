import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';

export const REPO = join(import.meta.dirname, '..', '..');
export const CLI = join(REPO, 'src', 'cli', 'main.ts');

/** argv to run the agentid CLI from source. */
export const cliArgv = (...args: string[]) => [process.execPath, '--import', 'tsx', CLI, ...args];

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function runCli(args: string[], opts: { env?: NodeJS.ProcessEnv; wrap?: (argv: string[]) => { command: string; args: string[] } } = {}): Promise<CliResult> {
  const argv = cliArgv(...args);
  const { command, args: a } = opts.wrap ? opts.wrap(argv) : { command: argv[0]!, args: argv.slice(1) };
  return new Promise((resolve) => {
    const child = spawn(command, a, { cwd: REPO, env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('exit', (code) => resolve({ code: code ?? 128, stdout, stderr }));
  });
}

export function spawnCli(args: string[], env: NodeJS.ProcessEnv = {}): ChildProcess {
  const argv = cliArgv(...args);
  return spawn(argv[0]!, argv.slice(1), { cwd: REPO, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
}
