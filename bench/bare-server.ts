/*
 * The benchmark's baseline server: plain grpc-js serving the same Workload API service (same proto,
 * same method names, so the same clients work) on the same kind of Unix socket as agentid (a
 * net.Server with agentid's listen backlog, connections injected into grpc-js), answering every
 * call with fixed, pre-built responses: bytes captured from agentid in the same run, so every
 * message has the size of the real one and passes the same checks. Driven over IPC by bench/run.ts.
 */
import { chmodSync, rmSync } from 'node:fs';
import net from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { workloadService } from '../src/common/proto.js';
import { DEFAULT_BACKLOG } from '../src/workload/listener.js';
import { serveIpc } from './ipc.js';

interface Responses {
  x509: Buffer;
  jwtSvid: Buffer;
  validate: Buffer;
  jwtBundles: Buffer;
}

let responses: Responses | undefined;
const x509Streams = new Set<grpc.ServerWritableStream<unknown, Buffer>>();

function fixed(): Responses {
  if (!responses) throw new Error('bare server: configure first');
  return responses;
}

/** The Workload API service definition with pre-serialized responses written as they are. */
function passthroughService(): grpc.ServiceDefinition {
  const out: Record<string, grpc.MethodDefinition<unknown, Buffer>> = {};
  for (const [name, def] of Object.entries(workloadService().service)) {
    out[name] = { ...def, responseSerialize: (b: Buffer) => b } as grpc.MethodDefinition<unknown, Buffer>;
  }
  return out as grpc.ServiceDefinition;
}

function keepOpen(call: grpc.ServerWritableStream<unknown, Buffer>, set?: Set<grpc.ServerWritableStream<unknown, Buffer>>): void {
  set?.add(call);
  const drop = () => set?.delete(call);
  call.on('cancelled', drop);
  call.on('close', drop);
  call.on('error', drop);
}

const unimplemented = (_call: unknown, cb?: grpc.sendUnaryData<Buffer>) => {
  const err = { code: grpc.status.UNIMPLEMENTED, details: 'not in the baseline' };
  if (cb) cb(err, null);
  else (_call as grpc.ServerWritableStream<unknown, Buffer>).emit('error', err);
};

const server = new grpc.Server({ 'grpc.keepalive_permit_without_calls': 1 });
server.addService(passthroughService(), {
  FetchX509SVID(call: grpc.ServerWritableStream<unknown, Buffer>) {
    keepOpen(call, x509Streams);
    call.write(fixed().x509);
  },
  FetchX509Bundles: unimplemented,
  FetchJWTBundles(call: grpc.ServerWritableStream<unknown, Buffer>) {
    keepOpen(call);
    call.write(fixed().jwtBundles);
  },
  FetchJWTSVID(_call: grpc.ServerUnaryCall<unknown, Buffer>, cb: grpc.sendUnaryData<Buffer>) {
    cb(null, fixed().jwtSvid);
  },
  ValidateJWTSVID(_call: grpc.ServerUnaryCall<unknown, Buffer>, cb: grpc.sendUnaryData<Buffer>) {
    cb(null, fixed().validate);
  },
  FetchWITSVID: unimplemented,
  FetchWITBundles: unimplemented,
});
const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
let listener: net.Server | undefined;

const ipc = serveIpc({
  configure(a: Record<keyof Responses, string>) {
    responses = {
      x509: Buffer.from(a.x509, 'base64'),
      jwtSvid: Buffer.from(a.jwtSvid, 'base64'),
      validate: Buffer.from(a.validate, 'base64'),
      jwtBundles: Buffer.from(a.jwtBundles, 'base64'),
    };
    return {};
  },
  async listen(a: { path: string }) {
    rmSync(a.path, { force: true });
    listener = net.createServer((socket) => injector.injectConnection(socket));
    await new Promise<void>((resolve, reject) => {
      listener!.once('error', reject);
      listener!.listen({ path: a.path, backlog: DEFAULT_BACKLOG }, () => resolve());
    });
    chmodSync(a.path, 0o666);
    return {};
  },
  /**
   * Writes the FetchX509SVID response once more to every open stream; with `x509` (base64), that
   * message becomes the response (agentid's current one: its CRLs grow as tasks end, so its
   * messages do too, and the baseline must push as many bytes).
   */
  push(a: { x509?: string } = {}) {
    if (a.x509 !== undefined) fixed().x509 = Buffer.from(a.x509, 'base64');
    const message = fixed().x509;
    for (const call of x509Streams) call.write(message);
    return { streams: x509Streams.size };
  },
  streams() {
    return { streams: x509Streams.size };
  },
});
ipc.emit('ready', { pid: process.pid });
