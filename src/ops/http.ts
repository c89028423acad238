import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { HostPort } from '../config/types.js';
import type { Logger } from '../common/logger.js';

export interface OpsResponse {
  status: number;
  contentType: string;
  body: string;
}

/** GET handlers by path; a handler may answer asynchronously (readiness probes await the datastore). */
export type OpsRoutes = Map<string, () => OpsResponse | Promise<OpsResponse>>;

export interface OpsEndpoint {
  url: string;
  close(): Promise<void>;
}

const json = (status: number, body: unknown): OpsResponse => ({ status, contentType: 'application/json', body: `${JSON.stringify(body)}\n` });

/**
 * Plain HTTP for health and metrics: read-only GETs that reveal no identities or secrets, meant for
 * a loopback or cluster-internal address. Unknown paths are 404, other methods 405.
 */
export async function startOpsHttp(listen: HostPort, routes: OpsRoutes, logger: Logger): Promise<OpsEndpoint> {
  const onRequest = (req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0]!;
    const handler = routes.get(path);
    const send = (r: OpsResponse) => {
      res.writeHead(r.status, { 'content-type': r.contentType, 'cache-control': 'no-store' });
      res.end(req.method === 'HEAD' ? undefined : r.body);
    };
    if (!handler) return send(json(404, { error: 'not found', paths: [...routes.keys()] }));
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(json(405, { error: 'method not allowed' }));
    Promise.resolve()
      .then(handler)
      .then(send, (err) => {
        logger.error({ err, path }, 'operations endpoint failed');
        send(json(500, { error: 'internal error' }));
      });
  };
  const server: Server = createServer(onRequest);
  // A scraper that holds connections open must not keep the server from stopping.
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return {
    url: `http://${host}:${address.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

export { json as jsonResponse };
