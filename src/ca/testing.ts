/* Test support for src/ca (excluded from the build). */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ManualClock } from '../common/clock.js';
import { silentLogger } from '../common/logger.js';
import { TrustDomain } from '../spiffe/spiffe-id.js';
import { CertificateAuthority, type CaOptions } from './authority.js';

/** A fixed epoch for tests: 2026-01-01T00:00:00Z. */
export const EPOCH = Date.UTC(2026, 0, 1);

export function tempDir(): { path: string; cleanup: () => void } {
  const path = mkdtempSync(join(tmpdir(), 'agentid-ca-'));
  return { path, cleanup: () => rmSync(path, { recursive: true, force: true }) };
}

export async function openTestCa(
  dataDir: string,
  overrides: Partial<CaOptions> = {},
): Promise<{ ca: CertificateAuthority; clock: ManualClock }> {
  const clock = (overrides.clock as ManualClock | undefined) ?? new ManualClock(EPOCH);
  const ca = await CertificateAuthority.open({
    dataDir,
    trustDomain: TrustDomain.parse('example.org'),
    logger: silentLogger(),
    ...overrides,
    clock,
  });
  return { ca, clock };
}

export function toPem(der: Buffer, label = 'CERTIFICATE'): string {
  return `-----BEGIN ${label}-----\n${der.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n?$/, '\n')}-----END ${label}-----\n`;
}

export interface RunResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

export function openssl(args: string[], input?: Buffer | string): RunResult {
  const r = spawnSync('openssl', args, { input, encoding: 'latin1' });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Writes files into `dir` and returns their paths. */
export function writeFiles(dir: string, files: Record<string, Buffer | string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, content] of Object.entries(files)) {
    const p = join(dir, name);
    writeFileSync(p, content, { mode: 0o600 });
    out[name] = p;
  }
  return out;
}

/** `openssl verify -x509_strict` of a leaf against roots and untrusted intermediates, at a given time. */
export function opensslVerify(
  dir: string,
  p: { roots: Buffer[]; intermediates: Buffer[]; leaf: Buffer; at: number; crls?: Buffer[] },
): RunResult {
  const f = writeFiles(dir, {
    'v-roots.pem': p.roots.map((c) => toPem(c)).join(''),
    'v-inter.pem': p.intermediates.map((c) => toPem(c)).join('') || '\n',
    'v-leaf.pem': toPem(p.leaf),
    'v-crls.pem': (p.crls ?? []).map((c) => toPem(c, 'X509 CRL')).join('') || '\n',
  });
  const args = ['verify', '-x509_strict', '-attime', String(Math.floor(p.at / 1000)), '-CAfile', f['v-roots.pem']!];
  if (p.intermediates.length) args.push('-untrusted', f['v-inter.pem']!);
  if (p.crls?.length) args.push('-crl_check', '-CRLfile', f['v-crls.pem']!);
  args.push(f['v-leaf.pem']!);
  return openssl(args);
}

/** The error a promise rejects with; fails the test when it resolves. */
export async function errorOf(p: Promise<unknown>): Promise<Error & { code?: string }> {
  try {
    await p;
  } catch (e) {
    return e as Error & { code?: string };
  }
  throw new Error('expected a rejection');
}
