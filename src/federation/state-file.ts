import { readFileSync, statSync } from 'node:fs';
import { writeFileAtomic } from '../ca/key-files.js';
import { JwtBundle, X509Bundle } from '../verify/bundle.js';
import type { TrustDomain } from '../spiffe/spiffe-id.js';

/*
 * The last good bundle of every relationship, so a restart (or an endpoint that is down at
 * start) does not lose trust that was already established. The file holds only public
 * material, but it decides whom workloads trust: it is written 0600 and ignored when anybody
 * but its owner could have changed it.
 */

export const STATE_FILE_MODE = 0o600;
const STATE_VERSION = 1;

export interface StoredBundle {
  x509: X509Bundle;
  /** undefined: the JWT keys are unknown (a PEM bootstrap), not "none". */
  jwt: JwtBundle | undefined;
  sequence: number | null;
  refreshHintSeconds: number | null;
  fetchedAt: number;
}

interface StoredJson {
  x509: string[];
  jwt: object | null;
  sequence: number | null;
  refreshHintSeconds: number | null;
  fetchedAt: number;
}

export function serializeState(bundles: ReadonlyMap<string, StoredBundle>): string {
  const out: Record<string, StoredJson> = {};
  for (const [td, b] of [...bundles].sort(([a], [c]) => a.localeCompare(c))) {
    out[td] = {
      x509: b.x509.authoritiesDer.map((d) => d.toString('base64')),
      jwt: b.jwt ? b.jwt.toJwkSet() : null,
      sequence: b.sequence,
      refreshHintSeconds: b.refreshHintSeconds,
      fetchedAt: b.fetchedAt,
    };
  }
  return `${JSON.stringify({ version: STATE_VERSION, bundles: out }, null, 2)}\n`;
}

export async function writeState(path: string, bundles: ReadonlyMap<string, StoredBundle>): Promise<void> {
  await writeFileAtomic(path, serializeState(bundles), STATE_FILE_MODE);
}

const nullableInt = (v: unknown): number | null => (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : null);

/**
 * Reads the bundles of the wanted trust domains. Problems are reported through `warn` and the
 * affected entry (or the whole file) is skipped: losing a cached bundle only narrows trust,
 * while refusing to start would turn a corrupt cache into an outage.
 */
export function readState(
  path: string,
  wanted: ReadonlyMap<string, TrustDomain>,
  warn: (message: string, err?: unknown) => void,
): Map<string, StoredBundle> {
  const out = new Map<string, StoredBundle>();
  let text: string;
  try {
    const st = statSync(path);
    if (!st.isFile()) {
      warn(`federation state file ${path} is not a regular file; ignored`);
      return out;
    }
    if ((st.mode & 0o022) !== 0) {
      warn(`federation state file ${path} is writable by group or others (mode 0${(st.mode & 0o777).toString(8)}); ignored`);
      return out;
    }
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') warn(`federation state file ${path} cannot be read; ignored`, err);
    return out;
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    warn(`federation state file ${path} is not valid JSON; ignored`, err);
    return out;
  }
  const root = doc as { version?: unknown; bundles?: unknown };
  if (typeof doc !== 'object' || doc === null || root.version !== STATE_VERSION || typeof root.bundles !== 'object' || root.bundles === null) {
    warn(`federation state file ${path} is not a version ${STATE_VERSION} state file; ignored`);
    return out;
  }
  for (const [name, value] of Object.entries(root.bundles as Record<string, unknown>)) {
    const td = wanted.get(name);
    if (!td) continue;
    try {
      const v = value as Partial<StoredJson>;
      if (!Array.isArray(v.x509) || !v.x509.every((c) => typeof c === 'string')) throw new Error('"x509" must be a list of base64 certificates');
      const x509 = X509Bundle.fromDer(td, v.x509.map((c) => Buffer.from(c, 'base64')));
      const jwt = v.jwt === null || v.jwt === undefined ? undefined : JwtBundle.fromJwkSet(td, v.jwt);
      out.set(name, {
        x509,
        jwt,
        sequence: nullableInt(v.sequence),
        refreshHintSeconds: nullableInt(v.refreshHintSeconds),
        fetchedAt: nullableInt(v.fetchedAt) ?? 0,
      });
    } catch (err) {
      warn(`federation state file ${path}: the entry for ${name} is unusable; ignored`, err);
    }
  }
  return out;
}
