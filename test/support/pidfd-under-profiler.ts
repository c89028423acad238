/**
 * Run under the V8 CPU profiler (`node --cpu-prof --cpu-prof-interval 1`), whose SIGPROF interrupts
 * system calls many times a second: connects to itself over a Unix socket, opens the peer's pidfd
 * (this very process, alive throughout) and asks pidfdIsAlive many times. Prints how many answers
 * said "not alive": anything but 0 is a live process refused because of a signal.
 */
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { closePidfd, pidfdIsAlive, readPeerCredentials } from '../../src/attest/peercred.js';

const path = join(tmpdir(), `agentid-pidfd-${process.pid}.sock`);
const server = createServer((socket) => {
  const creds = readPeerCredentials(socket);
  const pidfd = creds.openPidfd!()!;
  let notAlive = 0;
  const until = Date.now() + Number(process.argv[2] ?? 2000);
  let calls = 0;
  while (Date.now() < until) {
    for (let i = 0; i < 1000; i++) if (!pidfdIsAlive(pidfd)) notAlive++;
    calls += 1000;
  }
  closePidfd(pidfd);
  process.stdout.write(`${JSON.stringify({ calls, notAlive })}\n`);
  socket.destroy();
  server.close();
  client?.destroy();
});
let client: ReturnType<typeof connect> | undefined;
server.listen(path, () => {
  client = connect(path);
});
