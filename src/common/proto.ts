import { fileURLToPath } from 'node:url';
import * as protoLoader from '@grpc/proto-loader';
import * as grpc from '@grpc/grpc-js';

/** proto/ at the package root; the same relative path works from src/common and dist/common. */
export const PROTO_ROOT = fileURLToPath(new URL('../../proto/', import.meta.url));

const LOADER_OPTIONS: protoLoader.Options = {
  // Field names stay as in the .proto (snake_case) so the wire facts read the same in code.
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [PROTO_ROOT],
};

const definitions = new Map<string, protoLoader.PackageDefinition>();
const cache = new Map<string, grpc.GrpcObject>();

/** The parsed .proto (descriptors included), as server reflection needs it. */
export function loadDefinition(relativePath: string): protoLoader.PackageDefinition {
  let definition = definitions.get(relativePath);
  if (!definition) {
    definition = protoLoader.loadSync(relativePath, LOADER_OPTIONS);
    definitions.set(relativePath, definition);
  }
  return definition;
}

export function loadProto(relativePath: string): grpc.GrpcObject {
  let loaded = cache.get(relativePath);
  if (!loaded) {
    loaded = grpc.loadPackageDefinition(loadDefinition(relativePath));
    cache.set(relativePath, loaded);
  }
  return loaded;
}

/** The Workload API service: path /SpiffeWorkloadAPI/<Method> (the proto has no package line). */
export function workloadService(): grpc.ServiceClientConstructor {
  return loadProto('spiffe/workload/workload.proto').SpiffeWorkloadAPI as grpc.ServiceClientConstructor;
}
