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
   * A pidfd for the peer (SO_PEERPIDFD, Linux >= 6.5): it names exactly the process that
   * connected, so PID reuse cannot redirect it. Owned by whoever called readPeerCredentials;
   * they must closePidfd() it once, when the connection is done (the listener in
   * src/workload/listener.ts does this on the socket's 'close').
   */
  pidfd?: number;
}

// Values from <asm-generic/socket.h>; identical on x86_64 and arm64 (not on e.g. mips/sparc/parisc).
const SOL_SOCKET = 1;
const SO_PEERCRED = 17;
const SO_PEERPIDFD = 77;
const UCRED_SIZE = 12; // struct ucred { pid_t pid; uid_t uid; gid_t gid; }
const POLLIN = 0x001;

interface Libc {
  getsockopt: (fd: number, level: number, name: number, out: Buffer, len: number[]) => number;
  poll: (fds: { fd: number; events: number; revents: number }, nfds: number, timeout: number) => number;
}

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
    // Anonymous: koffi type names are process-global, and a module loaded twice must not collide.
    const pollfd = koffi.struct({ fd: 'int', events: 'short', revents: 'short' });
    libc = {
      getsockopt: lib.func('int getsockopt(int, int, int, _Out_ void*, _Inout_ uint32_t*)'),
      poll: lib.func('poll', 'int', [koffi.inout(koffi.pointer(pollfd)), 'unsigned long', 'int']),
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
 * Reads SO_PEERCRED (and SO_PEERPIDFD when the kernel has it) from a connected Unix socket.
 * Call it at accept, before any byte is read. Throws AgentIdError 'unavailable' when the
 * kernel does not give credentials, including pid 0 (not a Unix socket, or a peer outside
 * this PID namespace): a process we cannot see is a process we cannot attest.
 */
export function readPeerCredentials(socket: Socket): PeerCredentials {
  const { getsockopt } = loadLibc();
  const fd = socketFd(socket);

  const ucred = Buffer.alloc(UCRED_SIZE);
  const len = [UCRED_SIZE];
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, ucred, len) !== 0) {
    const errno = koffi.errno();
    throw unavailable(`peer credentials: getsockopt(SO_PEERCRED) failed (${errnoName(errno)})`);
  }
  if (len[0] !== UCRED_SIZE) {
    throw unavailable(`peer credentials: SO_PEERCRED returned ${String(len[0])} bytes, expected ${UCRED_SIZE}`);
  }
  const pid = ucred.readInt32LE(0);
  const uid = ucred.readUInt32LE(4);
  const gid = ucred.readUInt32LE(8);
  if (pid <= 0) {
    throw unavailable('peer credentials: the kernel reports no peer process (not a Unix socket, or peer in another PID namespace)');
  }

  const pidfd = readPeerPidfd(getsockopt, fd);
  return pidfd === undefined ? { pid, uid, gid } : { pid, uid, gid, pidfd };
}

function readPeerPidfd(getsockopt: Libc['getsockopt'], fd: number): number | undefined {
  const out = Buffer.alloc(4);
  const len = [4];
  if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, out, len) !== 0) {
    const errno = koffi.errno();
    // Kernels before 6.5 do not know the option; that is the only failure we fall back from.
    if (errno === koffi.os.errno.ENOPROTOOPT || errno === koffi.os.errno.EINVAL) return undefined;
    // Anything else (ESRCH: the peer is already reaped) means we cannot pin the peer: fail closed.
    throw unavailable(`peer credentials: getsockopt(SO_PEERPIDFD) failed (${errnoName(errno)})`);
  }
  const pidfd = out.readInt32LE(0);
  if (len[0] !== 4 || pidfd < 0) {
    if (pidfd >= 0) closePidfd(pidfd);
    throw unavailable('peer credentials: SO_PEERPIDFD returned no file descriptor');
  }
  return pidfd;
}

/**
 * True while the process behind the pidfd has not exited. poll() reports POLLIN once it exits
 * (a zombie counts as exited: it can no longer use anything we hand it). An invalid pidfd
 * (POLLNVAL) or a failing poll counts as not alive: callers use this to fail closed.
 */
export function pidfdIsAlive(pidfd: number): boolean {
  // poll(2) skips negative descriptors and would report "no events": alive. -1 marks a closed pidfd.
  if (!Number.isInteger(pidfd) || pidfd < 0) return false;
  const { poll } = loadLibc();
  const fds = { fd: pidfd, events: POLLIN, revents: 0 };
  const n = poll(fds, 1, 0);
  if (n < 0) return false;
  return n === 0 && fds.revents === 0;
}

/**
 * Closes a pidfd obtained from readPeerCredentials. Call it exactly once: a second close could
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
