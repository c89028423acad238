import { readdirSync } from 'node:fs';
import type { Socket } from 'node:net';
import koffi from 'koffi';
import type { Logger } from '../common/logger.js';

const RLIMIT_NOFILE = 7;

interface RlimitCalls {
  getrlimit: (resource: number, out: { rlim_cur: bigint | number; rlim_max: bigint | number }) => number;
  setrlimit: (resource: number, value: { rlim_cur: bigint | number; rlim_max: bigint | number }) => number;
}

let calls: RlimitCalls | undefined;

function rlimitCalls(): RlimitCalls {
  if (calls) return calls;
  const lib = koffi.load('libc.so.6');
  // rlim_t is unsigned long on 64-bit Linux; anonymous struct (koffi type names are process-global).
  const rlimit = koffi.struct({ rlim_cur: 'uint64_t', rlim_max: 'uint64_t' });
  calls = {
    getrlimit: lib.func('getrlimit', 'int', ['int', koffi.out(koffi.pointer(rlimit))]),
    setrlimit: lib.func('setrlimit', 'int', ['int', koffi.pointer(rlimit)]),
  };
  return calls;
}

export interface OpenFileLimit {
  /** The soft limit before start-up raised it. */
  before: number;
  soft: number;
  hard: number;
}

/** RLIM_INFINITY and anything beyond what a JS number holds exactly is treated as "very large". */
const toNumber = (v: bigint | number) => (typeof v === 'bigint' ? (v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v)) : v);

/**
 * Raises the soft open-file limit to the hard limit and logs both: each Workload API connection
 * holds a descriptor, and the soft limit (often 1024) would end a reconnect storm early. Node
 * itself raises it at start on most builds; this makes it certain and visible.
 */
export function raiseOpenFileLimit(logger: Logger): OpenFileLimit {
  const { getrlimit, setrlimit } = rlimitCalls();
  const now = { rlim_cur: 0n, rlim_max: 0n } as { rlim_cur: bigint | number; rlim_max: bigint | number };
  if (getrlimit(RLIMIT_NOFILE, now) !== 0) throw new Error(`getrlimit(RLIMIT_NOFILE) failed (errno ${koffi.errno()})`);
  const before = toNumber(now.rlim_cur);
  const hard = toNumber(now.rlim_max);
  let soft = before;
  if (now.rlim_cur !== now.rlim_max) {
    if (setrlimit(RLIMIT_NOFILE, { rlim_cur: now.rlim_max, rlim_max: now.rlim_max }) === 0) soft = hard;
    else logger.warn({ soft: before, hard, errno: koffi.errno() }, 'cannot raise the open-file limit to the hard limit');
  }
  logger.info({ softBefore: before, soft, hard }, 'open-file limit');
  return { before, soft, hard };
}

export type DescriptorLevel = 'ok' | 'refuse' | 'drop';

/**
 * Keeps the server's descriptors away from the open-file limit. Running out would break
 * everything at once (attestation cannot open /proc, the audit log cannot rotate, the admin
 * socket cannot accept), so Workload API connections are refused `reserve` descriptors before
 * the limit (answered RESOURCE_EXHAUSTED), and dropped without an answer at a quarter of that
 * distance; the admin socket may use the reserve.
 *
 * The count is the descriptors open when the budget was made plus the sockets tracked since;
 * other descriptors (a file being hashed, an HTTPS client of the bundle endpoint) come and go
 * and are corrected by re-counting /proc/self/fd every RECOUNT_EVERY accepts. The reserve covers
 * the difference in between. Far from the limit the re-count comes less often, once per a quarter
 * of the open descriptors' worth of accepts: a re-count reads one /proc entry per open descriptor,
 * and a fixed interval made a storm of n connections read about n²/512 of them (200,000 for
 * 10,000 connections; 30,000 now). Within RECOUNT_NEAR reserves of the limit it is every
 * RECOUNT_EVERY again.
 */
export class DescriptorBudget {
  private tracked = 0;
  private baseline: number;
  private sinceRecount = 0;
  private static readonly RECOUNT_EVERY = 256;
  private static readonly RECOUNT_NEAR = 4;

  constructor(
    readonly limit: number,
    readonly reserve: number,
    private readonly countOpen: () => number = () => readdirSync('/proc/self/fd').length,
  ) {
    this.baseline = this.countOpen();
  }

  /** Counts `socket` until it closes. */
  track(socket: Socket): void {
    this.tracked++;
    socket.on('close', () => this.tracked--);
  }

  /** Where a new Workload API connection stands (call before tracking it; it is already open). */
  level(): DescriptorLevel {
    if (++this.sinceRecount >= this.recountEvery()) {
      this.sinceRecount = 0;
      this.baseline = Math.max(0, this.countOpen() - this.tracked);
    }
    const open = this.baseline + this.tracked;
    if (open >= this.limit - Math.ceil(this.reserve / 4)) return 'drop';
    if (open >= this.limit - this.reserve) return 'refuse';
    return 'ok';
  }

  private recountEvery(): number {
    const open = this.baseline + this.tracked;
    if (open >= this.limit - DescriptorBudget.RECOUNT_NEAR * this.reserve) return DescriptorBudget.RECOUNT_EVERY;
    return Math.max(DescriptorBudget.RECOUNT_EVERY, Math.floor(open / 4));
  }

  get open(): number {
    return this.baseline + this.tracked;
  }
}
