import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { STATE_FILE } from './authority.js';

/**
 * The trust domain recorded in `<dataDir>/ca/state.json`, or undefined when there is no readable
 * CA state yet. Only a default: CertificateAuthority.open still checks the whole state.
 */
export function storedTrustDomain(dataDir: string): string | undefined {
  try {
    const state = JSON.parse(readFileSync(join(dataDir, 'ca', STATE_FILE), 'utf8')) as { trustDomain?: unknown };
    return typeof state.trustDomain === 'string' ? state.trustDomain : undefined;
  } catch {
    return undefined;
  }
}
