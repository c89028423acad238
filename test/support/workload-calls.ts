/**
 * A Workload API client for integration tests, run as a child process (possibly as another user):
 *   workload-calls.ts <socket> x509 <n>            -> n FetchX509SVID calls, prints {"codes":{"ok":k,...}}
 *   workload-calls.ts <socket> jwt <n> <audience>  -> n FetchJWTSVID calls, same output, plus the last error message
 */
import { WorkloadApiClient } from '../../src/client/workload-client.js';

const [socket, kind = 'x509', countText = '1', audience = 'https://svc.example'] = process.argv.slice(2);
const client = new WorkloadApiClient({ socketPath: socket! });
const codes: Record<string, number> = {};
let lastMessage = '';
for (let i = 0; i < Number(countText); i++) {
  try {
    if (kind === 'x509') await client.fetchX509Context();
    else await client.fetchJwtSvid({ audience: [audience] });
    codes.ok = (codes.ok ?? 0) + 1;
  } catch (err) {
    const code = (err as { code?: string }).code ?? String(err);
    codes[code] = (codes[code] ?? 0) + 1;
    lastMessage = (err as Error).message;
  }
}
client.close();
process.stdout.write(`${JSON.stringify({ codes, lastMessage })}\n`);
