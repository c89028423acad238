import { createPrivateKey } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import tls from 'node:tls';
import type { Clock } from '../common/clock.js';
import { failedPrecondition } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { toPem } from '../verify/der.js';
import type { X509SvidSource } from '../verify/tls.js';

export const TLS_BASE_OPTIONS = { minVersion: 'TLSv1.2' } as const;

/** Keeps a server's certificate current; `check()` runs before each new connection's handshake. */
export interface ServerCertificate {
  /** Options for the initial secure context. */
  readonly options: tls.SecureContextOptions;
  /** Called synchronously on every accepted TCP connection, before the TLS layer wraps it. */
  check(): void;
  close(): void;
}

function fileSignature(path: string): string {
  const s = statSync(path);
  // ctime and inode too: an atomic rename or a same-second rewrite keeps mtime but not these.
  return `${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}`;
}

/** How often the PEM files are stat()ed at most; a reload then applies to the next connection. */
export const WEB_CERT_CHECK_INTERVAL_MS = 1000;

/**
 * https_web: a certificate and key from PEM files (e.g. issued by a public CA and renewed by
 * an ACME client). The files are stat()ed at most once a second, on an incoming connection, and
 * re-read when either changed. A pair that fails to load (half-written, key does not match)
 * is logged once and the previous certificate stays in service.
 */
export function webCertificate(p: {
  /** Names the listener in errors and log lines. Default "bundle endpoint". */
  label?: string;
  certFile: string;
  keyFile: string;
  clock: Clock;
  logger: Logger;
  apply(options: tls.SecureContextOptions): void;
}): ServerCertificate {
  const label = p.label ?? 'bundle endpoint (https_web)';
  const load = (): { options: tls.SecureContextOptions; signature: string } => {
    const signature = `${fileSignature(p.certFile)}|${fileSignature(p.keyFile)}`;
    const cert = readFileSync(p.certFile, 'utf8');
    const key = readFileSync(p.keyFile, 'utf8');
    const options = { ...TLS_BASE_OPTIONS, cert, key };
    // Throws on a malformed file or a key that does not belong to the certificate.
    tls.createSecureContext(options);
    return { options, signature };
  };

  let current: { options: tls.SecureContextOptions; signature: string };
  try {
    current = load();
  } catch (err) {
    // OpenSSL's and fs's messages name the failure, never the key bytes.
    throw failedPrecondition(
      `${label}: cannot use certificate ${p.certFile} with key ${p.keyFile}: ${(err as Error).message}`,
      err,
    );
  }
  let lastCheck = p.clock.now();
  let failedSignature: string | undefined;

  return {
    options: current.options,
    check() {
      const now = p.clock.now();
      if (now - lastCheck < WEB_CERT_CHECK_INTERVAL_MS) return;
      lastCheck = now;
      let signature: string;
      try {
        signature = `${fileSignature(p.certFile)}|${fileSignature(p.keyFile)}`;
      } catch (err) {
        if (failedSignature !== 'missing') p.logger.warn({ err: (err as Error).message }, `${label}: certificate files unreadable; keeping the loaded certificate`);
        failedSignature = 'missing';
        return;
      }
      if (signature === current.signature || signature === failedSignature) return;
      try {
        current = load();
        failedSignature = undefined;
        p.apply(current.options);
        p.logger.info({ certFile: p.certFile }, `${label}: certificate reloaded`);
      } catch (err) {
        failedSignature = signature;
        p.logger.warn(
          { certFile: p.certFile, keyFile: p.keyFile, err: (err as Error).message },
          `${label}: new certificate files do not load; keeping the previous certificate`,
        );
      }
    },
    close() {},
  };
}

/**
 * https_spiffe: agentid's own X.509-SVID (chain leaf first), swapped in on every 'update' of the
 * source whose chain changed. No client certificate is requested: bundle consumers are anonymous.
 */
export function svidCertificate(p: { label?: string; source: X509SvidSource; logger: Logger; apply(options: tls.SecureContextOptions): void }): ServerCertificate {
  const label = p.label ?? 'bundle endpoint';
  const build = (): { options: tls.SecureContextOptions; leaf: Buffer } => {
    const svid = p.source.getX509Svid();
    const leaf = svid.chainDer[0];
    if (!leaf) throw failedPrecondition(`${label}: the server SVID source has no certificate`);
    // tls.createSecureContext takes no DER keys; the PEM string lives only in the context options.
    const key = createPrivateKey({ key: svid.keyPkcs8Der.reveal(), format: 'der', type: 'pkcs8' })
      .export({ format: 'pem', type: 'pkcs8' })
      .toString();
    const cert = svid.chainDer.map((d) => toPem(d, 'CERTIFICATE')).join('');
    return { options: { ...TLS_BASE_OPTIONS, cert, key }, leaf };
  };
  let current = build();
  const onUpdate = () => {
    try {
      // Trust changes (every revocation's CRLs) come this way too: no key import for an unchanged chain.
      if (p.source.getX509Svid().chainDer[0]?.equals(current.leaf)) return;
      const next = build();
      if (next.leaf.equals(current.leaf)) return;
      current = next;
      p.apply(current.options);
      p.logger.info(`${label}: server SVID reloaded`);
    } catch (err) {
      p.logger.warn({ err: (err as Error).message }, `${label}: new server SVID not usable; keeping the previous one`);
    }
  };
  p.source.on('update', onUpdate);
  return {
    options: current.options,
    check() {},
    close: () => void p.source.off('update', onUpdate),
  };
}
