import type { Socket } from 'node:net';

export interface PeerCredentialsLike {
  pid: number;
  uid: number;
  gid: number;
  /** See PeerCredentials.openPidfd in src/attest/peercred.ts. */
  openPidfd?: () => number | undefined;
}

/**
 * Links a gRPC call to the kernel credentials of its connection. grpc-js exposes only
 * `call.getPeer()`, built from the socket's remoteAddress, which a Unix socket does not have; each
 * accepted socket gets a unique tag there, and the tag maps to the credentials read at accept.
 */
export class PeerRegistry {
  private readonly byTag = new Map<string, PeerCredentialsLike>();
  private counter = 0;

  register(socket: Socket, creds: PeerCredentialsLike, onClose?: () => void): string {
    const tag = `agentid-peer-${++this.counter}`;
    Object.defineProperty(socket, 'remoteAddress', { value: tag, configurable: true });
    Object.defineProperty(socket, 'remotePort', { value: undefined, configurable: true });
    this.byTag.set(tag, creds);
    socket.on('close', () => {
      this.byTag.delete(tag);
      onClose?.();
    });
    return tag;
  }

  lookup(peer: string): PeerCredentialsLike | undefined {
    return this.byTag.get(peer);
  }

  get size(): number {
    return this.byTag.size;
  }
}
