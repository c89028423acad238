import { readlinkSync, statSync } from 'node:fs';
import { readlink, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { permissionDenied } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { normalizeSelectors, parseSelector, type Selector } from '../spiffe/selector.js';
import { AccountNames } from './accounts.js';
import { ExecutableHasher } from './exe-hash.js';
import { parentChain } from './ancestry.js';
import { closePidfd, pidfdIsAlive, type PeerCredentials } from './peercred.js';
import {
  DEFAULT_PROC_ROOT,
  isGoneError,
  parseCgroupV2,
  parseStatusGroups,
  procEntryIdentity,
  readProcFile,
  readProcFileSync,
  readProcessRef,
  readStat,
  type ProcessRef,
  type ProcStat,
} from './proc.js';

export type { PeerCredentials } from './peercred.js';
export type { ProcessRef } from './proc.js';
export { isAlive, readProcessRef } from './proc.js';

export interface Attestation {
  peer: PeerCredentials;
  process: ProcessRef;
  /** type "unix", normalized (sorted, de-duplicated). */
  selectors: Selector[];
  /** cgroup v2 path, null on a v1-only host. */
  cgroup: string | null;
  /** Parent chain, nearest first, up to pid 1 (or the edge of this PID namespace); empty unless asked for. */
  ancestors: ProcessRef[];
  /**
   * Whether the parent chain was read. When false, `ancestors` is empty because no task covered
   * descendants when this was asked, not because the process has none (see issuer/late-ancestors.ts).
   */
  ancestorsKnown: boolean;
  /** What the selectors were derived from that can change while the process lives (see stillDescribes). */
  facts: ProcessFacts;
}

/**
 * The facts behind an attestation that a process (or an administrator) can change without
 * changing its PID or start time. Comparing them is a handful of cheap reads; when they are all
 * unchanged, so is every selector an entry could match.
 */
export interface ProcessFacts {
  /**
   * Identity of this process's /proc/PID inode (dev, inode number, ctime), read while the process
   * was pinned: a process that exits and is reaped, and a new process given its PID, get another.
   */
  procEntry: string;
  /** Identity of the running executable (dev, inode, size, mtime, ctime): execve(2) changes it. */
  exe: string;
  /** /proc/PID/cgroup as read: moving the process to another cgroup changes it. */
  cgroupText: string;
  /** Identity of /etc/passwd and /etc/group: user: and group: names come from them. */
  accounts: string;
  withSha256: boolean;
  withAncestors: boolean;
}

export interface AttestOptions {
  /** Hash the executable for sha256: selectors (only when some entry uses them). */
  withSha256: boolean;
  /** Walk the parent chain (only when some task is bound with its descendants). Default true. */
  withAncestors?: boolean;
}

/** What Attestor.stillDescribes compares besides the process itself (see there). */
export interface RecheckNeeds {
  /** Some entry has a path: or sha256: selector (the only selectors the running executable decides). */
  executable: boolean;
  /** Some entry has a cgroup: selector, or some task is bound to a cgroup. */
  cgroup: boolean;
  /** Some entry has a user:, group: or supplementary_group: selector. */
  accountNames: boolean;
}

export const RECHECK_ALL: RecheckNeeds = Object.freeze({ executable: true, cgroup: true, accountNames: true });

/** Selector kinds whose values come from the running executable. */
const EXECUTABLE_KINDS = ['path', 'sha256'];
/** Selector kinds whose values come from /etc/passwd and /etc/group. */
const ACCOUNT_NAME_KINDS = ['user', 'group', 'supplementary_group'];

/**
 * What a reused attestation must compare, given the selector kinds entries use and whether some
 * task is bound to a cgroup. Tasks bind to a process (PID and start time, which execve(2) keeps)
 * or to a cgroup, never to an executable: only path: and sha256: selectors make an exec matter.
 */
export function recheckNeeds(entriesUse: (kind: string) => boolean, anyCgroupTask: boolean): RecheckNeeds {
  return {
    executable: EXECUTABLE_KINDS.some(entriesUse),
    cgroup: anyCgroupTask || entriesUse('cgroup'),
    accountNames: ACCOUNT_NAME_KINDS.some(entriesUse),
  };
}

export interface AttestorOptions {
  /** Default /proc; tests point it at a fixture tree. */
  procRoot?: string;
  /** Default /etc; where passwd and group are read for user:/group: selectors. */
  etcRoot?: string;
  /** Executables larger than this get no sha256 selector (logged). Default 256 MiB. */
  sha256MaxBytes?: number;
  /**
   * This server process's start time in /proc ticks (field 22 of /proc/self/stat): every
   * connection it accepts was made later (see describesConnector). Default: read from /proc;
   * with another procRoot (a fixture tree), unknown, so never relied on.
   */
  serverStartTime?: string;
  logger: Logger;
}

const DELETED_SUFFIX = ' (deleted)';

function processGone(pid: number) {
  return permissionDenied(`workload attestation: peer process ${pid} exited or its PID was reused during attestation`);
}

/**
 * Turns kernel-vouched peer credentials into selectors from /proc.
 *
 * Identity comes only from the kernel: uid/gid are the SO_PEERCRED values (fixed at connect
 * time), never the /proc view, which the process may have changed since with setuid(2).
 * Supplementary groups, the executable and the cgroup are read from /proc now.
 *
 * PID reuse. The sequence is: open a pidfd for the connector (SO_PEERPIDFD names the process
 * that called connect(), however late it is asked), read the start time, read everything else,
 * read the start time again, and check that the pidfd's process has not exited. A pidfd that is
 * still live at the end proves PID was the same process for the whole window (a PID is only
 * freed after its process exits), so every /proc read was about the connecting process. The
 * pidfd is closed when attestation ends: a connection holds no descriptor but its socket.
 * Remaining races, stated plainly:
 *  - Without a pidfd (kernel < 6.5) the connecting process could exit and its PID be reused
 *    between connect() and our first read; we would attest the newcomer. The start-time
 *    re-check only covers reuse during attestation.
 *  - The selectors describe the connector as it is now. A process that connects, hands the
 *    socket to a child, then execve()s a different binary is attested as the new binary, and
 *    the child holding the socket receives that identity. SO_PEERCRED names the connector,
 *    not whoever holds the fd later. This is the same limitation SPIRE's unix attestor has.
 *    An exec during attestation is refused (the executable's identity is read before and after).
 */
export class Attestor {
  private readonly procRoot: string;
  private readonly logger: Logger;
  private readonly accounts: AccountNames;
  private readonly hasher: ExecutableHasher;

  private serverStart: Promise<bigint | undefined> | undefined;

  constructor(opts: AttestorOptions) {
    this.procRoot = opts.procRoot ?? DEFAULT_PROC_ROOT;
    this.logger = opts.logger;
    if (opts.serverStartTime !== undefined) this.serverStart = Promise.resolve(BigInt(opts.serverStartTime));
    else if (this.procRoot !== DEFAULT_PROC_ROOT) this.serverStart = Promise.resolve(undefined);
    this.accounts = new AccountNames({ etcRoot: opts.etcRoot, logger: opts.logger });
    this.hasher = new ExecutableHasher({ maxBytes: opts.sha256MaxBytes, logger: opts.logger });
  }

  async attest(peer: PeerCredentials, opts: AttestOptions): Promise<Attestation> {
    const { pid } = peer;
    if (!Number.isSafeInteger(pid) || pid <= 0) {
      throw permissionDenied('workload attestation: peer has no process ID visible to this server');
    }
    const pidfd = this.pin(peer);
    try {
      return await this.attestPinned(peer, pidfd, opts);
    } finally {
      closePidfd(pidfd);
    }
  }

  /**
   * Whether `previous` still describes its process, checked on every call that reuses it, so it
   * must stay cheap: synchronous, a stat(2) or two (it was most of a cached FetchJWTSVID's time
   * when it read /proc twice). True means every selector an entry could match, and the cgroup,
   * are as they were; any doubt answers false (attest again).
   *
   * PID reuse (fail closed), in one stat(2) and no pidfd: procfs gives each process its own
   * /proc/PID inode, created when the directory is first looked up, with a fresh inode number
   * (get_next_ino) and the creation time as ctime. Every lookup revalidates that directory against
   * the process it was made for (pid_revalidate): once that process has been reaped (its PID free
   * for reuse), a lookup of /proc/PID drops it and makes a new inode for whatever has the PID now.
   * So the same (dev, inode, ctime) as at attestation, read after everything else, proves the
   * connector was not reaped before that read, and every earlier read was about it. (The inode
   * may also be replaced while the process lives, when the kernel evicts an unused one: then this
   * answers false and the caller attests again, which costs time, never safety.)
   *
   * Exec (fail closed where it can matter): execve(2) keeps PID and start time but changes the
   * running executable, which decides the path: and sha256: selectors and nothing else an entry
   * or task can match (uid and gid come from the socket, fixed at connect; supplementary groups,
   * the cgroup and a task's process binding outlive an exec). So stat(/proc/PID/exe), the
   * costlier of the two stats (it reaches the executable's own file system), is compared while
   * some entry uses those selectors (`recheck.executable`). The exe identity compared is always
   * the one read at attestation: the first call after an entry starts using path: or sha256:
   * sees any exec since the connection was attested, however long ago.
   *
   * Exit before reaping: a zombie keeps its /proc/PID inode, and has no executable. With the exe
   * compared, a zombie connector is refused here; without, it is served until it is reaped (as
   * while it ran: the socket outlived it only in a process it handed the socket to, which SECURITY.md
   * covers), and its tasks end on the liveness pass, which treats a zombie as gone.
   *
   * What a process or an administrator can change while the process lives is compared only when
   * some entry or task can depend on it (`recheck`): the cgroup (one read) and the account files
   * behind user:/group: names (two stats). The caller passes what the current entries and tasks
   * use; an attestation reused while they did not care keeps the old value, and the first call
   * after an entry or task starts depending on it compares it again. Supplementary groups are not
   * re-read (a process needs CAP_SETGID to change them).
   */
  stillDescribes(previous: Attestation, recheck: RecheckNeeds = RECHECK_ALL): boolean {
    const { pid } = previous.process;
    try {
      if (recheck.executable && this.executableIdentity(pid) !== previous.facts.exe) return false;
      if (recheck.cgroup && readProcFileSync(this.procRoot, pid, 'cgroup') !== previous.facts.cgroupText) return false;
      if (recheck.accountNames && this.accounts.identity() !== previous.facts.accounts) return false;
      // Last: the connector was still there (not reaped) after the reads above.
      return previous.facts.procEntry !== 'none' && this.procEntryIdentity(pid) === previous.facts.procEntry;
    } catch {
      return false;
    }
  }

  /**
   * Whether `previous`, made for another connection of the same process, describes the connector
   * of this one (`peer`), so that a process's later connections are not attested in full again.
   * The kernel's credentials of this connection must be the ones attested (uid and gid come from
   * them, never from /proc). stillDescribes proves that the process holding the PID now is the one
   * attested, unchanged (not reaped since, so it has held the PID since it started). That process
   * is the connector when either:
   *  - it started before this server did: the connector called connect() on a socket this server
   *    created, so later, and at that time the PID was that process's (the usual case after a
   *    restart: a reconnect storm is made of processes older than the new server), or
   *  - the connector's pidfd is still live after the check: the connector holds the PID now.
   * Without a pidfd (kernel < 6.5), for a process younger than the server, the remaining race is
   * the one attest() has: a connector that exited before this check, its PID given to the
   * attested process.
   */
  async describesConnector(previous: Attestation, peer: PeerCredentials, recheck: RecheckNeeds = RECHECK_ALL): Promise<boolean> {
    if (peer.pid !== previous.process.pid || peer.uid !== previous.peer.uid || peer.gid !== previous.peer.gid) return false;
    const serverStart = await this.serverStartTime();
    if (serverStart !== undefined && BigInt(previous.process.startTime) < serverStart) return this.stillDescribes(previous, recheck);
    let pidfd: number | undefined;
    try {
      pidfd = peer.openPidfd?.();
    } catch {
      return false; // the connector is gone: attest() refuses it
    }
    try {
      return (await this.stillDescribes(previous, recheck)) && this.pidfdLive(pidfd);
    } finally {
      closePidfd(pidfd);
    }
  }

  /** See AttestorOptions.serverStartTime; undefined when it cannot be read (then never relied on). */
  private serverStartTime(): Promise<bigint | undefined> {
    this.serverStart ??= readStat(process.pid, this.procRoot).then(
      (own) => (own ? BigInt(own.startTime) : undefined),
      () => undefined,
    );
    return this.serverStart;
  }

  /** The parent chain of a process as it is now (see ancestors()); empty when it is gone. */
  async ancestorsOf(ref: ProcessRef): Promise<ProcessRef[]> {
    const stat = await readStat(ref.pid, this.procRoot);
    return stat && stat.startTime === ref.startTime ? this.ancestors(stat) : [];
  }

  /** A pidfd for the connector, or undefined without kernel support; a peer we cannot pin is gone. */
  private pin(peer: PeerCredentials): number | undefined {
    try {
      return peer.openPidfd?.();
    } catch {
      throw processGone(peer.pid);
    }
  }

  private async attestPinned(peer: PeerCredentials, pidfd: number | undefined, opts: AttestOptions): Promise<Attestation> {
    const { pid } = peer;
    const withAncestors = opts.withAncestors ?? true;
    const before = await readStat(pid, this.procRoot);
    if (!before || !this.pidfdLive(pidfd)) throw processGone(pid);
    // Read in the pinned window (the checks after the reads prove it): this process's /proc entry.
    const procEntry = this.procEntryIdentity(pid);
    const exeBefore = this.executableIdentity(pid);
    const accounts = this.accounts.identity();

    const [status, exePath, cgroupText, ancestors, userName, groupName, sha256] = await Promise.all([
      readProcFile(this.procRoot, pid, 'status'),
      this.executablePath(pid),
      readProcFile(this.procRoot, pid, 'cgroup'),
      withAncestors ? this.ancestors(before) : Promise.resolve([]),
      this.accounts.userName(peer.uid),
      this.accounts.groupName(peer.gid),
      opts.withSha256 ? this.executableSha256(pid) : Promise.resolve(undefined),
    ]);

    // With a pidfd, its process not having exited proves the PID was never free since the pin, so
    // every read above was about it; without one, the start time read again is the check.
    if (pidfd !== undefined ? !pidfdIsAlive(pidfd) : (await readProcessRef(pid, this.procRoot))?.startTime !== before.startTime) {
      throw processGone(pid);
    }
    if (status === undefined || cgroupText === undefined) throw processGone(pid);
    // execve(2) keeps PID and start time: a process that exec'd while we read has a path and a
    // hash of two different programs. Refuse; its next call sees one program.
    if (this.executableIdentity(pid) !== exeBefore) {
      throw permissionDenied(`workload attestation: process ${pid} executed another program during attestation`);
    }

    let groups: number[];
    try {
      groups = parseStatusGroups(status);
    } catch {
      throw permissionDenied(`workload attestation: /proc/${pid}/status has no readable Groups line`);
    }
    const cgroup = parseCgroupV2(cgroupText);

    const values: string[] = [`uid:${peer.uid}`, `gid:${peer.gid}`];
    if (userName !== undefined) values.push(`user:${userName}`);
    if (groupName !== undefined) values.push(`group:${groupName}`);
    for (const g of groups) {
      values.push(`supplementary_gid:${g}`);
      const name = await this.accounts.groupName(g);
      if (name !== undefined) values.push(`supplementary_group:${name}`);
    }
    if (exePath !== undefined) values.push(`path:${exePath}`);
    if (sha256 !== undefined) values.push(`sha256:${sha256}`);
    if (cgroup !== null) values.push(`cgroup:${cgroup}`);

    return {
      peer,
      process: { pid, startTime: before.startTime },
      selectors: normalizeSelectors(values.flatMap((v) => this.selector(pid, v))),
      cgroup,
      ancestors,
      ancestorsKnown: withAncestors,
      facts: { procEntry, exe: exeBefore, cgroupText, accounts, withSha256: opts.withSha256, withAncestors },
    };
  }

  /** Whether `ref` still names a running process (and, given its pidfd, that process has not exited). */
  async isSameProcess(ref: ProcessRef, pidfd?: number): Promise<boolean> {
    if (pidfd !== undefined && !pidfdIsAlive(pidfd)) return false;
    const now = await readProcessRef(ref.pid, this.procRoot);
    return now !== undefined && now.startTime === ref.startTime;
  }

  private pidfdLive(pidfd: number | undefined): boolean {
    return pidfd === undefined || pidfdIsAlive(pidfd);
  }

  /** See stillDescribes: which /proc/PID inode the kernel has for this PID now; "none" when there is none. */
  private procEntryIdentity(pid: number): string {
    return procEntryIdentity(this.procRoot, pid);
  }

  /**
   * stat(2) through /proc/PID/exe reaches the file the process runs, even when its path was
   * replaced. ctime is included because a binary rewritten in place keeps its inode and can
   * have its mtime set back, never its ctime. "none" when there is no executable to see.
   */
  private executableIdentity(pid: number): string {
    try {
      const st = statSync(join(this.procRoot, String(pid), 'exe'), { bigint: true });
      return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
    } catch {
      return 'none';
    }
  }

  /**
   * A value that cannot be a selector (a path with a newline, an over-long name) is left out,
   * not mangled: a mangled value could equal some other process's real selector.
   */
  private selector(pid: number, value: string): Selector[] {
    try {
      return [parseSelector(`unix:${value}`)];
    } catch {
      this.logger.warn({ pid, kind: value.slice(0, value.indexOf(':')) }, 'attest: value is not a valid selector; omitted');
      return [];
    }
  }

  /**
   * readlink(/proc/PID/exe). The kernel appends " (deleted)" when the binary was unlinked or
   * replaced (package upgrade); the path then names a file the process is not running, so no
   * path selector. A file may really be called "x (deleted)": the suffix is trusted only when
   * the named file is not the running inode.
   */
  private async executablePath(pid: number): Promise<string | undefined> {
    const link = join(this.procRoot, String(pid), 'exe');
    let target: string;
    try {
      target = this.procRoot === DEFAULT_PROC_ROOT ? readlinkSync(link) : await readlink(link); // see readProcFile
    } catch (err) {
      if (!isGoneError(err)) this.logger.warn({ pid, err: (err as Error).message }, 'attest: cannot read executable path; path selector omitted');
      return undefined;
    }
    if (!target.startsWith('/')) return undefined;
    if (target.endsWith(DELETED_SUFFIX)) {
      const [running, named] = await Promise.all([
        stat(link, { bigint: true }).catch(() => undefined),
        stat(target, { bigint: true }).catch(() => undefined),
      ]);
      if (!running || !named || running.dev !== named.dev || running.ino !== named.ino) {
        this.logger.info({ pid }, 'attest: executable was deleted or replaced since exec; path selector omitted');
        return undefined;
      }
    }
    return target;
  }

  private async executableSha256(pid: number): Promise<string | undefined> {
    try {
      return await this.hasher.hash(join(this.procRoot, String(pid), 'exe'));
    } catch (err) {
      if (!isGoneError(err)) this.logger.warn({ pid, err: (err as Error).message }, 'attest: cannot hash executable; sha256 selector omitted');
      return undefined;
    }
  }

  /** The parent chain (see parentChain in ancestry.ts). */
  private ancestors(start: ProcStat): Promise<ProcessRef[]> {
    return parentChain(start, (pid) => readStat(pid, this.procRoot), this.logger);
  }
}
