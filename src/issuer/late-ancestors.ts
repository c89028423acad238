import type { Logger } from '../common/logger.js';
import type { TaskRecord } from '../datastore/types.js';
import { taskBindingMatches, type CallerFacts } from './identity.js';

type ProcessRef = { pid: number; startTime: string };

/** Where parent chains come from, and whether they matter now. */
export interface Ancestry {
  /** Whether some task covers its process's descendants now: only then do parent chains matter. */
  needed(): boolean;
  /** The parent chains of these processes as they are now, nearest first; empty for one that is gone. */
  walk(processes: readonly ProcessRef[]): Promise<ProcessRef[][]>;
}

export interface LateAncestorsDeps<S> {
  ancestry: Ancestry;
  /**
   * A stream's chain was read: `caller` is its caller with the chain. `recompute` when a task
   * bound with descendants may cover it (its identities may have changed).
   */
  walked(stream: S, caller: CallerFacts, recompute: boolean): void;
  logger: Logger;
  /** Streams whose chains are read per turn of the event loop. */
  sliceSize?: number;
}

/** What a stream waiting for its walk must be checked against once it has its chain. */
interface Waiting {
  /** Opened while some task already covered descendants: recompute whatever its chain. */
  always: boolean;
  /** Index in `tasks` of the first change that concerns it. */
  from: number;
}

const DEFAULT_SLICE = 64;

/**
 * Parent chains read only when they matter. A stream is attested without its parent chain while no
 * task covers descendants (walking /proc up to pid 1 for every connection was the largest part of
 * a reconnect storm's attestation), and the chain only decides something for a task bound with
 * `descendants`. So when such a task starts (or changes, or ends), the chains of the streams opened
 * without one are read then, in slices that give the event loop back in between, and each stream
 * the task covers is recomputed. A stream opened while such a task exists (attestation raced the
 * task's start) has its chain read at once and is recomputed in any case. Until its walk ends a
 * stream keeps what it had, as any stream does until a change's fan-out reaches it.
 */
export class LateAncestors<S extends { caller: CallerFacts; open: boolean }> {
  /** Open streams whose chain was never read. */
  private readonly unwalked = new Set<S>();
  /** Streams waiting for their walk, in order. */
  private readonly queue = new Map<S, Waiting>();
  /** Changes to tasks bound with descendants since the queue was last empty. */
  private tasks: TaskRecord[] = [];
  private running = false;
  private readonly idleWaiters: (() => void)[] = [];
  private readonly sliceSize: number;

  constructor(private readonly deps: LateAncestorsDeps<S>) {
    this.sliceSize = deps.sliceSize ?? DEFAULT_SLICE;
  }

  /** Streams opened without their chain and not walked yet (tests, metrics). */
  get waiting(): number {
    return this.unwalked.size;
  }

  /** Whether walks are queued or running. */
  get busy(): boolean {
    return this.running;
  }

  /** Resolves once no walk is queued or running. */
  idle(): Promise<void> {
    if (!this.running) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  opened(stream: S): void {
    if (stream.caller.ancestorsKnown !== false) return;
    this.unwalked.add(stream);
    if (this.deps.ancestry.needed()) this.enqueue(stream, { always: true, from: this.tasks.length });
  }

  closed(stream: S): void {
    this.unwalked.delete(stream);
    this.queue.delete(stream);
  }

  /** A task as it was or as it is: one bound with descendants sends every unwalked stream for its chain. */
  taskChanged(task: TaskRecord): void {
    if (task.binding.kind !== 'process' || !task.binding.descendants || this.unwalked.size === 0) return;
    const from = this.tasks.push(task) - 1;
    for (const stream of this.unwalked) if (!this.queue.has(stream)) this.enqueue(stream, { always: false, from });
  }

  private enqueue(stream: S, waiting: Waiting): void {
    this.queue.set(stream, waiting);
    if (this.running) return;
    this.running = true;
    setImmediate(() => void this.slice());
  }

  private async slice(): Promise<void> {
    const batch: [S, Waiting][] = [];
    for (const item of this.queue) {
      if (batch.length >= this.sliceSize) break;
      batch.push(item);
    }
    for (const [stream] of batch) this.queue.delete(stream);
    if (batch.length > 0) await this.walkBatch(batch);
    if (this.queue.size > 0) {
      setImmediate(() => void this.slice());
      return;
    }
    this.running = false;
    this.tasks = [];
    for (const resolve of this.idleWaiters.splice(0)) resolve();
  }

  private async walkBatch(batch: readonly [S, Waiting][]): Promise<void> {
    let chains: ProcessRef[][] = [];
    try {
      chains = await this.deps.ancestry.walk(batch.map(([stream]) => stream.caller));
    } catch (err) {
      // Reading /proc failed outright: these streams stay as they are (no chain, so no task by
      // descent), which is what a failed read of a parent means at attestation too.
      this.deps.logger.error({ err, streams: batch.length }, 'could not read the parent chains of open streams');
    }
    batch.forEach(([stream, waiting], i) => {
      // Closed meanwhile, or walked already (queued again by a later task while this walk ran).
      if (!stream.open || !this.unwalked.delete(stream)) return;
      this.queue.delete(stream);
      const caller: CallerFacts = { ...stream.caller, ancestors: chains[i] ?? [], ancestorsKnown: true };
      // Checked now, after the walk: a task that changed while it ran is in `tasks` too.
      const recompute = waiting.always || this.tasks.slice(waiting.from).some((task) => taskBindingMatches(task, caller));
      this.deps.walked(stream, caller, recompute);
    });
  }
}
