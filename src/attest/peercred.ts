import { closeSync } from 'node:fs';
import type { Socket } from 'node:net';
import koffi from 'koffi';
import { unavailable } from '../common/errors.js';

/**
 * Kernel-vouched identity of the process on the other end of a connected Unix socket.
 * pid/uid/gid are captured by the kernel when the peer called connect(), in this process's
 * PID and user namespaces; nothing here comes from bytes the peer sent.
 */
export interface PeerCredentials {
  pid: number;
  uid: number;
  gid: number;
  /**
   * Opens a pidfd for the process that connected (SO_PEERPIDFD, Linux >= 6.5): the kernel keeps a
   * reference to the connector for the socket's life, so a pidfd opened at any later time still
   * names exactly that process, never a newcomer that reused its PID. The caller owns the result
   * and must closePidfd() it; nothing holds one between calls (a pidfd per connection would double
   * the server's descriptors). undefined: the kernel has no SO_PEERPIDFD. Throws 'unavailable'
   * when the connector can no longer be pinned (it exited and was reaped, or the socket is closed):
   * callers fail closed.
   */
  openPidfd?: () => number | undefined;
}

// Values from <asm-generic/socket.h>; identical on x86_64 and arm64 (not on e.g. mips/sparc/parisc).
const SOL_SOCKET = 1;
const SO_PEERCRED = 17;
const SO_PEERPIDFD = 77;
const UCRED_SIZE = 12; // struct ucred { pid_t pid; uid_t uid; gid_t gid; }
const POLLIN = 0x001;

interface Libc {
  getsockopt: (fd: number, level: number, name: number, out: Buffer, len: Buffer) => number;
  /** fds: one struct pollfd { int fd; short events; short revents; } (8 bytes). */
  poll: (fds: Buffer, nfds: number, timeout: number) => number;
}

/**
 * Memory the calls below pass to the kernel, allocated once: every call is synchronous and this
 * thread is the only caller, and a reconnect storm makes three of these calls per connection.
 * (Buffers passed as void* are shared with the callee, not copied and converted like JS arrays
 * and objects, which cost more than the system calls themselves.)
 */
const optionValue = Buffer.alloc(UCRED_SIZE);
const optionLength = Buffer.alloc(4);
const pollFd = Buffer.alloc(8);

let libc: Libc | undefined;

function loadLibc(): Libc {
  if (libc) return libc;
  if (process.platform !== 'linux') {
    throw unavailable('peer credentials: SO_PEERCRED attestation requires Linux');
  }
  if (process.arch !== 'x64' && process.arch !== 'arm64') {
    // Socket option numbers differ on other architectures (powerpc: SO_PEERCRED is 21).
    throw unavailable(`peer credentials: socket option numbers are only known for x64 and arm64, not ${process.arch}`);
  }
  try {
    const lib = koffi.load('libc.so.6');
    libc = {
      getsockopt: lib.func('int getsockopt(int, int, int, void*, void*)'),
      poll: lib.func('int poll(void*, unsigned long, int)'),
    };
    return libc;
  } catch (err) {
    throw unavailable('peer credentials: cannot load libc.so.6 for getsockopt', err);
  }
}

function socketFd(socket: Socket): number {
  const fd: unknown = (socket as any)._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) {
    throw unavailable('peer credentials: socket has no open file descriptor');
  }
  return fd;
}

function errnoName(code: number): string {
  const entry = Object.entries(koffi.os.errno).find(([, v]) => v === code);
  return entry ? entry[0] : `errno ${code}`;
}

/**
 * Reads SO_PEERCRED from a connected Unix socket (a pidfd is opened later, on demand).
 * Call it at accept, before any byte is read. Throws AgentIdError 'unavailable' when the
 * kernel does not give credentials, including pid 0 (not a Unix socket, or a peer outside
 * this PID namespace): a process we cannot see is a process we cannot attest.
 */
