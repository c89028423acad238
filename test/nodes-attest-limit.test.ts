/**
 * The agent listener's Attest rate limit with a real server and real TLS connections from two
 * source addresses (127.0.0.1, seen as ::ffff:127.0.0.1 by a dual-stack listener, and ::1): past
 * the limit an address gets RESOURCE_EXHAUSTED before its attempt reaches the datastore or the
 * audit trail (a valid join token is not used up), the refusals are counted in the metrics, and
 * another address is still served.
 */
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readAuditEvents } from '../src/audit/index.js';
import { agentKey, NodeClient } from './support/node-client.js';
import { startTestServer, type TestServer } from './support/server.js';

const LIMIT = 3;

describe('nodes: Attest is rate-limited per source address', () => {
  let t: TestServer;
  const clients: NodeClient[] = [];
  const client = (host: string) => {
    const c = new NodeClient(t.server.agentPort!, t.server.ca.x509Bundle(), undefined, host);
    clients.push(c);
    return c;
  };
  const attest = (host: string, joinToken: string) =>
    client(host).call('Attest', { join_token: joinToken, public_key: agentKey().spki }).catch((e: grpc.ServiceError) => e);
  const attestEvents = () => readAuditEvents(t.config.audit.file).filter((e) => e.type.startsWith('node.attest')) as unknown as { type: string; reason?: string }[];

  beforeAll(async () => {
    t = await startTestServer({
      trustDomain: 'limits.example',
      yaml: ['admin:', '  admin_uids: [0]', 'agents:', '  listen: "[::]:0"', `  attest_per_minute_per_address: ${LIMIT}`, 'metrics:', '  listen: 127.0.0.1:0'].join('\n'),
    });
  });
  afterAll(async () => {
    for (const c of clients) c.close();
    await t?.cleanup();
  });

  it('refuses an address past its limit without touching the token or the audit trail; another address attests', async () => {
    const wrong = 'A'.repeat(43);
    for (let i = 0; i < LIMIT; i++) expect(await attest('127.0.0.1', wrong)).toMatchObject({ code: grpc.status.PERMISSION_DENIED });
    expect(attestEvents()).toHaveLength(LIMIT);

    const { token } = await t.admin.call('GenerateJoinToken', { node: 'web-1', ttl_seconds: 600, task_agents: [] });
    const limited = await attest('127.0.0.1', token);
    expect(limited).toMatchObject({ code: grpc.status.RESOURCE_EXHAUSTED, details: expect.stringMatching(/too many Attest attempts from this address/) });
    expect(attestEvents()).toHaveLength(LIMIT);

    // The token was never looked at: ::1 is another source, with its own allowance, and uses it.
    expect(await attest('[::1]', token)).toMatchObject({ node: 'web-1' });
    expect(attestEvents().map((e) => e.type)).toEqual([...Array(LIMIT).fill('node.attestation_refused'), 'node.attested']);

    const metrics = await (await fetch(new URL('/metrics', t.server.metricsUrl!))).text();
    expect(metrics).toMatch(/^agentid_agent_attest_refusals_total\{cause="rate"\} 1$/m);
  });
});
