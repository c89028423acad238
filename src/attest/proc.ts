import { readFileSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { unavailable } from '../common/errors.js';

/**
 * A process named so that PID reuse cannot alias it: the kernel never gives the same PID to two
 * processes with the same start time (clock ticks since boot, field 22 of /proc/PID/stat).
 * startTime is a decimal string because it may exceed 2^53 on long-running hosts with high HZ.
 */
export interface ProcessRef {
  pid: number;
  startTime: string;
}

export interface ProcStat {
  pid: number;
  comm: string;
  /** One letter: R, S, D, Z, T, ... */
  state: string;
  ppid: number;
  startTime: string;
}

export const DEFAULT_PROC_ROOT = '/proc';

/**
 * Parses /proc/PID/stat. comm (field 2) is free text from the process itself: it may hold
 * spaces and ')' (`prctl(PR_SET_NAME, "a) 1 2")`), so split after the LAST ')', never on spaces
 * from the start.
 */
export function parseStat(text: string): ProcStat {
  const open = text.indexOf('(');
  const close = text.lastIndexOf(')');
  if (open <= 0 || close < open) throw new Error('proc stat: no "(comm)" field');
  const pid = Number(text.slice(0, open).trim());
  const rest = text.slice(close + 1).trim().split(' ');
  // rest[0] is field 3 (state), so field N is rest[N - 3].
  const state = rest[0];
  const ppid = rest[1];
  const startTime = rest[19];
  if (!Number.isSafeInteger(pid) || pid <= 0) throw new Error('proc stat: bad pid field');
  if (state === undefined || !/^[A-Za-z]$/.test(state)) throw new Error('proc stat: bad state field');
  if (ppid === undefined || !/^\d+$/.test(ppid)) throw new Error('proc stat: bad ppid field');
  if (startTime === undefined || !/^\d+$/.test(startTime)) throw new Error('proc stat: bad starttime field');
  return { pid, comm: text.slice(open + 1, close), state, ppid: Number(ppid), startTime };
}

/** ENOENT: no such PID; ESRCH: the process died while its /proc file was open. */
export function isGoneError(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ENOENT' || code === 'ESRCH';
}

function goneOrThrow(err: unknown, pid: number, name: string): undefined {
  if (isGoneError(err)) return undefined;
  throw unavailable(`workload attestation: cannot read /proc/${pid}/${name}`, err);
}

/**
 * Reads a /proc/PID file; undefined when the process is gone. Other failures (EACCES, EIO)
 * throw 'unavailable': we could not look, which is not the same as "nothing there".
 */
export async function readProcFile(procRoot: string, pid: number, name: string): Promise<string | undefined> {
  // The kernel's procfs is generated from memory and never waits on a disk: a synchronous read
  // costs microseconds, where a thread-pool round trip per file made attestation several times
  // slower. Any other root (test fixtures, possibly FIFOs) is read asynchronously.
  if (procRoot === DEFAULT_PROC_ROOT) return readProcFileSync(procRoot, pid, name);
  try {
    return await readFile(join(procRoot, String(pid), name), 'utf8');
  } catch (err) {
    return goneOrThrow(err, pid, name);
  }
}

/**
 * readProcFile without waiting, for the checks of a reused attestation (Attestor.stillDescribes),
 * whatever the root: those read files attestation already read once.
 */
export function readProcFileSync(procRoot: string, pid: number, name: string): string | undefined {
  try {
    return readFileSync(join(procRoot, String(pid), name), 'utf8');
  } catch (err) {
    return goneOrThrow(err, pid, name);
  }
}

/** The stat of a live process; undefined when it is gone or a zombie (exited, not yet reaped). */
export async function readStat(pid: number, procRoot: string = DEFAULT_PROC_ROOT): Promise<ProcStat | undefined> {
  if (!Number.isSafeInteger(pid) || pid <= 0) return undefined;
  const text = await readProcFile(procRoot, pid, 'stat');
  if (text === undefined || text.length === 0) return undefined;
  let stat: ProcStat;
  try {
    stat = parseStat(text);
  } catch (err) {
    throw unavailable(`workload attestation: /proc/${pid}/stat is malformed`, err);
  }
  if (stat.pid !== pid) throw unavailable(`workload attestation: /proc/${pid}/stat names pid ${stat.pid}`);
  if (stat.state === 'Z' || stat.state === 'X' || stat.state === 'x') return undefined;
  return stat;
}

export async function readProcessRef(pid: number, procRoot: string = DEFAULT_PROC_ROOT): Promise<ProcessRef | undefined> {
  const stat = await readStat(pid, procRoot);
  return stat && { pid: stat.pid, startTime: stat.startTime };
}

/** True while the process `ref` names is running: same PID and same start time. */
export async function isAlive(ref: ProcessRef, procRoot: string = DEFAULT_PROC_ROOT): Promise<boolean> {
  const now = await readProcessRef(ref.pid, procRoot);
  return now !== undefined && now.startTime === ref.startTime;
}

/**
 * Which /proc/PID directory the kernel has for this PID now, as "dev:ino:ctime"; "none" when
 * there is none. procfs makes a new inode for each process's directory, so while this string stays
 * the same the PID has not been reaped and handed to another process. One stat, no file read.
 * A zombie keeps its directory: this says nothing about whether the process still runs.
 */
export function procEntryIdentity(procRoot: string, pid: number): string {
  try {
    const st = statSync(join(procRoot, String(pid)), { bigint: true });
    return `${st.dev}:${st.ino}:${st.ctimeNs}`;
  } catch {
    return 'none';
  }
}

/** Supplementary group IDs from the "Groups:" line of /proc/PID/status (may be empty). */
export function parseStatusGroups(text: string): number[] {
  const line = text.split('\n').find((l) => l.startsWith('Groups:'));
  if (line === undefined) throw new Error('proc status: no Groups line');
  const ids = line.slice('Groups:'.length).trim();
  if (ids === '') return [];
  return ids.split(/\s+/).map((g) => {
    if (!/^\d+$/.test(g)) throw new Error('proc status: bad Groups entry');
    return Number(g);
  });
}

/**
 * The cgroup v2 path from /proc/PID/cgroup: the "0::/path" line. On a v1-only host there is no
 * such line and the answer is null; v1 controller lines ("4:memory:/x") are ignored because
 * they differ per controller and are not one place in one hierarchy.
 */
export function parseCgroupV2(text: string): string | null {
  for (const line of text.split('\n')) {
    if (line.startsWith('0::')) {
      const path = line.slice(3);
      return path.startsWith('/') ? path : null;
    }
  }
  return null;
}
