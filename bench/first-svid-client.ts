/*
 * One new workload process of the first-SVID benchmark: started ahead of time (so process start-up
 * is not timed), it connects on "go" and times connect + FetchX509SVID until the first message,
 * then checks that message (after the clock stopped) and exits.
 */
import { checkX509Response } from './check.js';
import { RawConnection } from './grpc-raw.js';
import { serveIpc } from './ipc.js';

const ipc = serveIpc({
  async go(a: { socket: string }) {
    const start = performance.now();
    const conn = await RawConnection.open(a.socket);
    const message = await new Promise<Buffer>((resolve, reject) => {
      let got = false;
      const stream = conn.call(
        'FetchX509SVID',
        new Uint8Array(0),
        (m) => {
          got = true;
          resolve(m);
          stream.close();
        },
        (end) => {
          if (!got) reject(new Error(`FetchX509SVID: status ${end.code} ${end.details}`));
        },
      );
    });
    const ms = performance.now() - start;
    conn.close();
    return { ms, spiffeIds: checkX509Response(message).spiffeIds };
  },
});
ipc.emit('ready', { pid: process.pid });
