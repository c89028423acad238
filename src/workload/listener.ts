import { readFileSync } from 'node:fs';
import { chmod, link, lstat, mkdir, mkdtemp, rmdir, unlink } from 'node:fs/promises';
import net from 'node:net';
import { basename, dirname, join, resolve } from 'node:path';
import { failedPrecondition, invalidArgument, isAgentIdError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { readPeerCredentials, type PeerCredentials } from '../attest/peercred.js';

export interface UnixListenerOptions {
  /** File mode of the socket: 0o666 for the workload socket (any local process), 0o600 for admin. */
  mode: number;
  /**
   * listen(2) backlog. The default 511 makes a reconnect storm after a restart fail with
   * EAGAIN beyond about 500 clients; the kernel caps this at net.core.somaxconn.
   */
  backlog?: number;
  /**
   * Called once per accepted connection, synchronously at accept, with credentials read before
   * any byte from the peer was handled. The connection holds one descriptor, its socket:
   * creds.openPidfd() pins the peer only while someone attests it (and fails closed once the
   * socket is closed). Throwing destroys the socket.
   */
  onConnection: (socket: net.Socket, creds: PeerCredentials) => void;
  logger: Logger;
}

export interface UnixListener {
  close(): Promise<void>;
  path: string;
}

export const DEFAULT_BACKLOG = 4096;
// sizeof(sockaddr_un.sun_path) is 108 on Linux, including the terminating NUL.
const MAX_SOCKET_PATH_BYTES = 107;
const PROBE_TIMEOUT_MS = 2000;

/**
 * Listens on a Unix socket that carries kernel peer credentials to every connection.
 *
 * The socket is bound inside a fresh 0700 directory next to `path`, chmod-ed to `mode`, then
 * hard-linked into place. Binding at `path` directly and chmod-ing afterwards would leave a
 * window in which the socket has umask permissions: an admin socket could be reached by
 * anyone while it is still "0777 & ~umask". link(2) also refuses to replace a file that
 * appeared since the stale-socket check, where rename(2) would silently take it over.
 */
export async function listenUnixWithPeerCreds(path: string, opts: UnixListenerOptions): Promise<UnixListener> {
  const socketPath = resolve(path);
  const dir = dirname(socketPath);
  const backlog = opts.backlog ?? DEFAULT_BACKLOG;
  if (!Number.isInteger(opts.mode) || opts.mode < 0 || opts.mode > 0o777) {
    throw invalidArgument(`socket ${socketPath}: mode must be permission bits between 0 and 0o777`);
  }
  if (!Number.isInteger(backlog) || backlog <= 0) throw invalidArgument(`socket ${socketPath}: backlog must be a positive integer`);
  // The temporary bind path is dir + "/.agentid-XXXXXX/s".
  const tempPathBytes = Buffer.byteLength(dir) + '/.agentid-XXXXXX/s'.length;
  if (Buffer.byteLength(socketPath) > MAX_SOCKET_PATH_BYTES || tempPathBytes > MAX_SOCKET_PATH_BYTES) {
    throw invalidArgument(`socket ${socketPath}: path too long for a Unix socket (directory must be at most ${MAX_SOCKET_PATH_BYTES - 18} bytes, whole path ${MAX_SOCKET_PATH_BYTES})`);
  }

  await mkdir(dir, { recursive: true, mode: 0o755 });
  await removeStaleSocket(socketPath, opts.logger);

  const tempDir = await mkdtemp(join(dir, '.agentid-'));
  const tempPath = join(tempDir, 's');
  const sockets = new Set<net.Socket>();
  const server = net.createServer();
  server.on('connection', (socket) => accept(socket, sockets, opts));
  server.on('error', (err) => opts.logger.error({ path: socketPath, err: err.message }, 'unix listener error'));

  let inode: bigint;
  try {
    await new Promise<void>((resolveListen, rejectListen) => {
      server.once('error', rejectListen);
      server.listen({ path: tempPath, backlog }, () => {
        server.off('error', rejectListen);
        resolveListen();
      });
    });
    await chmod(tempPath, opts.mode);
    try {
      await link(tempPath, socketPath);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
        throw failedPrecondition(`socket ${socketPath} is in use: the path was created by someone else while this server started`);
      }
      throw err;
    }
    inode = (await lstat(socketPath, { bigint: true })).ino;
  } catch (err) {
    await closeServer(server, sockets);
    throw isAgentIdError(err)
      ? err
      : failedPrecondition(`socket ${socketPath}: cannot listen (${(err as NodeJS.ErrnoException).code ?? 'error'})`, err);
  } finally {
    await unlink(tempPath).catch(() => undefined);
    await rmdir(tempDir).catch(() => undefined);
  }
  const somaxconn = kernelSomaxconn();
  if (somaxconn !== undefined && somaxconn < backlog) {
    // The kernel silently caps listen(2)'s backlog: say so, or a reconnect storm fails with no hint why.
    opts.logger.warn({ path: socketPath, backlog, somaxconn }, 'unix listener: backlog capped by net.core.somaxconn; raise it (sysctl net.core.somaxconn) for reconnect storms');
  }
  opts.logger.info({ path: socketPath, mode: `0${opts.mode.toString(8)}`, backlog: Math.min(backlog, somaxconn ?? backlog) }, 'unix listener ready');

  let closing: Promise<void> | undefined;
  return {
    path: socketPath,
    close: () => {
      closing ??= (async () => {
        await closeServer(server, sockets);
        // Remove the path only if it is still our socket: a successor may already own it.
        const now = await lstat(socketPath, { bigint: true }).catch(() => undefined);
        if (now?.isSocket() && now.ino === inode) await unlink(socketPath).catch(() => undefined);
      })();
      return closing;
    },
  };
}

