/* A gRPC server reflection client (what grpcurl does for `list` and `describe`), over a Unix socket. */
import { createRequire } from 'node:module';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

const require = createRequire(import.meta.url);
const REFLECTION_PROTO_DIR = require.resolve('@grpc/reflection/package.json').replace(/package\.json$/, 'build/proto');
// protobufjs ships descriptor.proto's types; FileDescriptorProto bytes decode with them.
const descriptor = require('protobufjs/ext/descriptor') as { FileDescriptorProto: { decode(b: Uint8Array): FileDescriptor } };

export interface FileDescriptor {
  name: string;
  package?: string;
  service: { name: string; method: { name: string; serverStreaming?: boolean }[] }[];
}

export type ReflectionVersion = 'v1' | 'v1alpha';

function client(socket: string, version: ReflectionVersion): grpc.Client & Record<string, any> {
  const def = protoLoader.loadSync(`grpc/reflection/${version}/reflection.proto`, { includeDirs: [REFLECTION_PROTO_DIR], keepCase: true, defaults: true, oneofs: true });
  const pkg = grpc.loadPackageDefinition(def) as any;
  const Ctor = pkg.grpc.reflection[version].ServerReflection as grpc.ServiceClientConstructor;
  return new Ctor(`unix://${socket}`, grpc.credentials.createInsecure()) as any;
}

/** One request on the bidi ServerReflectionInfo stream; resolves with its response. */
async function ask(socket: string, version: ReflectionVersion, request: Record<string, unknown>): Promise<any> {
  const c = client(socket, version);
  try {
    return await new Promise((resolve, reject) => {
      const call = c.ServerReflectionInfo();
      call.on('data', (res: any) => {
        resolve(res);
        call.end();
      });
      call.on('error', reject);
      call.write(request);
    });
  } finally {
    c.close();
  }
}

/** Service names, as `grpcurl -unix S list` prints them. */
export async function listServices(socket: string, version: ReflectionVersion): Promise<string[]> {
  const res = await ask(socket, version, { list_services: '' });
  if (res.error_response) throw new Error(`reflection error ${res.error_response.error_code}: ${res.error_response.error_message}`);
  return res.list_services_response.service.map((s: { name: string }) => s.name);
}

/** The file descriptors that define `symbol`, as `grpcurl describe` reads them. */
export async function describeSymbol(socket: string, version: ReflectionVersion, symbol: string): Promise<FileDescriptor[]> {
  const res = await ask(socket, version, { file_containing_symbol: symbol });
  if (res.error_response) throw new Error(`reflection error ${res.error_response.error_code}: ${res.error_response.error_message}`);
  return res.file_descriptor_response.file_descriptor_proto.map((b: Buffer) => descriptor.FileDescriptorProto.decode(b));
}
