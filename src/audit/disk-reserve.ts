import { statfsSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Clock } from '../common/clock.js';
import { resourceExhausted } from '../common/errors.js';
import type { Logger } from '../common/logger.js';

export interface DiskReserveOptions {
  /** Files whose volumes must keep the reserve free (the audit log, the database). */
  files: readonly string[];
  /** Bytes that must stay free on each volume; 0 turns the check off (a full disk is still survived). */
  reserveBytes: number;
  clock: Clock;
  logger: Logger;
  /** Free bytes of the volume holding `dir`; statfs unless a test replaces it. */
  freeBytes?: (dir: string) => number;
  /** How long one statfs answer is reused: issuance runs thousands of times a second. */
  cacheMs?: number;
}

const statfsFree = (dir: string): number => {
  const s = statfsSync(dir, { bigint: true });
  return Number(s.bavail * s.bsize);
};

/**
 * Keeps room on the volumes of the audit log and the database for what must be written: a
 * revocation, a task end, their audit lines. New issuance stops (resource_exhausted, with a clear
 * message) while any volume has less than the reserve free, and resumes by itself once space
 * returns: nothing is latched, every check looks again (at most once per cacheMs).
 */
export class DiskReserve {
  private readonly dirs: string[];
  private checkedAt = Number.NEGATIVE_INFINITY;
  private short: { dir: string; free: number } | undefined;
  private readonly freeBytes: (dir: string) => number;
  private readonly cacheMs: number;

  constructor(private readonly options: DiskReserveOptions) {
    this.dirs = [...new Set(options.files.map((f) => dirname(f)))];
    this.freeBytes = options.freeBytes ?? statfsFree;
    this.cacheMs = options.cacheMs ?? 500;
  }

  /** Throws resource_exhausted while a volume is below the reserve. */
  assertRoom(what = 'issuance'): void {
    const short = this.shortVolume();
    if (short) {
      throw resourceExhausted(
        `${what} paused: ${short.dir} has ${short.free} bytes free, below the reserve of ${this.options.reserveBytes} bytes; it resumes when space is freed`,
      );
    }
  }

  private shortVolume(): { dir: string; free: number } | undefined {
    if (this.options.reserveBytes <= 0) return undefined;
    const now = this.options.clock.now();
    if (now - this.checkedAt < this.cacheMs) return this.short;
    this.checkedAt = now;
    let short: { dir: string; free: number } | undefined;
    for (const dir of this.dirs) {
      let free: number;
      try {
        free = this.freeBytes(dir);
      } catch {
        continue; // a volume we cannot stat is not known to be short; writes to it report their own errors
      }
      if (free < this.options.reserveBytes) {
        short = { dir, free };
        break;
      }
    }
    if (short && !this.short) this.options.logger.error({ dir: short.dir, freeBytes: short.free, reserveBytes: this.options.reserveBytes }, 'free disk space below the reserve: new issuance paused');
    if (!short && this.short) this.options.logger.warn({ dir: this.short.dir, reserveBytes: this.options.reserveBytes }, 'free disk space above the reserve again: issuance resumed');
    this.short = short;
    return short;
  }
}
