import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  closeSync, constants as fsc, fchmodSync, fsyncSync, lstatSync, mkdirSync, openSync, readdirSync,
  readFileSync, renameSync, unlinkSync, writeSync, type Stats,
} from 'node:fs';
import { constants as osc } from 'node:os';
import { join } from 'node:path';
import { AgentIdError, failedPrecondition, invalidArgument, notFound } from '../common/errors.js';
import { toPem } from '../common/der.js';
import type { JwtSvid, X509Context, X509Svid } from '../client/types.js';

/*
 * File delivery for servers that read certificates from disk (nginx, envoy, haproxy), in the
 * manner of spiffe-helper. Every file is written under a fresh temporary name opened with
 * O_CREAT|O_EXCL|O_NOFOLLOW, fsynced and renamed into place, and the directory is fsynced: a
 * reader sees the old file or the new one, never half of one, and a symlink planted in the
 * directory is replaced, never followed (rename(2) replaces the link itself).
 */

/** The names of the files written into the target directory. */
export interface SvidFileNames {
  cert: string;
  key: string;
  bundle: string;
  crl: string;
  jwt: string;
}

/** Layouts with their defaults; each name can still be overridden by its own flag. */
export const FILE_LAYOUTS: Readonly<Record<string, Readonly<SvidFileNames>>> = Object.freeze({
  agentid: Object.freeze({ cert: 'svid.pem', key: 'svid.key', bundle: 'bundle.pem', crl: 'crl.pem', jwt: 'jwt_svid.token' }),
  // spiffe-helper's default svid_file_name, svid_key_file_name and svid_bundle_file_name.
  'spiffe-helper': Object.freeze({ cert: 'svid.pem', key: 'svid_key.pem', bundle: 'svid_bundle.pem', crl: 'crl.pem', jwt: 'jwt_svid.token' }),
});

/** Files earlier versions wrote (one per CRL); they no longer apply once crl.pem holds them all. */
const STALE_FILE = /^crl-\d+\.pem$/;

/** Checks a file name given on the command line: a plain name inside the directory, nothing else. */
export function fileNamesFrom(layout: string, overrides: Partial<SvidFileNames>): SvidFileNames {
  const base = FILE_LAYOUTS[layout];
  if (!base) throw invalidArgument(`--names must be one of ${Object.keys(FILE_LAYOUTS).join(', ')}, not "${layout}"`);
  const names: SvidFileNames = { ...base };
  for (const [k, v] of Object.entries(overrides) as [keyof SvidFileNames, string | undefined][]) if (v !== undefined) names[k] = v;
  for (const [k, v] of Object.entries(names)) {
    if (v === '' || v === '.' || v === '..' || v.includes('/') || v.includes('\0') || v.startsWith('.')) {
      throw invalidArgument(`--${k}-file "${v}" must be a plain file name inside the --write directory (no "/", not starting with ".")`);
    }
  }
  const values = Object.values(names);
  if (new Set(values).size !== values.length) throw invalidArgument(`file names must differ: ${values.join(', ')}`);
  return names;
}

const isOwnerOk = (st: Stats, uid: number) => st.uid === uid;

/**
 * Creates `dir` (0700) when missing and checks it is safe to write keys into: a real directory
 * (not a symlink), owned by this user, writable by nobody else. Returns its identity, which
 * every later write re-checks so a directory swapped underneath is noticed.
 */
