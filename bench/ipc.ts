/*
 * Request/response and events over Node's child-process IPC channel, between the benchmark's
 * orchestrator (bench/run.ts) and its client, server and verifier processes. Timestamps that
 * matter are taken by the orchestrator when a message arrives, so no two processes' clocks are
 * ever compared.
 */
import { type ChildProcess, spawn, type SpawnOptions } from 'node:child_process';
import { EventEmitter } from 'node:events';

interface Request {
  id: number;
  cmd: string;
  args: unknown;
}
interface Reply {
  id: number;
  ok: boolean;
  result?: unknown;
  error?: string;
}
interface Event {
  event: string;
  data: unknown;
}

/** BENCH_DEBUG=1 traces every IPC message on stderr. */
const DEBUG = process.env.BENCH_DEBUG === '1';

export type Handlers = Record<string, (args: any) => unknown>;

/** Child side: answers the orchestrator's requests with `handlers`; `emit` sends unsolicited events. */
export function serveIpc(handlers: Handlers): { emit(event: string, data?: unknown): void } {
  if (!process.send) throw new Error('this benchmark process must be started by bench/run.ts (no IPC channel)');
  const send = (m: Reply | Event) => process.send!(m);
  process.on('message', (m: Request) => {
    const handler = handlers[m.cmd];
    if (!handler) return send({ id: m.id, ok: false, error: `unknown command ${m.cmd}` });
    Promise.resolve()
      .then(() => handler(m.args))
      .then(
        (result) => send({ id: m.id, ok: true, result }),
        (err: unknown) => send({ id: m.id, ok: false, error: err instanceof Error ? err.message : String(err) }),
      );
  });
  // The orchestrator going away ends the process: no stray clients survive a crashed run.
  process.on('disconnect', () => process.exit(0));
  return { emit: (event, data) => send({ event, data }) };
}

/** Orchestrator side of one child process. Events are re-emitted with the arrival time (performance.now()). */
export class ChildHandle extends EventEmitter {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: any) => void; reject: (e: Error) => void }>();
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(
    readonly name: string,
    readonly proc: ChildProcess,
  ) {
    super();
    proc.on('message', (m: Reply | Event) => {
      if (DEBUG) process.stderr.write(`<- ${name} ${JSON.stringify(m).slice(0, 200)}\n`);
      if ('event' in m) {
        this.emit(m.event, m.data, performance.now());
        return;
      }
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.ok) p.resolve(m.result);
      else p.reject(new Error(`${this.name}: ${m.error}`));
    });
    this.exited = new Promise((resolve) => {
      proc.once('exit', (code, signal) => {
        for (const p of this.pending.values()) p.reject(new Error(`${this.name} exited (${signal ?? code}) during a request`));
        this.pending.clear();
        resolve({ code, signal });
      });
    });
  }

  get pid(): number {
    return this.proc.pid!;
  }

  request<T = any>(cmd: string, args: unknown = {}, timeoutMs = 600_000): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${this.name}: ${cmd} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      if (DEBUG) process.stderr.write(`-> ${this.name} ${cmd} ${JSON.stringify(args).slice(0, 200)}\n`);
      this.proc.send({ id, cmd, args } satisfies Request);
    });
  }

  /** The next `event` for which `match` holds; resolves with its data and arrival time. */
  next<T = any>(event: string, match: (data: T) => boolean = () => true, timeoutMs = 600_000): Promise<{ data: T; at: number }> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.off(event, listener);
        reject(new Error(`${this.name}: no "${event}" within ${timeoutMs} ms`));
      }, timeoutMs);
      const listener = (data: T, at: number) => {
        if (!match(data)) return;
        clearTimeout(timer);
        this.off(event, listener);
        resolve({ data, at });
      };
      this.on(event, listener);
    });
  }

  kill(signal: NodeJS.Signals = 'SIGTERM'): void {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill(signal);
  }
}

/** Spawns `command` with an IPC channel (stdio: inherit stderr so crashes are visible). */
export function spawnWithIpc(name: string, command: string, args: string[], opts: SpawnOptions = {}): ChildHandle {
  const proc = spawn(command, args, { stdio: ['ignore', 'ignore', 'inherit', 'ipc'], ...opts });
  return new ChildHandle(name, proc);
}
