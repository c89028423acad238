import { X509Certificate } from 'node:crypto';
import { permissionDenied } from '../common/errors.js';
import { isNodeName } from '../spiffe/spiffe-id.js';

/*
 * x509pop node attestation: the agent presents a host certificate (and any intermediates) as its
 * TLS client certificate; the TLS handshake proves it holds the key. The chain must lead to one of
 * the CA certificates the operator configured (agents.x509pop.ca_bundle), every certificate must
 * be valid now, the leaf must not be a CA, and the node name is the leaf's subject common name.
 * Failures say which rule broke and never echo certificate contents beyond the rule.
 */

const commonName = (cert: X509Certificate): string | undefined => {
  const names = cert.subject.split('\n').filter((l) => l.startsWith('CN='));
  return names.length === 1 ? names[0]!.slice(3) : undefined;
};

const validAt = (cert: X509Certificate, now: number) => now >= Date.parse(cert.validFrom) && now <= Date.parse(cert.validTo);

/** Returns the node name the chain proves; throws permission_denied otherwise. */
export function verifyHostChain(chainDer: readonly Buffer[], rootsDer: readonly Buffer[], now: number): string {
  if (chainDer.length === 0) throw permissionDenied('x509pop: no host certificate presented');
  if (rootsDer.length === 0) throw permissionDenied('x509pop: not configured (agents.x509pop.ca_bundle)');
  let chain: X509Certificate[];
  try {
    chain = chainDer.map((d) => new X509Certificate(d));
  } catch {
    throw permissionDenied('x509pop: the host certificate chain does not parse');
  }
  const roots = rootsDer.map((d) => new X509Certificate(d));
  const leaf = chain[0]!;
  if (leaf.ca) throw permissionDenied('x509pop: the host certificate is a CA certificate');
  for (const cert of chain) if (!validAt(cert, now)) throw permissionDenied('x509pop: a certificate of the chain is not valid now');
  // Each certificate is signed by the next one; the last one by a configured CA.
  for (let i = 0; i + 1 < chain.length; i++) {
    const issuer = chain[i + 1]!;
    if (!issuer.ca || !chain[i]!.checkIssued(issuer) || !chain[i]!.verify(issuer.publicKey)) {
      throw permissionDenied('x509pop: the host certificate chain is broken');
    }
  }
  const last = chain[chain.length - 1]!;
  const anchor = roots.find((r) => validAt(r, now) && last.checkIssued(r) && last.verify(r.publicKey));
  if (!anchor) throw permissionDenied('x509pop: the host certificate is not signed by a trusted x509pop CA');
  const name = commonName(leaf);
  if (name === undefined || !isNodeName(name)) throw permissionDenied('x509pop: the host certificate needs one subject CN that is a valid node name');
  return name;
}
