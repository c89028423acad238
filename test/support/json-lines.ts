import type { ChildProcess } from 'node:child_process';

/** Collects a child's stdout JSON lines; `next(pred)` waits for the first (past or future) line matching. */
export function followJsonLines(child: ChildProcess): { lines: any[]; next: (pred: (l: any) => boolean, ms?: number) => Promise<any> } {
  const lines: any[] = [];
  const waiters: { pred: (l: any) => boolean; resolve: (l: any) => void }[] = [];
  let buf = '';
  child.stdout!.on('data', (d) => {
    buf += d;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = JSON.parse(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
      lines.push(line);
      for (const w of [...waiters]) {
        if (w.pred(line)) {
          waiters.splice(waiters.indexOf(w), 1);
          w.resolve(line);
        }
      }
    }
  });
  const next = (pred: (l: any) => boolean, ms = 5000) =>
    new Promise<any>((resolve, reject) => {
      const found = lines.find(pred);
      if (found) return resolve(found);
      const timer = setTimeout(() => reject(new Error(`no matching line within ${ms} ms; saw ${JSON.stringify(lines).slice(-2000)}`)), ms);
      waiters.push({ pred, resolve: (l) => { clearTimeout(timer); resolve(l); } });
    });
  return { lines, next };
}
