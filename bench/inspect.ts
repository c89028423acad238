/*
 * A full garbage collection in another Node process, through its inspector (started with
 * --inspect=127.0.0.1:PORT). The memory benchmark collects in agentid and in the bare server alike
 * right before it reads their RSS, so the figure compares what each server retains, not how much
 * garbage each happened to hold at that moment (with 10,000 streams the two differ by megabytes
 * from one sample to the next, in either direction).
 */
import WebSocket from 'ws';

/** Runs a full GC in the process whose inspector listens on 127.0.0.1:`port`; resolves when it is done. */
export async function collectGarbage(port: number, timeoutMs = 60_000): Promise<void> {
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
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  const ws = new WebSocket(target);
  try {
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`inspector on port ${port}: no answer within ${timeoutMs} ms`)), Math.max(0, deadline - performance.now()));
      ws.once('error', reject);
      ws.once('open', () => ws.send(JSON.stringify({ id: 1, method: 'HeapProfiler.collectGarbage' })));
      ws.on('message', (data) => {
        if ((JSON.parse(String(data)) as { id?: number }).id !== 1) return;
        clearTimeout(timer);
        resolve();
      });
    });
  } finally {
    ws.close();
  }
}
