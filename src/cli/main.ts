import { createRequire } from 'node:module';
import { Command, CommanderError } from 'commander';
import { exitCodeFor } from './output.js';
import { registerLocalCommands } from './local-commands.js';
import { registerAdminCommands } from './admin-commands.js';
import { registerWorkloadCommands } from './workload-commands.js';
import { registerAuthorityCommands } from './authority-commands.js';
import { registerNodeCommands } from './node-commands.js';
import { registerHealthcheckCommand, registerServerCommand } from './server-command.js';
import { registerAgentCommand } from './agent-command.js';

export function buildProgram(): Command {
  const program = new Command('agentid')
    .description('SPIFFE workload identity CA for AI agents: per-task X.509 and JWT SVIDs over the Workload API')
    // package.json sits two levels up from src/cli and from dist/cli alike.
    .version((createRequire(import.meta.url)('../../package.json') as { version: string }).version, '--version', 'print the agentid version')
    .showHelpAfterError()
    .exitOverride();
  registerServerCommand(program);
  registerLocalCommands(program);
  registerAdminCommands(program);
  registerWorkloadCommands(program);
  registerAuthorityCommands(program);
  registerNodeCommands(program);
  registerHealthcheckCommand(program);
  registerAgentCommand(program);
  for (const cmd of program.commands) {
    cmd.exitOverride();
    for (const sub of cmd.commands) sub.exitOverride();
  }
  return program;
}

/** Runs the CLI; returns the exit code (0 ok, 2 usage or config error, 1 other failure). */
export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) {
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.help' || err.code === 'commander.version') return 0;
      return 2;
    }
    process.stderr.write(`agentid: ${err instanceof Error ? err.message : String(err)}\n`);
    return exitCodeFor(err);
  }
}

// Run directly (node --import tsx src/cli/main.ts ...), as tests and development do.
if (process.argv[1] && import.meta.url === new URL(`file://${process.argv[1]}`).href) {
  process.exitCode = await main(process.argv);
}
