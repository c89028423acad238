/**
 * A workload for integration tests, run as a child process (possibly as another Unix user):
 *   fetch-client.ts <socket> once    -> prints {"ids":[...]} or {"error":"<code>"} and exits
 *   fetch-client.ts <socket> watch   -> prints one JSON line per X.509 update until killed; when the
 *                                       stream ends, {"error":"<code>"} (also on stderr) and exit 1
 */
import { WorkloadApiClient } from '../../src/client/workload-client.js';
import { toPem } from '../../src/client/der.js';
import type { X509Context } from '../../src/client/types.js';

const [socket, mode = 'once'] = process.argv.slice(2);
const client = new WorkloadApiClient({ socketPath: socket });

const describe = (ctx: X509Context) => ({
  ids: ctx.svids.map((s) => s.spiffeId),
  serials: ctx.svids.map((s) => s.chainDer[0]!.toString('hex').length),
  crls: ctx.crls.length,
  chainPem: toPem(ctx.svids[0]!.chainDer, 'CERTIFICATE'),
  bundlePem: toPem(ctx.svids[0]!.bundleDer, 'CERTIFICATE'),
  crlPem: ctx.crls.map((c) => toPem(c, 'X509 CRL')),
});

if (mode === 'once') {
  client.fetchX509Context().then(
    (ctx) => {
      process.stdout.write(`${JSON.stringify(describe(ctx))}\n`);
      client.close();
    },
    (err) => {
      process.stdout.write(`${JSON.stringify({ error: err.code ?? String(err) })}\n`);
      client.close();
    },
  );
} else {
  const fail = (err: unknown) => {
    const code = (err as { code?: string }).code ?? String(err);
    process.stdout.write(`${JSON.stringify({ error: code })}\n`);
    process.stderr.write(`fetch-client: stream ended: ${code}\n`);
    process.exit(1);
  };
  // onError reports a message that does not decode; the promise rejects when the stream ends (e.g. denied).
  client.watchX509Context((ctx) => process.stdout.write(`${JSON.stringify(describe(ctx))}\n`), fail).catch(fail);
}
