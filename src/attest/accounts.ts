import { statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../common/logger.js';

/**
 * Parses passwd(5)/group(5) text into id -> name. The first entry for an id wins, as with
 * getpwuid(3). NIS compat lines ("+name", "-name") and lines without a numeric id are skipped.
 */
export function parseIdNames(text: string): Map<number, string> {
  const names = new Map<number, string>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const fields = line.split(':');
    const name = fields[0];
    const id = fields[2];
    if (name === undefined || name === '' || name.startsWith('+') || name.startsWith('-')) continue;
    if (id === undefined || !/^\d+$/.test(id)) continue;
    const n = Number(id);
    if (!Number.isSafeInteger(n) || names.has(n)) continue;
    names.set(n, name);
  }
  return names;
}

interface Loaded {
  identity: string;
  names: Map<number, string>;
}

/**
 * One of /etc/passwd or /etc/group, re-read only when the file changes. The cache key is the
 * file's identity (dev, inode, size, mtime, ctime in ns): useradd replaces the file by rename,
 * and editors that write in place change ctime, which userspace cannot set back. This costs
 * one stat per lookup instead of a time-to-live that would serve a deleted user's name.
 *
 * Only the local files are consulted, not NSS (LDAP, sssd): an NSS lookup can block on the
 * network, and the daemon's view of names must not depend on a remote directory mid-request.
 */
class IdFile {
  private loaded: Loaded | undefined;
  private loading: Promise<Loaded> | undefined;

  constructor(
    private readonly path: string,
    private readonly logger: Logger,
  ) {}

  /** The file's current identity (one stat); "missing" when it cannot be read. */
  identity(): string {
    try {
      const st = statSync(this.path, { bigint: true });
      return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
    } catch {
      return 'missing';
    }
  }

  async name(id: number): Promise<string | undefined> {
    const loaded = await this.current();
    return loaded?.names.get(id);
  }

  private async current(): Promise<Loaded | undefined> {
    // One stat per lookup, synchronous: a local file's metadata is cached by the kernel, and a
    // thread-pool hop per selector name dominated attestation time.
    const identity = this.identity();
    if (identity === 'missing') {
      this.logger.warn({ path: this.path }, 'attest: account database unreadable; name selectors omitted');
      return undefined;
    }
    if (this.loaded?.identity === identity) return this.loaded;
    if (!this.loading) {
      this.loading = (async () => {
        try {
          const names = parseIdNames(await readFile(this.path, 'utf8'));
          this.loaded = { identity, names };
          return this.loaded;
        } finally {
          this.loading = undefined;
        }
      })();
    }
    try {
      return await this.loading;
    } catch (err) {
      this.logger.warn({ path: this.path, err: (err as Error).message }, 'attest: account database unreadable; name selectors omitted');
      return undefined;
    }
  }
}

/** uid -> user name and gid -> group name from the local account files under etcRoot. */
export class AccountNames {
  private readonly users: IdFile;
  private readonly groups: IdFile;

  constructor(opts: { etcRoot?: string; logger: Logger }) {
    const etc = opts.etcRoot ?? '/etc';
    this.users = new IdFile(join(etc, 'passwd'), opts.logger);
    this.groups = new IdFile(join(etc, 'group'), opts.logger);
  }

  /** Changes whenever either file changes (see IdFile): names cached against it stay right. */
  identity(): string {
    return `${this.users.identity()}|${this.groups.identity()}`;
  }

  userName(uid: number): Promise<string | undefined> {
    return this.users.name(uid);
  }

  groupName(gid: number): Promise<string | undefined> {
    return this.groups.name(gid);
  }
}
