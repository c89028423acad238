/** gRPC server reflection on the real Workload API and admin sockets, as grpcurl -unix uses it. */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestServer, type TestServer } from '../support/server.js';
import { describeSymbol, listServices } from '../support/reflection-client.js';

describe('gRPC server reflection', () => {
  let t: TestServer;
  beforeAll(async () => {
    t = await startTestServer();
  });
  afterAll(() => t.cleanup());

  it.each(['v1', 'v1alpha'] as const)('%s lists SpiffeWorkloadAPI (no package) on the Workload API socket and describes its methods', async (version) => {
    const services = await listServices(t.config.workloadSocket, version);
    expect(services).toContain('SpiffeWorkloadAPI');
    expect(services.filter((s) => s.startsWith('.'))).toEqual([]);
    const files = await describeSymbol(t.config.workloadSocket, version, 'SpiffeWorkloadAPI');
    const service = files.flatMap((f) => f.service).find((s) => s.name === 'SpiffeWorkloadAPI');
    expect(service?.method.map((m) => m.name)).toEqual(expect.arrayContaining(['FetchJWTBundles', 'FetchJWTSVID', 'FetchX509Bundles', 'FetchX509SVID', 'ValidateJWTSVID']));
  });

  it.each(['v1', 'v1alpha'] as const)('%s lists and describes agentid.admin.v1.AgentIdAdmin on the admin socket', async (version) => {
    expect(await listServices(t.config.adminSocket, version)).toContain('agentid.admin.v1.AgentIdAdmin');
    const files = await describeSymbol(t.config.adminSocket, version, 'agentid.admin.v1.AgentIdAdmin');
    const service = files.flatMap((f) => f.service).find((s) => s.name === 'AgentIdAdmin');
    expect(service?.method.map((m) => m.name)).toContain('StartTask');
  });

  it('an unknown symbol is an error, not an empty answer', async () => {
    await expect(describeSymbol(t.config.workloadSocket, 'v1', 'NoSuchService')).rejects.toThrow(/reflection error 5/);
  });
});
