import * as grpc from '@grpc/grpc-js';
import { AgentIdError, invalidArgument } from '../common/errors.js';
import { fromGrpcStatus } from '../common/grpc-errors.js';
import { loadProto } from '../common/proto.js';
import { systemClock } from '../common/system-clock.js';

export const ADMIN_SOCKET_ENV = 'AGENTID_ADMIN_SOCKET';

/** A thin client for the admin socket: one method per RPC, errors as AgentIdError with the server's message. */
export class AdminClient {
  private readonly client: grpc.Client & Record<string, Function>;

  constructor(socketPath: string) {
    if (!socketPath.startsWith('/')) throw invalidArgument(`admin socket "${socketPath}" must be an absolute path`);
    const proto = loadProto('agentid/admin/v1/admin.proto') as any;
    const Ctor = proto.agentid.admin.v1.AgentIdAdmin as grpc.ServiceClientConstructor;
    this.client = new Ctor(`unix://${socketPath}`, grpc.credentials.createInsecure()) as any;
  }

  call<T = any>(method: string, request: object): Promise<T> {
    return new Promise((resolve, reject) => {
      this.client[method]!(request, { deadline: systemClock.now() + 30_000 }, (err: grpc.ServiceError | null, res: T) => {
        if (!err) return resolve(res);
        const message = err.code === grpc.status.UNAVAILABLE ? `admin socket unavailable (is the server running?): ${err.details}` : err.details;
        reject(new AgentIdError(fromGrpcStatus(err.code), message));
      });
    });
  }

  close(): void {
    this.client.close();
  }
}