export function readPeerCredentials(socket: Socket): PeerCredentials {
  const { getsockopt } = loadLibc();
  const fd = socketFd(socket);

  optionLength.writeUInt32LE(UCRED_SIZE, 0);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, optionValue, optionLength) !== 0) {
    const errno = koffi.errno();
    throw unavailable(`peer credentials: getsockopt(SO_PEERCRED) failed (${errnoName(errno)})`);
  }
  const len = optionLength.readUInt32LE(0);
  if (len !== UCRED_SIZE) {
    throw unavailable(`peer credentials: SO_PEERCRED returned ${len} bytes, expected ${UCRED_SIZE}`);
  }
  const pid = optionValue.readInt32LE(0);
  const uid = optionValue.readUInt32LE(4);
  const gid = optionValue.readUInt32LE(8);
  if (pid <= 0) {
    throw unavailable('peer credentials: the kernel reports no peer process (not a Unix socket, or peer in another PID namespace)');
  }

  return new SocketPeerCredentials(pid, uid, gid, socket);
}

/** Kept for a connection's life: a method on the class, not a closure per connection. */
class SocketPeerCredentials implements PeerCredentials {
  constructor(
    readonly pid: number,
    readonly uid: number,
    readonly gid: number,
    private readonly socket: Socket,
  ) {}

  openPidfd(): number | undefined {
    return openPeerPidfd(this.socket);
  }
}

/** false once the kernel answered that it has no SO_PEERPIDFD, so later calls skip the syscall. */
let kernelHasPeerPidfd = true;

/** A fresh pidfd for the peer of `socket` (see PeerCredentials.openPidfd). */
export function openPeerPidfd(socket: Socket): number | undefined {
  if (!kernelHasPeerPidfd) return undefined;
  const { getsockopt } = loadLibc();
  // Throws once the socket is closed: its descriptor number may already name another socket.
  const fd = socketFd(socket);
  optionLength.writeUInt32LE(4, 0);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, optionValue, optionLength) !== 0) {
    const errno = koffi.errno();
    // Kernels before 6.5 do not know the option; that is the only failure we fall back from.
    if (errno === koffi.os.errno.ENOPROTOOPT || errno === koffi.os.errno.EINVAL) {
      kernelHasPeerPidfd = false;
      return undefined;
    }
    // Anything else (ESRCH: the peer is already reaped) means we cannot pin the peer: fail closed.
    throw unavailable(`peer credentials: getsockopt(SO_PEERPIDFD) failed (${errnoName(errno)})`);
  }
  const pidfd = optionValue.readInt32LE(0);
  if (optionLength.readUInt32LE(0) !== 4 || pidfd < 0) {
    if (pidfd >= 0) closePidfd(pidfd);
    throw unavailable('peer credentials: SO_PEERPIDFD returned no file descriptor');
  }
  return pidfd;
}

/**
 * On a loaded machine the profiler's signals interrupted poll() 16 times in a row (2 refusals of a
 * live peer in 8 runs of test/support/pidfd-under-profiler.ts beside 7 other profiled processes;
 * none in 16 such runs with this bound). Each attempt is one syscall of about a microsecond.
 */
const EINTR_RETRIES = 1000;

/**
 * True while the process behind the pidfd has not exited. poll() reports POLLIN once it exits
 * (a zombie counts as exited: it can no longer use anything we hand it). An invalid pidfd
 * (POLLNVAL) or a failing poll counts as not alive: callers use this to fail closed.
 */
export function pidfdIsAlive(pidfd: number): boolean {
  // poll(2) skips negative descriptors and would report "no events": alive. -1 marks a closed pidfd.
  if (!Number.isInteger(pidfd) || pidfd < 0) return false;
  const { poll } = loadLibc();
  pollFd.writeInt32LE(pidfd, 0);
  pollFd.writeInt16LE(POLLIN, 4);
  // A signal arriving during the call makes poll() fail with EINTR even with a zero timeout (the
  // V8 profiler's SIGPROF does so many times a second): that says nothing about the process, so
  // ask again. Any other failure still counts as not alive.
  for (let attempt = 0; attempt < EINTR_RETRIES; attempt++) {
    pollFd.writeInt16LE(0, 6);
    const n = poll(pollFd, 1, 0);
    if (n >= 0) return n === 0 && pollFd.readInt16LE(6) === 0;
    if (koffi.errno() !== koffi.os.errno.EINTR) return false;
  }
  return false;
}

/**
 * Closes a pidfd obtained from PeerCredentials.openPidfd. Call it exactly once: a second close could
 * hit an unrelated descriptor that reused the number (EBADF alone is ignored).
 */
export function closePidfd(pidfd: number | undefined): void {
  if (pidfd === undefined) return;
  try {
    closeSync(pidfd);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EBADF') throw err;
  }
}
