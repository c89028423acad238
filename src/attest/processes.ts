import { readFileSync } from 'node:fs';
import { lstat, readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { isAlive, readProcessRef, type ProcessRef } from './proc.js';

/** What the task service asks about processes and cgroups before it binds a task to them. */
export interface ProcessInspector {
  /** Start time and owner of a live process, or undefined when there is no such process. */
  inspect(pid: number): Promise<{ pid: number; startTime: string; uid: number } | undefined>;
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

/** Safety valve against a hostile, very deep or wide cgroup tree: refuse rather than walk for ever. */
const MAX_CGROUPS_WALKED = 10_000;

/** Reads processes from /proc and cgroups from the cgroup v2 mount. */
export function systemProcessInspector(options: { cgroupMount?: string; procRoot?: string } = {}): ProcessInspector {
  const mount = options.cgroupMount ?? cgroup2Mount();
  const procRoot = options.procRoot ?? '/proc';
  const dirOf = (path: string) => join(mount, path);

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
    isAlive: (ref) => isAlive(ref, procRoot),
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
