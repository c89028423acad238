import { readFileSync } from 'node:fs';
import { lstat, readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { DEFAULT_PROC_ROOT, isAlive, procEntryIdentity, readProcessRef, type ProcessRef } from './proc.js';

/** What the task service asks about processes and cgroups before it binds a task to them. */
export interface ProcessInspector {
  /** Start time and owner of a live process, or undefined when there is no such process. */
  inspect(pid: number): Promise<{ pid: number; startTime: string; uid: number } | undefined>;
  /**
   * True while the process `ref` names runs (same PID, same start time; a zombie counts as gone).
   * On the real /proc a process found alive is remembered (LivenessMemo), so a zombie may be
   * reported alive for up to FULL_READ_EVERY - 1 more calls; a reaped or replaced process never is.
   */
  isAlive(ref: ProcessRef): Promise<boolean>;
  /**
   * The PIDs of every running process (one directory listing), for passes over many bound tasks
   * (tasks/liveness.ts). A PID in it may since have been reused: isAlive() tells. Optional: without
   * it each task is checked on its own.
   */
  runningPids?(): Promise<ReadonlySet<number>>;
  cgroupExists(path: string): Promise<boolean>;
  /**
   * The uids owning the processes in a cgroup v2 subtree (the cgroup and every cgroup below it),
   * or undefined when there is no such cgroup. A process that exits while it is read is skipped.
   */
  cgroupProcessOwners(path: string): Promise<Set<number> | undefined>;
}

/**
 * Where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup on a unified host,
 * /sys/fs/cgroup/unified (or wherever mountinfo says) on a hybrid one. Read once.
 */
export function cgroup2Mount(mountinfo = '/proc/self/mountinfo'): string {
  try {
    for (const line of readFileSync(mountinfo, 'utf8').split('\n')) {
      // "36 25 0:31 / /sys/fs/cgroup rw,... shared:9 - cgroup2 cgroup2 rw,..."
      const [left, right] = line.split(' - ');
      if (right?.startsWith('cgroup2 ')) {
        const mountPoint = left!.split(' ')[4];
        if (mountPoint) return mountPoint.replace(/\\040/g, ' ');
      }
    }
  } catch {
    // No mountinfo (not Linux): fall back to the usual place.
  }
  return '/sys/fs/cgroup';
}

/** A process remembered as alive is read in full again on every FULL_READ_EVERY-th check. */
export const FULL_READ_EVERY = 10;
/** Bound on what LivenessMemo remembers (one entry per bound process); beyond it, it starts over. */
export const MAX_REMEMBERED = 65_536;

/**
 * Makes repeated liveness checks of the same processes cheap. A liveness pass asks, every second,
 * whether each of thousands of bound processes still runs; reading and parsing /proc/PID/stat for
 * each was most of an idle server's CPU. A process found alive by a full read is remembered with
 * the identity of its /proc/PID directory (procEntryIdentity), and later checks only stat that
 * directory: while it is the same directory, the PID has not been reaped and reused, so the start
 * time read then still holds. The identity is read before the full read, so a directory that
 * changed in between never matches later. What a stat cannot see is a process that exited and is
 * not yet reaped (a zombie keeps its directory), hence a full read every FULL_READ_EVERY checks.
 */
export class LivenessMemo {
  private readonly known = new Map<number, { startTime: string; entry: string; quickChecks: number }>();

  constructor(private readonly procRoot: string = DEFAULT_PROC_ROOT) {}

  async isAlive(ref: ProcessRef): Promise<boolean> {
    const entry = procEntryIdentity(this.procRoot, ref.pid);
    if (entry === 'none') {
      this.known.delete(ref.pid);
      return false;
    }
    const memo = this.known.get(ref.pid);
    if (memo && memo.startTime === ref.startTime && memo.entry === entry && memo.quickChecks < FULL_READ_EVERY - 1) {
      memo.quickChecks++;
      return true;
    }
    const alive = await isAlive(ref, this.procRoot);
    if (!alive) {
      this.known.delete(ref.pid);
      return false;
    }
    if (this.known.size >= MAX_REMEMBERED && !this.known.has(ref.pid)) this.known.clear();
    this.known.set(ref.pid, { startTime: ref.startTime, entry, quickChecks: 0 });
    return true;
  }

  /** How many processes are remembered (tests). */
  size(): number {
    return this.known.size;
  }
}

/** Safety valve against a hostile, very deep or wide cgroup tree: refuse rather than walk for ever. */
const MAX_CGROUPS_WALKED = 10_000;

/** Reads processes from /proc and cgroups from the cgroup v2 mount. */
export function systemProcessInspector(options: { cgroupMount?: string; procRoot?: string } = {}): ProcessInspector {
  const mount = options.cgroupMount ?? cgroup2Mount();
  const procRoot = options.procRoot ?? DEFAULT_PROC_ROOT;
  const dirOf = (path: string) => join(mount, path);
  // Only the kernel's /proc: a fixture tree's directories are not made per process.
  const memo = procRoot === DEFAULT_PROC_ROOT ? new LivenessMemo(procRoot) : undefined;

  const ownerOf = async (pid: number): Promise<number | undefined> => {
    try {
      return (await stat(join(procRoot, String(pid)))).uid;
    } catch {
      return undefined;
    }
  };

  return {
    async inspect(pid) {
      const ref = await readProcessRef(pid, procRoot);
      if (!ref) return undefined;
      const uid = await ownerOf(pid);
      return uid === undefined ? undefined : { pid, startTime: ref.startTime, uid };
    },
    isAlive: (ref) => (memo ? memo.isAlive(ref) : isAlive(ref, procRoot)),
    async runningPids() {
      const pids = new Set<number>();
      // Numeric entries of /proc are the processes (thread-group leaders) of this PID namespace.
      for (const name of await readdir(procRoot)) {
        const c = name.charCodeAt(0);
        if (c >= 48 && c <= 57) pids.add(Number(name));
      }
      return pids;
    },
    async cgroupExists(path) {
      try {
        return (await stat(dirOf(path))).isDirectory();
      } catch {
        return false;
      }
    },
    async cgroupProcessOwners(path) {
      const root = dirOf(path);
      try {
        if (!(await lstat(root)).isDirectory()) return undefined;
      } catch {
        return undefined;
      }
      const owners = new Set<number>();
      const pending = [root];
      let walked = 0;
      while (pending.length > 0) {
        const dir = pending.pop()!;
        if (++walked > MAX_CGROUPS_WALKED) throw new Error(`cgroup ${path}: more than ${MAX_CGROUPS_WALKED} cgroups below it`);
        let procs: string;
        let children: import('node:fs').Dirent[];
        try {
          [procs, children] = await Promise.all([readFile(join(dir, 'cgroup.procs'), 'utf8'), readdir(dir, { withFileTypes: true })]);
        } catch {
          continue; // removed while walking
        }
        for (const pidText of procs.split('\n')) {
          if (pidText === '') continue;
          const uid = await ownerOf(Number(pidText));
          if (uid !== undefined) owners.add(uid);
        }
        // Directories are child cgroups; cgroupfs has no symlinks, and lstat-typed entries are not followed.
        for (const child of children) if (child.isDirectory()) pending.push(join(dir, child.name));
      }
      return owners;
    },
  };
}