export function prepareDirectory(dir: string): { dev: number; ino: number } {
  const uid = process.geteuid!();
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw failedPrecondition(`cannot create --write directory ${dir}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const st = lstatSync(dir);
  if (st.isSymbolicLink()) throw failedPrecondition(`--write directory ${dir} is a symlink; give the real directory`);
  if (!st.isDirectory()) throw failedPrecondition(`--write ${dir} is not a directory`);
  if (!isOwnerOk(st, uid)) throw failedPrecondition(`--write directory ${dir} is owned by uid ${st.uid}, not by this user (uid ${uid}); refusing to write keys there`);
  if (st.mode & 0o022) throw failedPrecondition(`--write directory ${dir} is writable by group or others (mode ${(st.mode & 0o777).toString(8)}); chmod go-w it first`);
  return { dev: st.dev, ino: st.ino };
}

/** One file written atomically; `mode` applies whatever the umask. */
function writeAtomic(dir: string, name: string, data: Buffer, mode: number): void {
  const tmp = join(dir, `.${name}.${randomBytes(6).toString('hex')}.tmp`);
  const fd = openSync(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL | fsc.O_NOFOLLOW, mode);
  try {
    fchmodSync(fd, mode);
    let off = 0;
    while (off < data.length) off += writeSync(fd, data, off);
    fsyncSync(fd);
  } catch (err) {
    closeSync(fd);
    unlinkSync(tmp);
    throw err;
  }
  closeSync(fd);
  try {
    renameSync(tmp, join(dir, name));
  } catch (err) {
    unlinkSync(tmp);
    throw err;
  }
}

function fsyncDirectory(dir: string): void {
  const fd = openSync(dir, fsc.O_RDONLY | fsc.O_DIRECTORY | fsc.O_NOFOLLOW);
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** The SVID to deliver: the one named, else the default (svids[0]). */
export function pickSvid(ctx: X509Context, spiffeId: string | undefined): X509Svid {
  const svid = spiffeId === undefined ? ctx.svids[0] : ctx.svids.find((s) => s.spiffeId === spiffeId);
  if (!svid) {
    const held = ctx.svids.map((s) => s.spiffeId).join(', ') || 'none';
    throw notFound(`this process holds no X.509-SVID ${spiffeId ?? ''} (it holds: ${held})`.replace('  ', ' '));
  }
  return svid;
}

export interface DeliveryContent {
  svid: X509Svid;
  crls: readonly Buffer[];
  /** Foreign bundles appended to the bundle file (--include-federated). */
  federated: readonly Buffer[];
  jwt?: JwtSvid;
}

/**
 * Writes an SVID, its bundle, one CRL file and optionally a JWT-SVID into a directory, rewriting
 * only what changed. `write` returns the names it rewrote or removed (empty: nothing changed).
 */
export class SvidFileWriter {
  private readonly identity: { dev: number; ino: number };
  private readonly last = new Map<string, Buffer | null>();

  constructor(private readonly dir: string, private readonly names: SvidFileNames) {
    this.identity = prepareDirectory(dir);
  }

  write(content: DeliveryContent): string[] {
    // All CRLs in one PEM file: OpenSSL (nginx ssl_crl, openssl verify -CRLfile) loads every CRL a
    // file holds, and a full-chain check needs each signing CA's CRL and the root's.
    const crl = content.crls.length > 0 ? Buffer.from(content.crls.map((c) => toPem(c, 'X509 CRL')).join('')) : null;
    const planned: [string, Buffer | null, number][] = [
      [this.names.bundle, Buffer.from(toPem([...content.svid.bundleDer, ...content.federated], 'CERTIFICATE')), 0o644],
      [this.names.crl, crl, 0o644],
      // Key before certificate: a reader that sees the new certificate finds the key that matches it.
      [this.names.key, Buffer.from(toPem(content.svid.keyPkcs8Der.reveal(), 'PRIVATE KEY')), 0o600],
      [this.names.cert, Buffer.from(toPem(content.svid.chainDer, 'CERTIFICATE')), 0o644],
    ];
    if (content.jwt) planned.push([this.names.jwt, Buffer.from(`${content.jwt.token.reveal()}\n`), 0o600]);
    this.checkIdentity();
    const changed: string[] = [];
    for (const [name, data, mode] of planned) {
      const previous = this.last.get(name);
      if (previous !== undefined && (previous === null ? data === null : data !== null && previous.equals(data))) continue;
      if (data === null) {
        if (this.remove(name)) changed.push(name);
      } else {
        writeAtomic(this.dir, name, data, mode);
        changed.push(name);
      }
      this.last.set(name, data);
    }
    for (const name of readdirSync(this.dir)) {
      if (STALE_FILE.test(name) && this.remove(name)) changed.push(name);
    }
    if (changed.length > 0) fsyncDirectory(this.dir);
    return changed;
  }

  private remove(name: string): boolean {
    try {
      unlinkSync(join(this.dir, name)); // unlink never follows a symlink
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw err;
    }
  }

  private checkIdentity(): void {
    let st: Stats | undefined;
    try {
      st = lstatSync(this.dir);
    } catch {
      st = undefined;
    }
    if (!st || st.isSymbolicLink() || st.dev !== this.identity.dev || st.ino !== this.identity.ino) {
      throw failedPrecondition(`--write directory ${this.dir} was replaced after it was checked; refusing to write into it`);
    }
  }
}

/** What to do after files changed: run a command, or signal the process named by a pid file. */
export interface ReloadAction {
  exec?: string;
  signal?: NodeJS.Signals;
  pidFile?: string;
}

/** Checks --exec / --signal / --pid-file together (usage errors). */
export function reloadActionFrom(flags: { exec?: string; signal?: string; pidFile?: string }): ReloadAction {
  if (flags.signal === undefined && flags.pidFile !== undefined) throw invalidArgument('--pid-file needs --signal');
  if (flags.signal !== undefined) {
    if (flags.pidFile === undefined) throw invalidArgument('--signal needs --pid-file (the process to signal)');
    const name = (flags.signal.startsWith('SIG') ? flags.signal : `SIG${flags.signal}`).toUpperCase();
    if (!(name in osc.signals)) throw invalidArgument(`--signal "${flags.signal}" is not a signal name (e.g. HUP, USR1)`);
    return { exec: flags.exec, signal: name as NodeJS.Signals, pidFile: flags.pidFile };
  }
  return { exec: flags.exec };
}

/** Reads a pid file as nginx, envoy and most daemons write it: one decimal number. */
function readPid(file: string): number {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new AgentIdError('failed_precondition', `cannot read --pid-file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const pid = Number(text.trim());
  if (!Number.isInteger(pid) || pid <= 1) throw failedPrecondition(`--pid-file ${file} does not hold a process ID`);
  return pid;
}

/** Runs the reload action; rejects with a message fit for stderr when it fails. */
export async function runReload(action: ReloadAction): Promise<void> {
  if (action.signal && action.pidFile) {
    const pid = readPid(action.pidFile);
    try {
      process.kill(pid, action.signal);
    } catch (err) {
      throw failedPrecondition(`cannot send ${action.signal} to pid ${pid} from ${action.pidFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  }
  if (action.exec) {
    const command = action.exec;
    const code = await new Promise<number>((resolve, reject) => {
      // stdout carries our own output (one line per update); the command's output goes to stderr.
      const child = spawn('/bin/sh', ['-c', command], { stdio: ['ignore', 2, 2] });
      child.on('error', reject);
      child.on('exit', (c, s) => resolve(c ?? 128 + (s ? (osc.signals[s] ?? 0) : 0)));
    });
    if (code !== 0) throw failedPrecondition(`--exec command exited with ${code}`);
  }
}

/** Wall-clock-free: the moment to refetch a JWT-SVID is half its remaining life, as for X.509. */
export const jwtRefreshDelay = (now: number, expiresAt: number) => Math.max(1000, Math.floor((expiresAt - now) / 2));
