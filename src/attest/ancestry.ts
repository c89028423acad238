import type { Logger } from '../common/logger.js';
import { DEFAULT_PROC_ROOT, readStat, type ProcessRef, type ProcStat } from './proc.js';

const MAX_ANCESTORS = 256;

/**
 * Walks PPid links up from `start`, nearest parent first, up to pid 1 (or the edge of this PID
 * namespace: ppid 0). A parent that started after its child cannot be the real parent: its PID
 * was reused after the real one exited, so the chain stops there rather than name a stranger.
 * Each entry carries its start time, so a task bound to a PID that was since reused never matches.
 * A parent that cannot be read (not gone: EACCES, EIO) truncates the chain, logged.
 */
export async function parentChain(start: ProcStat, read: (pid: number) => Promise<ProcStat | undefined>, logger: Logger): Promise<ProcessRef[]> {
  const chain: ProcessRef[] = [];
  let child = start;
  while (child.ppid > 0 && chain.length < MAX_ANCESTORS) {
    let parent: ProcStat | undefined;
    try {
      parent = await read(child.ppid);
    } catch (err) {
      logger.warn({ pid: child.ppid, err: (err as Error).message }, 'attest: cannot read ancestor; chain truncated');
      break;
    }
    if (!parent || BigInt(parent.startTime) > BigInt(child.startTime)) break;
    chain.push({ pid: parent.pid, startTime: parent.startTime });
    if (parent.pid === 1) break;
    child = parent;
  }
  return chain;
}

/**
 * The parent chains of many processes at once, as they are now (a pass over open streams when the
 * first task covering descendants appears): each process's stat is read once per call, however
 * many of the given processes share it as an ancestor (the connections of one program share
 * their whole chain). A process that is gone, or is no longer the one named (another start time),
 * gets an empty chain.
 */
export function parentChains(opts: { logger: Logger; procRoot?: string }): (processes: readonly ProcessRef[]) => Promise<ProcessRef[][]> {
  const procRoot = opts.procRoot ?? DEFAULT_PROC_ROOT;
  return async (processes) => {
    // Only for this call, so nothing read here outlives a few milliseconds.
    const seen = new Map<number, Promise<ProcStat | undefined>>();
    const read = (pid: number) => {
      let stat = seen.get(pid);
      if (!stat) seen.set(pid, (stat = readStat(pid, procRoot)));
      return stat;
    };
    const chains: ProcessRef[][] = [];
    for (const ref of processes) {
      let own: ProcStat | undefined;
      try {
        own = await read(ref.pid);
      } catch (err) {
        opts.logger.warn({ pid: ref.pid, err: (err as Error).message }, 'attest: cannot read process for its parent chain');
      }
      chains.push(own && own.startTime === ref.startTime ? await parentChain(own, read, opts.logger) : []);
    }
    return chains;
  };
}
