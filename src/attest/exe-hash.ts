import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import type { Logger } from '../common/logger.js';

export const DEFAULT_SHA256_MAX_BYTES = 256 * 1024 * 1024;
const CHUNK = 1024 * 1024;
const MAX_CACHED = 1024;

/**
 * SHA-256 of a process's executable, read through /proc/PID/exe so it is the file the process
 * is running even if the path was since replaced or deleted.
 *
 * Cached by (dev, inode, size, mtime, ctime) of the opened file. ctime is in the key because
 * mtime can be set back with utimes(2) while ctime cannot: a rewritten binary with a forged
 * mtime and the same size still gets a fresh hash. Concurrent requests for the same file share
 * one read.
 */
export class ExecutableHasher {
  private readonly cache = new Map<string, string>();
  private readonly inFlight = new Map<string, Promise<string | undefined>>();
  private readonly maxBytes: number;
  private readonly logger: Logger;

  constructor(opts: { maxBytes?: number; logger: Logger }) {
    this.maxBytes = opts.maxBytes ?? DEFAULT_SHA256_MAX_BYTES;
    this.logger = opts.logger;
  }

  /**
   * Hex digest, or undefined when the file is over the size cap or changed while being read
   * (both logged). Open errors propagate (ENOENT/ESRCH: the process is gone).
   */
  async hash(exeLink: string): Promise<string | undefined> {
    const handle = await open(exeLink, 'r');
    try {
      const key = await fileKey(handle);
      const size = Number(key.size);
      if (size > this.maxBytes) {
        this.logger.warn({ exe: exeLink, size, maxBytes: this.maxBytes }, 'attest: executable larger than sha256 size cap; sha256 selector omitted');
        return undefined;
      }
      const cached = this.cache.get(key.id);
      if (cached !== undefined) {
        this.cache.delete(key.id);
        this.cache.set(key.id, cached); // most recently used last
        return cached;
      }
      let pending = this.inFlight.get(key.id);
      if (!pending) {
        pending = this.compute(handle, key.id, exeLink).finally(() => this.inFlight.delete(key.id));
        this.inFlight.set(key.id, pending);
        return await pending;
      }
      return await pending;
    } finally {
      await handle.close();
    }
  }

  private async compute(handle: Awaited<ReturnType<typeof open>>, id: string, exeLink: string): Promise<string | undefined> {
    const hash = createHash('sha256');
    const buf = Buffer.allocUnsafe(CHUNK);
    let position = 0;
    for (;;) {
      const { bytesRead } = await handle.read(buf, 0, CHUNK, position);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      position += bytesRead;
      if (position > this.maxBytes) {
        this.logger.warn({ exe: exeLink, maxBytes: this.maxBytes }, 'attest: executable grew past sha256 size cap while hashed; sha256 selector omitted');
        return undefined;
      }
    }
    // A file that changed under us has a digest of no version of it: report none, cache none.
    if ((await fileKey(handle)).id !== id) {
      this.logger.warn({ exe: exeLink }, 'attest: executable changed while hashed; sha256 selector omitted');
      return undefined;
    }
    const digest = hash.digest('hex');
    this.cache.set(id, digest);
    if (this.cache.size > MAX_CACHED) {
      const oldest = this.cache.keys().next();
      if (!oldest.done) this.cache.delete(oldest.value);
    }
    return digest;
  }
}

async function fileKey(handle: Awaited<ReturnType<typeof open>>): Promise<{ id: string; size: bigint }> {
  const st = await handle.stat({ bigint: true });
  return { id: `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`, size: st.size };
}
