import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { loadProto } from '../../src/common/proto.js';
import { toPem } from '../../src/verify/der.js';

/**
 * A test client of agentid.node.v1.AgentIdNode over TLS, as a per-host agent would be: it trusts
 * the given roots (the server's SVID has no DNS name, so only the chain is checked) and presents a
 * client certificate when given one (a host certificate for x509pop, or its node SVID).
 */
export class NodeClient {
  readonly raw: grpc.Client & Record<string, Function>;

  /** `host`: where to connect (an IPv6 address in brackets: "[::1]"). */
  constructor(port: number, rootsDer: readonly Buffer[], client?: { chainPem: string; keyPem: string }, host = '127.0.0.1') {
    const Ctor = (loadProto('agentid/node/v1/node.proto') as any).agentid.node.v1.AgentIdNode as grpc.ServiceClientConstructor;
    const roots = Buffer.from(rootsDer.map((d) => toPem(d, 'CERTIFICATE')).join(''));
    const creds = grpc.credentials.createSsl(roots, client ? Buffer.from(client.keyPem) : null, client ? Buffer.from(client.chainPem) : null, {
      checkServerIdentity: () => undefined,
    });
    this.raw = new Ctor(`${host}:${port}`, creds, { 'grpc.use_local_subchannel_pool': 1 }) as any;
  }

  call<T = any>(method: string, request: object): Promise<T> {
    return new Promise((resolve, reject) => {
      this.raw[method]!(request, { deadline: Date.now() + 20_000 }, (err: grpc.ServiceError | null, res: T) => (err ? reject(err) : resolve(res)));
    });
  }

  /** Opens Sync and collects its messages; `ended` settles with the stream's status. */
  sync(afterRevision = 0) {
    const messages: any[] = [];
    const stream = this.raw.Sync!({ after_revision: afterRevision }) as grpc.ClientReadableStream<any>;
    stream.on('data', (m: any) => messages.push(m));
    const ended = new Promise<{ code: number; details: string }>((resolve) => {
      stream.on('error', (e: grpc.ServiceError) => resolve({ code: e.code, details: e.details }));
      stream.on('end', () => resolve({ code: grpc.status.OK, details: '' }));
    });
    return { messages, ended, cancel: () => stream.cancel() };
  }

  close(): void {
    this.raw.close();
  }
}

/** A fresh P-256 key, as an agent makes one: the key and its SPKI DER. */
export function agentKey(): { key: KeyObject; spki: Buffer; keyPem: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  return {
    key: privateKey,
    spki: publicKey.export({ type: 'spki', format: 'der' }),
    keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
  };
}

export const chainPem = (chainDer: readonly Buffer[]) => chainDer.map((d) => toPem(Buffer.from(d), 'CERTIFICATE')).join('');
