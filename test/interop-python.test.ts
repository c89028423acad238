/**
 * Interop with an independent gRPC and protobuf stack: a Python client (gRPC C-core, stubs generated
 * by grpc_tools from our workload.proto, DER parsed by pyca/cryptography) against the real server.
 * go-spiffe, py-spiffe and java-spiffe cannot be installed here; this catches what only a foreign
 * stack would notice (method paths, field numbers, h2c details, key and certificate encodings).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { startTestServer, type TestServer } from './support/server.js';
import { REPO } from './support/cli.js';

const PYTHON = '/usr/bin/python3';
const hasPythonGrpc = spawnSync(PYTHON, ['-c', 'import grpc, grpc_tools, cryptography'], { stdio: 'ignore' }).status === 0;

describe.skipIf(!hasPythonGrpc)('Workload API with a Python gRPC client (install: apt-get install python3-grpcio python3-grpc-tools python3-cryptography)', () => {
  let t: TestServer;
  const td = 'interop.example';

  beforeAll(async () => {
    t = await startTestServer({ trustDomain: td });
    await t.admin.call('CreateEntry', { entry: { spiffe_id: `spiffe://${td}/python`, selectors: ['unix:uid:0'], hint: 'py' } });
    const gen = spawnSync(PYTHON, ['-m', 'grpc_tools.protoc', '-I', 'proto', `--python_out=${t.dir}`, `--grpc_python_out=${t.dir}`, 'proto/spiffe/workload/workload.proto'], { cwd: REPO, encoding: 'utf8' });
    if (gen.status !== 0) throw new Error(`grpc_tools.protoc failed: ${gen.stderr}`);
  });
  afterAll(async () => t?.cleanup());

  it('serves a foreign client exactly per the Workload API', async () => {
    // Async spawn: the server runs in this process.
    const out = await new Promise<string>((resolve, reject) => {
      const child = spawn(PYTHON, [join(import.meta.dirname, 'support', 'python_workload_client.py'), t.dir, t.config.workloadSocket, 'https://interop.example/api'], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d) => (stdout += d));
      child.stderr.on('data', (d) => (stderr += d));
      child.on('exit', (code) => (code === 0 ? resolve(stdout) : reject(new Error(`python client failed (${code}): ${stderr}`))));
    });
    const r = JSON.parse(out);
    expect(r.no_header).toBe('INVALID_ARGUMENT');
    expect(r.wit).toBe('UNIMPLEMENTED');
    expect(r.jwt_no_audience).toBe('INVALID_ARGUMENT');
    expect(r.svids).toEqual([
      {
        spiffe_id: `spiffe://${td}/python`,
        uris: [`spiffe://${td}/python`],
        key_matches_leaf: true,
        leaf_is_ca: false,
        key_usage_critical: true,
        digital_signature: true,
        key_cert_sign: false,
        chain_length: 2,
        intermediates_are_ca: true,
        bundle_size: 1,
      },
    ]);
    expect(r.crl_count).toBeGreaterThan(0);
    expect(r.federated_keys).toEqual([]);
    expect(r.jwt_bundle_keys).toEqual([`spiffe://${td}`]);
    expect(r.every_jwk_has_kid).toBe(true);
    expect(r.validated_spiffe_id).toBe(`spiffe://${td}/python`);
    expect(r.validated_aud).toEqual(['https://interop.example/api']);
    expect(r.validate_wrong_audience).toBe('INVALID_ARGUMENT');
  });
});
