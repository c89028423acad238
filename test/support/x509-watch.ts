/**
 * Follows FetchX509SVID on a socket and prints one JSON line per update, with what a CA drill
 * needs to see: each SVID's serial and signing CA (its AKI), the bundle's roots (SKIs) and each
 * CRL's issuer (AKI) and revoked serials.   x509-watch.ts <socket>
 */
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { WorkloadApiClient } from '../../src/client/workload-client.js';

const [socket] = process.argv.slice(2);
const client = new WorkloadApiClient({ socketPath: socket });
const aki = (c: x509.X509Certificate | x509.X509Crl) => c.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId ?? '';
/** Lowercase, without leading zero bytes, so serials from certificates and CRLs compare equal. */
const hex = (serial: string) => serial.toLowerCase().replace(/^(00)+(?=..)/, '');
const ski = (der: Buffer) => new x509.X509Certificate(der).getExtension(x509.SubjectKeyIdentifierExtension)?.keyId ?? '';

client.watchX509Context(
  (ctx) => {
    const line = {
      svids: ctx.svids.map((s) => {
        const leaf = new x509.X509Certificate(s.chainDer[0]!);
        const signingCa = new x509.X509Certificate(s.chainDer[1]!);
        return { id: s.spiffeId, serial: hex(leaf.serialNumber), issuer: aki(leaf), issuerSerial: hex(signingCa.serialNumber), root: aki(signingCa) };
      }),
      roots: ctx.svids[0]!.bundleDer.map(ski),
      crls: ctx.crls.map((der) => {
        const crl = new x509.X509Crl(der);
        return { issuer: aki(crl), revoked: crl.entries.map((e) => hex(e.serialNumber)) };
      }),
    };
    process.stdout.write(`${JSON.stringify(line)}\n`);
  },
  (err) => {
    process.stdout.write(`${JSON.stringify({ error: (err as { code?: string }).code ?? String(err) })}\n`);
    process.exit(0);
  },
).catch((err: { code?: string }) => {
  // The stream ended (the caller lost its last identity, the server went away).
  process.stdout.write(`${JSON.stringify({ error: err.code ?? String(err) })}\n`);
  process.exit(0);
});
