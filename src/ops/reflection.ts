import type * as grpc from '@grpc/grpc-js';
import { ReflectionService } from '@grpc/reflection';
import { loadDefinition } from '../common/proto.js';

/** The indexes each version's implementation inside ReflectionService keeps (@grpc/reflection 1.0.x). */
interface ReflectionIndexes {
  services: Record<string, unknown>;
  symbols: Record<string, unknown>;
}

/**
 * gRPC server reflection (grpc.reflection.v1 and v1alpha) describing the services of `protoFile`,
 * so `grpcurl -unix <socket> list` and `describe` work without the .proto at hand. The schemas
 * are public (the SPIFFE Workload API and agentid's admin API); reflection answers no data.
 */
export function addReflection(server: Pick<grpc.Server, 'addService'>, protoFile: string): void {
  const reflection = new ReflectionService(loadDefinition(protoFile));
  // @grpc/reflection names symbols of a file without a package line ".SpiffeWorkloadAPI"
  // (grpc/grpc-node#2934), so `list` would print a name no client can call and `describe
  // SpiffeWorkloadAPI` would answer NOT_FOUND. The gRPC name has no leading dot: re-key both.
  const parts = reflection as unknown as Record<'v1' | 'v1Alpha', Partial<ReflectionIndexes> | undefined>;
  for (const impl of [parts.v1, parts.v1Alpha]) {
    if (!impl?.services || !impl.symbols) throw new Error('@grpc/reflection changed its internals: check src/ops/reflection.ts');
    for (const index of [impl.services, impl.symbols]) {
      for (const name of Object.keys(index)) {
        if (!name.startsWith('.')) continue;
        index[name.slice(1)] = index[name];
        if (index === impl.services) delete index[name];
      }
    }
  }
  reflection.addToServer(server);
}
