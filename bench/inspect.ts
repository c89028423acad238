/*
 * Another Node process's inspector (started with --inspect=127.0.0.1:PORT), for two things:
 *  - a full garbage collection: the memory benchmark collects in agentid and in the bare server
 *    alike right before it reads their RSS, so the figure compares what each server retains, not
 *    how much garbage each happened to hold at that moment (with 10,000 streams the two differ by
 *    megabytes from one sample to the next, in either direction);
 *  - a CPU profile of one timed window of a server that is then SIGKILLed (the reconnect storm),
 *    which `node --cpu-prof` cannot give: it writes its profile only at a clean exit.
 */
import WebSocket from 'ws';

export class InspectorSession {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();

  private constructor(
    private readonly ws: WebSocket,
    private readonly port: number,
  ) {
    ws.on('message', (data) => {
      const m = JSON.parse(String(data)) as { id?: number; result?: unknown; error?: { message: string } };
      const p = m.id === undefined ? undefined : this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id!);
      if (m.error) p.reject(new Error(`inspector on port ${port}: ${m.error.message}`));
      else p.resolve(m.result);
    });
    ws.on('close', () => {
      for (const p of this.pending.values()) p.reject(new Error(`inspector on port ${port}: closed`));
      this.pending.clear();
    });
  }

  /** Connects to the process's inspector, waiting for it to listen (a process just started). */
  static async open(port: number, timeoutMs = 60_000): Promise<InspectorSession> {
    const deadline = performance.now() + timeoutMs;
    let target: string | undefined;
    while (!target) {
      const list = await fetch(`http://127.0.0.1:${port}/json/list`).then(
        (r) => r.json() as Promise<{ webSocketDebuggerUrl?: string }[]>,
        () => [],
      );
      target = list[0]?.webSocketDebuggerUrl;
      if (!target) {
        if (performance.now() > deadline) throw new Error(`inspector on port ${port}: no target`);
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    const ws = new WebSocket(target);
    await new Promise<void>((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    });
    return new InspectorSession(ws, port);
  }

  call<T = unknown>(method: string, params: object = {}, timeoutMs = 60_000): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`inspector on port ${this.port}: no answer to ${method} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (v) => (clearTimeout(timer), resolve(v as T)),
        reject: (e) => (clearTimeout(timer), reject(e)),
      });
      this.ws.send(JSON.stringify({ id, method, params }));
    });
  }

  close(): void {
    this.ws.close();
  }
}

/** Runs a full GC in the process whose inspector listens on 127.0.0.1:`port`; resolves when it is done. */
export async function collectGarbage(port: number, timeoutMs = 60_000): Promise<void> {
  const session = await InspectorSession.open(port, timeoutMs);
  try {
    await session.call('HeapProfiler.collectGarbage', {}, timeoutMs);
  } finally {
    session.close();
  }
}

/**
 * Starts V8's sampling profiler in the process (through a session of its own: a profile belongs to
 * the session that started it). stop() returns the profile, in the format `--cpu-prof` writes.
 */
export async function startProfile(port: number, timeoutMs = 60_000): Promise<{ stop(): Promise<object> }> {
  const session = await InspectorSession.open(port, timeoutMs);
  await session.call('Profiler.enable');
  await session.call('Profiler.setSamplingInterval', { interval: 1000 });
  await session.call('Profiler.start');
  return {
    async stop() {
      try {
        return (await session.call<{ profile: object }>('Profiler.stop')).profile;
      } finally {
        session.close();
      }
    },
  };
}