function accept(socket: net.Socket, sockets: Set<net.Socket>, opts: UnixListenerOptions): void {
  let creds: PeerCredentials;
  try {
    creds = readPeerCredentials(socket);
  } catch (err) {
    opts.logger.warn({ err: (err as Error).message }, 'unix listener: peer credentials unavailable; connection dropped');
    socket.destroy();
    return;
  }
  sockets.add(socket);
  socket.on('error', (err) => opts.logger.debug({ pid: creds.pid, err: err.message }, 'unix listener: connection error'));
  // 'on', not 'once': a socket closes once, and once() adds a wrapper and its state per connection.
  socket.on('close', () => sockets.delete(socket));
  try {
    opts.onConnection(socket, creds);
  } catch (err) {
    opts.logger.error({ pid: creds.pid, err: (err as Error).message }, 'unix listener: connection handler threw; connection dropped');
    socket.destroy();
  }
}

/** net.core.somaxconn, the kernel's cap on any listen(2) backlog; undefined when it cannot be read. */
function kernelSomaxconn(): number | undefined {
  try {
    const n = Number(readFileSync('/proc/sys/net/core/somaxconn', 'utf8').trim());
    return Number.isSafeInteger(n) && n > 0 ? n : undefined;
  } catch {
    return undefined;
  }
}

/** Stops accepting, destroys connections still open (shut gRPC down first for a graceful end). */
function closeServer(server: net.Server, sockets: Set<net.Socket>): Promise<void> {
  return new Promise((done) => {
    if (!server.listening) {
      done();
      return;
    }
    server.close(() => done());
    for (const s of sockets) s.destroy();
  });
}

/**
 * A socket file left by a crashed server blocks bind(2) with EADDRINUSE. Remove it only when
 * nothing answers there (ECONNREFUSED); never remove a live server's socket or a file that is
 * not a socket (a symlink or regular file at this path is a misconfiguration or an attack).
 */
async function removeStaleSocket(socketPath: string, logger: Logger): Promise<void> {
  let st;
  try {
    st = await lstat(socketPath);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw failedPrecondition(`socket ${socketPath}: cannot inspect path (${(err as NodeJS.ErrnoException).code ?? 'error'})`, err);
  }
  if (!st.isSocket()) {
    throw failedPrecondition(`socket ${socketPath}: path exists and is not a socket; refusing to replace it`);
  }
  const state = await probe(socketPath);
  if (state === 'live') throw failedPrecondition(`socket ${socketPath} is in use by a running server`);
  logger.info({ path: socketPath }, `unix listener: removing stale socket ${basename(socketPath)} left by a previous server`);
  await unlink(socketPath).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw failedPrecondition(`socket ${socketPath}: cannot remove stale socket (${err.code ?? 'error'})`, err);
  });
}

function probe(socketPath: string): Promise<'live' | 'stale'> {
  return new Promise((done, fail) => {
    const client = net.connect({ path: socketPath });
    client.setTimeout(PROBE_TIMEOUT_MS, () => {
      // A server too busy to accept is still a server.
      client.destroy();
      done('live');
    });
    client.once('connect', () => {
      client.destroy();
      done('live');
    });
    client.once('error', (err: NodeJS.ErrnoException) => {
      client.destroy();
      if (err.code === 'ECONNREFUSED' || err.code === 'ENOENT') done('stale');
      else if (err.code === 'EAGAIN') done('live');
      else fail(failedPrecondition(`socket ${socketPath}: cannot probe existing socket (${err.code ?? 'error'})`, err));
    });
  });
}
