import type { Socket } from 'node:net';
import koffi from 'koffi';

// FIONREAD (SIOCINQ for sockets) from <asm-generic/ioctls.h>; the same on x86_64 and arm64.
const FIONREAD = 0x541b;

type Ioctl = (fd: number, request: number, type: string, out: Buffer) => number;
let ioctl: Ioctl | undefined;

/**
 * Bytes the peer has sent that sit in the kernel's receive buffer, not yet read by this process;
 * undefined when that cannot be told (no descriptor, not Linux, the call failed).
 *
 * A server that is behind (a reconnect storm) has not read what a peer already sent: the peer did
 * its part, and a timer on the peer must not count the server's lag against it.
 */
export function unreadBytes(socket: Socket): number | undefined {
  const fd: unknown = (socket as { _handle?: { fd?: unknown } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0 || process.platform !== 'linux') return undefined;
  try {
    ioctl ??= koffi.load('libc.so.6').func('int ioctl(int fd, unsigned long request, ...)') as unknown as Ioctl;
    const out = Buffer.alloc(4);
    return ioctl(fd, FIONREAD, 'void *', out) === 0 ? out.readInt32LE(0) : undefined;
  } catch {
    return undefined;
  }
}
