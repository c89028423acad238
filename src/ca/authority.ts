import { createHash, X509Certificate as NodeX509Certificate } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Clock } from '../common/clock.js';
import { unpooled } from '../common/buffers.js';
import { failedPrecondition, internal, invalidArgument, ProblemList, unavailable } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { Secret } from '../common/secret.js';
import type { SpiffeId, TrustDomain } from '../spiffe/spiffe-id.js';
import { buildCrl, normalizeSerial } from './crl.js';
import * as der from './der.js';
import { JwtSigner, publicJwk, type PublicJwk } from './jwt.js';
import {
  checkDirSafe,
  ensurePrivateDir,
  PUBLIC_FILE_MODE,
  KEY_FILE_MODE,
  readKeyFile,
  readPrivateFile,
  removeIfExists,
  writeFileAtomic,
  writeKeyFile,
} from './key-files.js';
import { checkLeafSpki, generateLeafKeyPair, isKeyType, randomId, SigningKey, type KeyType } from './keys.js';
import {
  applyToItems,
  nextRotationAt as planNextRotationAt,
  planRotation,
  type RotationAction,
  type RotationKind,
  type RotationState,
  type SlotItem,
} from './rotation.js';
import { condemnedIds, planManual, type ManualRequest } from './manual.js';
import { BACKDATE_MS, svidValidity } from './validity.js';
import { x509 } from './x509-lib.js';
import { randomSerial, subjectPublicKeyBits, X509SvidTemplate } from './x509-template.js';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;

/** Defaults; each is the documentation of its option. */
export const CA_DEFAULTS = {
  /** CA keys; P-256 is what every SPIFFE client supports and the fastest to sign with. */
  keyType: 'ec-p256' as KeyType,
  /** SVID keys; leaves follow the same curve choice independently of the CA. */
  svidKeyType: 'ec-p256' as KeyType,
  /** Self-managed root: a year, rotated through prepared/active/retired like the rest. */
  rootTtlMs: 365 * DAY,
  /** Signing (intermediate) CAs: short, so a leaked one is useful only briefly. */
  caTtlMs: 24 * HOUR,
  jwtKeyType: 'ES256' as 'ES256' | 'ES384',
  jwtKeyTtlMs: 24 * HOUR,
  /** Upper bound for JWT-SVID TTLs; retired JWT keys stay published this long past notAfter. */
  maxJwtTtlMs: 1 * HOUR,
  /** CRL nextUpdate distance: CRLs must be rebuilt (and re-fetched) before then. */
  crlTtlMs: 24 * HOUR,
};

export interface CaOptions {
  dataDir: string;
  trustDomain: TrustDomain;
  clock: Clock;
  logger: Logger;
  keyType?: KeyType;
  svidKeyType?: KeyType;
  rootTtlMs?: number;
  caTtlMs?: number;
  jwtKeyType?: 'ES256' | 'ES384';
  jwtKeyTtlMs?: number;
  maxJwtTtlMs?: number;
  /** `iss` of JWT-SVIDs; default https://<trust domain>. */
  jwtIssuer?: string;
  crlTtlMs?: number;
  /** An organisation's CA (root or intermediate) to issue signing CAs under, instead of a self-managed root. */
  upstream?: { certFile: string; keyFile: string; bundleFile?: string };
  /** false: load only (another process, the server, owns rotation). Default true. */
  rotateOnOpen?: boolean;
}

export interface MintedX509Svid {
  spiffeId: string;
  certDer: Buffer;
  /** Leaf first, then the signing CA (and an upstream intermediate); never the root. */
  chainDer: Buffer[];
  privateKeyPkcs8: Secret<Buffer>;
  /** Lowercase hex. */
  serial: string;
  notBefore: number;
  notAfter: number;
  /** The signing CA's ID (its SKI in hex, as in the leaf's AKI). */
  issuerId: string;
}

export interface MintedJwtSvid {
  spiffeId: string;
  token: Secret<string>;
  jti: string;
  kid: string;
  issuedAt: number;
  expiresAt: number;
}

export interface RevokedSerial {
  /** Hex. */
  serial: string;
  /** The signing CA ID the certificate was issued by (MintedX509Svid.issuerId). */
  issuerId: string;
  revokedAt: number;
}

export interface RotationEvent {
  kind: RotationKind;
  id: string;
  phase: 'prepared' | 'active' | 'removed' | 'tainted' | 'revoked';
  /** The item that left the active slot, on activation. */
  previousId?: string;
  notAfter: number;
  /** One human-readable line, for logs. */
  text: string;
}

export interface RotationResult {
  changed: boolean;
  events: RotationEvent[];
}

// ---------------------------------------------------------------------------------------------
// Persisted state: <dataDir>/ca/state.json plus one file per certificate and key.

const STATE_VERSION = 1;
export const STATE_FILE = 'state.json';

interface PersistedItem extends SlotItem {
  /** x509: the ID of the root (or upstream CA) that issued it. */
  issuerId?: string;
  /** jwt: the JWS algorithm. */
  alg?: 'ES256' | 'ES384';
}

interface PersistedState {
  version: number;
  trustDomain: string;
  /** 'self', or 'upstream:<SHA-256 of the upstream public key>'. */
  issuer: string;
  bundleSequence: number;
  jwtKeysSequence: number;
  /** SHA-256 of the upstream bundle, to bump bundleSequence when the file changes. */
  upstreamBundleSha256?: string;
  roots: PersistedItem[];
  x509: PersistedItem[];
  jwt: PersistedItem[];
  /** Signing CAs revoked by an operator: listed on their root's CRL until they expire. */
  revokedCas?: RevokedCa[];
}

interface RevokedCa {
  id: string;
  /** Lowercase hex, as on the CRL. */
  serial: string;
  issuerId: string;
  revokedAt: number;
  notAfter: number;
}

const rootFiles = (id: string) => ({ cert: `root-${id}.pem`, key: `root-${id}.key` });
const signingFiles = (id: string) => ({ cert: `signing-${id}.pem`, key: `signing-${id}.key` });
const jwtFiles = (id: string) => ({ key: `jwt-${id}.key` });

// ---------------------------------------------------------------------------------------------
// Loaded material.

/** A CA that can issue signing CAs: a self-managed root or the upstream CA. */
interface IssuingCa {
  id: string;
  key: SigningKey;
  certDer: Buffer;
  ski: Buffer;
  notAfter: number;
  /** Certificates to send after a signing CA in SVID chains (an upstream intermediate). */
  chainAbove: Buffer[];
}

interface SigningCa {
  id: string;
  key: SigningKey;
  certDer: Buffer;
  ski: Buffer;
  issuerId: string;
  template: X509SvidTemplate;
  chainTail: Buffer[];
}

interface Upstream {
  issuer: IssuingCa;
  bundle: Buffer[];
  bundleSha256: string;
  stateTag: string;
}

const floorSeconds = (ms: number): number => Math.floor(ms / 1000) * 1000;
const iso = (ms: number): string => new Date(ms).toISOString();
const sha256Hex = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

export function keyIdOf(spki: Buffer): Buffer {
  return createHash('sha1').update(subjectPublicKeyBits(spki)).digest();
}

function toPem(derBytes: Buffer, label: string): string {
  return `-----BEGIN ${label}-----\n${derBytes.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n?$/, '\n')}-----END ${label}-----\n`;
}

export function pemCertificates(text: string, what: string): Buffer[] {
  const blocks = [...text.matchAll(/-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/g)];
  if (blocks.length === 0) throw failedPrecondition(`${what}: no PEM certificate found`);
  return blocks.map((m) => Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64'));
}

function parseCert(derBytes: Buffer, what: string): NodeX509Certificate {
  try {
    return new NodeX509Certificate(derBytes);
  } catch (err) {
    throw failedPrecondition(`${what}: not a valid X.509 certificate`, err);
  }
}

function certTimes(cert: NodeX509Certificate): { notBefore: number; notAfter: number } {
  return { notBefore: Date.parse(cert.validFrom), notAfter: Date.parse(cert.validTo) };
}

function checkKeyMatches(cert: NodeX509Certificate, key: SigningKey, what: string): void {
  const certSpki = cert.publicKey.export({ format: 'der', type: 'spki' });
  if (!certSpki.equals(key.publicKeySpki)) throw failedPrecondition(`${what}: private key does not match the certificate`);
}

function validateOptions(opts: CaOptions): void {
  const problems = new ProblemList();
  const positive = (name: string, value: number | undefined) => {
    if (value !== undefined && !(Number.isSafeInteger(value) && value >= 1000)) problems.add(`${name} must be a whole number of milliseconds, at least 1000`);
  };
  positive('rootTtlMs', opts.rootTtlMs);
  positive('caTtlMs', opts.caTtlMs);
  positive('jwtKeyTtlMs', opts.jwtKeyTtlMs);
  positive('maxJwtTtlMs', opts.maxJwtTtlMs);
  positive('crlTtlMs', opts.crlTtlMs);
  if (opts.keyType !== undefined && !isKeyType(opts.keyType)) problems.add('keyType must be ec-p256 or ec-p384');
  if (opts.svidKeyType !== undefined && !isKeyType(opts.svidKeyType)) problems.add('svidKeyType must be ec-p256 or ec-p384');
  if (opts.jwtKeyType !== undefined && opts.jwtKeyType !== 'ES256' && opts.jwtKeyType !== 'ES384') {
    problems.add('jwtKeyType must be ES256 or ES384');
  }
  if (opts.jwtIssuer !== undefined) {
    let ok = false;
    try {
      const u = new URL(opts.jwtIssuer);
      ok = (u.protocol === 'https:' || u.protocol === 'http:') && !u.search && !u.hash && !u.username && !u.password;
    } catch {
      ok = false;
    }
    if (!ok) problems.add('jwtIssuer must be an http(s) URL without query, fragment or credentials');
  }
  if (opts.upstream && (!opts.upstream.certFile || !opts.upstream.keyFile)) problems.add('upstream needs certFile and keyFile');
  problems.throwIfAny('CA options');
}

function caSubject(role: 'root' | 'signing', td: TrustDomain, id: string): x509.JsonName {
  // ub-organizational-unit-name is 64 characters; longer trust domains live only in the URI SAN.
  const name: x509.JsonName = [{ O: ['agentid'] }];
  if (td.name.length <= 64) name.push({ OU: [td.name] });
  name.push({ CN: [`agentid ${role} CA ${id.slice(0, 16)}`] });
  return name;
}

async function createCaCert(p: {
  subjectKey: SigningKey;
  subject: x509.JsonName;
  /** undefined: self-signed. */
  issuer: IssuingCa | undefined;
  notBefore: number;
  notAfter: number;
  pathLength: number | undefined;
  trustDomain: TrustDomain;
}): Promise<Buffer> {
  const signer = p.issuer?.key ?? p.subjectKey;
  const { key: signingKey, algorithm } = await signer.webCryptoKey();
  const ski = keyIdOf(p.subjectKey.publicKeySpki);
  const subjectName = new x509.Name(p.subject);
  // The issuer name is copied from the issuer's certificate bytes; chain builders (Go) compare bytes.
  const issuerName = p.issuer ? new x509.Name(der.certificateParts(p.issuer.certDer).subject) : subjectName;
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial().toString('hex'),
    subject: subjectName,
    issuer: issuerName,
    notBefore: new Date(p.notBefore),
    notAfter: new Date(p.notAfter),
    publicKey: p.subjectKey.publicKeySpki,
    signingKey,
    signingAlgorithm: algorithm,
    extensions: [
      new x509.BasicConstraintsExtension(true, p.pathLength, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      new x509.SubjectKeyIdentifierExtension(ski.toString('hex')),
      ...(p.issuer ? [new x509.AuthorityKeyIdentifierExtension(p.issuer.ski.toString('hex'))] : []),
      // SPIRE puts the trust domain's SPIFFE ID on its CAs; clients may use it to scope bundles.
      new x509.SubjectAlternativeNameExtension([{ type: 'url', value: p.trustDomain.idString }]),
    ],
  });
  const certDer = Buffer.from(cert.rawData);
  const parts = der.certificateParts(certDer);
  const expectedIssuer = p.issuer ? der.certificateParts(p.issuer.certDer).subject : parts.subject;
  if (!parts.issuer.equals(expectedIssuer)) throw internal('CA certificate: issuer name was re-encoded differently from the issuer subject');
  const node = new NodeX509Certificate(certDer);
  if (!node.verify(signer.publicKey)) throw internal('CA certificate: signature does not verify');
  return certDer;
}

// ---------------------------------------------------------------------------------------------

export class CertificateAuthority {
  readonly trustDomain: TrustDomain;
  private readonly clock: Clock;
  private readonly logger: Logger;
  private readonly caDir: string;
  private readonly cfg: Required<Omit<CaOptions, 'upstream' | 'dataDir' | 'trustDomain' | 'clock' | 'logger' | 'rotateOnOpen'>>;
  private readonly upstream: Upstream | undefined;

  private state: PersistedState;
  private readonly roots = new Map<string, IssuingCa>();
  private readonly signingCas = new Map<string, SigningCa>();
  private readonly jwtSigners = new Map<string, JwtSigner>();
  private activeSigning: { ca: SigningCa; notAfter: number } | undefined;
  private activeJwt: { signer: JwtSigner; notAfter: number } | undefined;
  private lastCrlNumber = 0n;
  private rotating: Promise<unknown> = Promise.resolve();

  private constructor(opts: CaOptions, upstream: Upstream | undefined, state: PersistedState) {
    this.trustDomain = opts.trustDomain;
    this.clock = opts.clock;
    this.logger = opts.logger;
    this.caDir = join(opts.dataDir, 'ca');
    this.upstream = upstream;
    this.state = state;
    this.cfg = {
      keyType: opts.keyType ?? CA_DEFAULTS.keyType,
      svidKeyType: opts.svidKeyType ?? CA_DEFAULTS.svidKeyType,
      rootTtlMs: opts.rootTtlMs ?? CA_DEFAULTS.rootTtlMs,
      caTtlMs: opts.caTtlMs ?? CA_DEFAULTS.caTtlMs,
      jwtKeyType: opts.jwtKeyType ?? CA_DEFAULTS.jwtKeyType,
      jwtKeyTtlMs: opts.jwtKeyTtlMs ?? CA_DEFAULTS.jwtKeyTtlMs,
      maxJwtTtlMs: opts.maxJwtTtlMs ?? CA_DEFAULTS.maxJwtTtlMs,
      jwtIssuer: opts.jwtIssuer ?? `https://${opts.trustDomain.name}`,
      crlTtlMs: opts.crlTtlMs ?? CA_DEFAULTS.crlTtlMs,
    };
  }

  /**
   * Creates the CA on first start, or loads it. Throws failed_precondition (AgentIdError) on unsafe
   * permissions, a state that cannot be loaded (never replaced silently), or a configuration that
   * contradicts the stored state (other trust domain, self-managed vs upstream, other upstream key).
   */
  static async open(opts: CaOptions): Promise<CertificateAuthority> {
    validateOptions(opts);
    await ensurePrivateDir(opts.dataDir);
    const caDir = join(opts.dataDir, 'ca');
    await ensurePrivateDir(caDir, true);
    const upstream = opts.upstream ? await loadUpstream(opts.upstream, opts.clock.now()) : undefined;
    const expectedIssuer = upstream ? upstream.stateTag : 'self';

    const existing = await readState(caDir);
    let state: PersistedState;
    if (existing) {
      state = existing;
      if (state.trustDomain !== opts.trustDomain.name) {
        throw failedPrecondition(
          `CA state in ${caDir} belongs to trust domain ${state.trustDomain}, not ${opts.trustDomain.name}: ` +
            `leave out --trust-domain (it is read from the data directory) or give --trust-domain ${state.trustDomain}`,
        );
      }
      if (state.issuer !== expectedIssuer) {
        throw failedPrecondition(
          `CA state in ${caDir} was created ${state.issuer === 'self' ? 'with a self-managed root' : 'under another upstream CA key'}, ` +
            `but the configuration ${upstream ? 'names an upstream CA with a different key' : 'has no upstream CA'}; ` +
            `agentid does not replace a CA silently: move ${caDir} aside to start a new one`,
        );
      }
      if (upstream && state.upstreamBundleSha256 !== upstream.bundleSha256) {
        state = { ...state, bundleSequence: state.bundleSequence + 1, upstreamBundleSha256: upstream.bundleSha256 };
      }
    } else {
      state = {
        version: STATE_VERSION,
        trustDomain: opts.trustDomain.name,
        issuer: expectedIssuer,
        bundleSequence: 1,
        jwtKeysSequence: 1,
        ...(upstream ? { upstreamBundleSha256: upstream.bundleSha256 } : {}),
        roots: [],
        x509: [],
        jwt: [],
      };
    }

    const ca = new CertificateAuthority(opts, upstream, state);
    await ca.loadMaterial();
    if (!existing || existing.bundleSequence !== state.bundleSequence) await ca.saveState(state);
    // A reader next to a running server (offline CLI) must not rotate: the server owns the state.
    if (opts.rotateOnOpen !== false || !existing) await ca.rotate();
    return ca;
  }

  // -- queries ---------------------------------------------------------------------------------

  /** DER trust anchors of the own trust domain: every self-managed root still kept, or the upstream bundle. */
  x509Bundle(): Buffer[] {
    if (this.upstream) return [...this.upstream.bundle];
    return this.state.roots.map((r) => this.roots.get(r.id)!.certDer);
  }

  /** Changes whenever x509Bundle() changes; persisted, so it only grows across restarts. */
  x509BundleVersion(): number {
    return this.state.bundleSequence;
  }

  /** JWT keys to publish: prepared, active, and retired ones whose tokens may still be live. */
  jwtKeys(): PublicJwk[] {
    return this.state.jwt.map((k) => publicJwk(this.jwtSigners.get(k.id)!.key));
  }

  /** Changes whenever jwtKeys() changes; persisted. */
  jwtKeysVersion(): number {
    return this.state.jwtKeysSequence;
  }

  /** The `iss` claim of minted JWT-SVIDs. */
  get jwtIssuer(): string {
    return this.cfg.jwtIssuer;
  }

  get maxJwtTtlMs(): number {
    return this.cfg.maxJwtTtlMs;
  }

  /** The configured signing CA lifetime (for svidTtlWarning). */
  get caTtlMs(): number {
    return this.cfg.caTtlMs;
  }

  nextRotationAt(): number {
    return planNextRotationAt(this.rotationState());
  }

  // -- minting (hot path, synchronous) -----------------------------------------------------------

  mintX509Svid(req: { spiffeId: SpiffeId; ttlMs: number; dnsNames?: string[] }): MintedX509Svid {
    const keyPair = generateLeafKeyPair(this.cfg.svidKeyType);
    return { ...this.mintLeaf(req, keyPair.spki), privateKeyPkcs8: keyPair.pkcs8 };
  }

  /**
   * Mints for a key generated elsewhere (a per-host agent keeps its private keys; only the public
   * key travels). The SPKI must be of this CA's SVID key type (checkLeafSpki); nothing else differs.
   */
  mintX509SvidForKey(req: { spiffeId: SpiffeId; ttlMs: number; dnsNames?: string[]; spki: Buffer }): Omit<MintedX509Svid, 'privateKeyPkcs8'> {
    return this.mintLeaf(req, checkLeafSpki(req.spki, this.cfg.svidKeyType));
  }

  private mintLeaf(req: { spiffeId: SpiffeId; ttlMs: number; dnsNames?: string[] }, spki: Buffer): Omit<MintedX509Svid, 'privateKeyPkcs8'> {
    this.checkMember(req.spiffeId);
    if (!Number.isFinite(req.ttlMs) || req.ttlMs < 1000) throw invalidArgument('X.509-SVID: TTL must be at least one second');
    const now = this.clock.now();
    const active = this.activeSigning;
    if (!active || now >= active.notAfter) throw unavailable('no active signing CA: CA rotation is overdue');
    const validity = svidValidity(now, req.ttlMs, active.notAfter);
    if (validity.notAfter <= now) throw unavailable('the active signing CA expires within a second: CA rotation is overdue');
    const spiffeId = req.spiffeId.toString();
    const leaf = active.ca.template.mint({
      spiffeId,
      dnsNames: req.dnsNames ?? [],
      notBefore: validity.notBefore,
      notAfter: validity.notAfter,
      spki,
    });
    // Its own memory (buffers.ts): cached for the SVID's life, it would otherwise pin a shared 8 KiB slab.
    const certDer = unpooled(leaf.certDer);
    return {
      spiffeId,
      certDer,
      chainDer: [certDer, ...active.ca.chainTail],
      serial: leaf.serial,
      notBefore: validity.notBefore,
      notAfter: validity.notAfter,
      issuerId: active.ca.id,
    };
  }

  /** TTLs above maxJwtTtlMs are cut to it: a token must not outlive its key's publication. */
  mintJwtSvid(req: { spiffeId: SpiffeId; audience: string[]; ttlMs: number }): MintedJwtSvid {
    this.checkMember(req.spiffeId);
    if (!Number.isFinite(req.ttlMs) || req.ttlMs < 1000) throw invalidArgument('JWT-SVID: TTL must be at least one second');
    const now = this.clock.now();
    const active = this.activeJwt;
    if (!active || now >= active.notAfter) throw unavailable('no active JWT signing key: rotation is overdue');
    const signer = active.signer;
    const spiffeId = req.spiffeId.toString();
    const minted = signer.mint({
      spiffeId,
      audience: req.audience,
      issuer: this.cfg.jwtIssuer,
      now,
      ttlMs: Math.min(req.ttlMs, this.cfg.maxJwtTtlMs),
    });
    return { spiffeId, kid: signer.kid, ...minted };
  }

  /**
   * One DER CRL per unexpired signing CA (an empty one when nothing it issued is revoked), each
   * listing the given serials issued by that CA, then one per unexpired self-managed root listing
   * the signing CAs an operator revoked (usually none). The root CRLs are what OpenSSL's
   * full-chain check (nginx `ssl_crl`, `-crl_check_all`) needs: a CRL from the issuer of every
   * certificate in the chain. Rebuild on every revocation and before nextUpdate.
   */
  buildCrls(revoked: readonly RevokedSerial[]): Buffer[] {
    // Validate every serial, also those of other issuers, so bad input never passes silently.
    const entries = revoked.map((r) => ({ ...r, serial: normalizeSerial(r.serial) }));
    const now = this.clock.now();
    // CRL numbers must only grow (RFC 5280 §5.2.3), across restarts too: milliseconds do that.
    const base = BigInt(Math.floor(now));
    const crlOf = (issuer: { key: SigningKey; certDer: Buffer; ski: Buffer }, listed: readonly { serial: string; revokedAt: number }[]) => {
      this.lastCrlNumber = base > this.lastCrlNumber ? base : this.lastCrlNumber + 1n;
      return buildCrl(
        { key: issuer.key, certDer: issuer.certDer, subjectKeyId: issuer.ski },
        { crlNumber: this.lastCrlNumber, thisUpdate: floorSeconds(now - BACKDATE_MS), nextUpdate: floorSeconds(now + this.cfg.crlTtlMs), entries: listed },
      );
    };
    const out = this.state.x509
      .filter((item) => now < item.notAfter)
      .map((item) => crlOf(this.signingCas.get(item.id)!, entries.filter((r) => r.issuerId === item.id)));
    // An upstream CA belongs to another PKI: its CRL (which must cover everything it issued) is
    // that PKI's to publish, never one agentid signs in its name listing only our signing CAs.
    if (this.upstream) return out;
    const revokedCas = (this.state.revokedCas ?? []).filter((c) => now < c.notAfter);
    for (const item of this.state.roots) {
      if (now < item.notAfter) out.push(crlOf(this.roots.get(item.id)!, revokedCas.filter((c) => c.issuerId === item.id)));
    }
    return out;
  }

  // -- rotation -------------------------------------------------------------------------------

  /**
   * Applies whatever rotation is due at clock.now() and logs each event; calls are serialized.
   * Rejects (leaving the CA as it was) when a step fails, e.g. an upstream CA about to expire:
   * callers retry with backoff rather than at nextRotationAt(), which is then already past.
   */
  rotate(): Promise<RotationResult> {
    const run = this.rotating.then(() => this.rotateNow());
    this.rotating = run.catch(() => undefined);
    return run;
  }

  private rotationState(): RotationState {
    return {
      ...(this.upstream ? {} : { root: this.state.roots }),
      x509: this.state.x509,
      jwt: this.state.jwt,
      jwtKeepAfterExpiryMs: this.cfg.maxJwtTtlMs,
    };
  }

  /** Current roots, signing CAs and JWT keys with their slots, for the admin API. */
  authorities(): { kind: RotationKind; id: string; slot: string; tainted: boolean; notBefore: number; notAfter: number; issuerId?: string }[] {
    const list = (kind: RotationKind, items: readonly PersistedItem[]) =>
      items.map((i) => ({ kind, id: i.id, slot: i.slot, tainted: i.tainted === true, notBefore: i.notBefore, notAfter: i.notAfter, ...(i.issuerId ? { issuerId: i.issuerId } : {}) }));
    return [...list('root', this.state.roots), ...list('x509', this.state.x509), ...list('jwt', this.state.jwt)];
  }

  /**
   * An operator's prepare, activate, taint or revoke (ca/manual.ts), serialized with rotation.
   * `condemned`: the IDs whose signatures must no longer be served (taint, revoke), so the caller
   * re-mints what they signed; `guard` may refuse the change after seeing them (nothing is written).
   */
  manage(req: ManualRequest, guard?: (condemned: ReadonlySet<string>) => void): Promise<RotationResult & { condemned: Set<string> }> {
    const run = this.rotating.then(async () => {
      const now = this.clock.now();
      const state = { ...this.rotationState(), root: this.upstream ? undefined : this.state.roots };
      const actions = planManual(state, req, now);
      const target = actions.find((a) => a.type === 'taint' || a.type === 'revoke');
      const condemned = target ? condemnedIds(state, target.kind, target.id) : new Set<string>();
      guard?.(condemned);
      return { ...(await this.applyActions(actions, now)), condemned };
    });
    this.rotating = run.catch(() => undefined);
    return run;
  }

  private async rotateNow(): Promise<RotationResult> {
    const now = this.clock.now();
    return this.applyActions(planRotation(this.rotationState(), now), now);
  }

  private async applyActions(actions: readonly RotationAction[], now: number): Promise<RotationResult> {
    if (actions.length === 0) return { changed: false, events: [] };

    let next: PersistedState = { ...this.state, roots: [...this.state.roots], x509: [...this.state.x509], jwt: [...this.state.jwt] };
    const events: RotationEvent[] = [];
    const created: { kind: RotationKind; id: string; material: IssuingCa | SigningCa | JwtSigner }[] = [];
    const removedFiles: string[] = [];
    const pendingRoots = new Map<string, IssuingCa>();
    const listOf = (kind: RotationKind): 'roots' | 'x509' | 'jwt' => (kind === 'root' ? 'roots' : kind);
    const label = (kind: RotationKind) => (kind === 'root' ? 'root CA' : kind === 'x509' ? 'signing CA' : 'JWT key');

    for (const action of actions) {
      const list = listOf(action.kind);
      if (action.type === 'create') {
        const item = await this.createItem(action, now, next, pendingRoots, (m) => {
          created.push(m);
          if (m.kind === 'root') pendingRoots.set(m.id, m.material as IssuingCa);
        });
        next = { ...next, [list]: applyToItems(next[list], action, item) };
        events.push({
          kind: action.kind, id: item.id, phase: action.activate ? 'active' : 'prepared', notAfter: item.notAfter,
          text: `${label(action.kind)} ${item.id} created ${action.activate ? 'and activated' : 'as prepared'}`,
        });
      } else if (action.type === 'activate') {
        const old = next[list].find((i) => i.slot === 'active');
        const item = next[list].find((i) => i.id === action.id);
        next = { ...next, [list]: applyToItems(next[list], action) };
        events.push({
          kind: action.kind, id: action.id, phase: 'active', previousId: old?.id, notAfter: item?.notAfter ?? 0,
          text: `${label(action.kind)} ${action.id} activated${old ? `, ${old.id} retired` : ''}`,
        });
      } else if (action.type === 'taint') {
        const item = next[list].find((i) => i.id === action.id);
        next = { ...next, [list]: applyToItems(next[list], action) };
        events.push({ kind: action.kind, id: action.id, phase: 'tainted', notAfter: item?.notAfter ?? 0, text: `${label(action.kind)} ${action.id} tainted` });
      } else {
        const item = next[list].find((i) => i.id === action.id);
        next = { ...next, [list]: applyToItems(next[list], action) };
        removedFiles.push(...this.filesOf(action.kind, action.id));
        const signingCa = action.kind === 'x509' ? this.signingCas.get(action.id) : undefined;
        if (action.type === 'revoke' && signingCa && item) {
          // Listed on its root's CRL until it expires, so full-chain CRL checks refuse it too.
          const serial = normalizeSerial(new NodeX509Certificate(signingCa.certDer).serialNumber);
          next.revokedCas = [...(next.revokedCas ?? []), { id: item.id, serial, issuerId: signingCa.issuerId, revokedAt: now, notAfter: item.notAfter }];
        }
        const phase = action.type === 'revoke' ? 'revoked' : 'removed';
        events.push({ kind: action.kind, id: action.id, phase, notAfter: item?.notAfter ?? 0, text: `${label(action.kind)} ${action.id} ${phase}` });
      }
    }
    const ids = (items: readonly SlotItem[]) => items.map((i) => i.id).sort().join(',');
    if (ids(next.roots) !== ids(this.state.roots)) next.bundleSequence += 1;
    if (ids(next.jwt) !== ids(this.state.jwt)) next.jwtKeysSequence += 1;

    await this.saveState(next);
    // Only once the new state is durable does it become the one in use.
    for (const c of created) {
      if (c.kind === 'root') this.roots.set(c.id, c.material as IssuingCa);
      else if (c.kind === 'x509') this.signingCas.set(c.id, c.material as SigningCa);
      else this.jwtSigners.set(c.id, c.material as JwtSigner);
    }
    this.state = next;
    this.pruneMaterial();
    this.selectActive();
    for (const event of events) this.logger.info({ event: event.text }, 'CA rotation');
    for (const file of removedFiles) await removeIfExists(join(this.caDir, file));
    return { changed: true, events };
  }

  private async createItem(
    action: Extract<RotationAction, { type: 'create' }>,
    now: number,
    next: PersistedState,
    pendingRoots: ReadonlyMap<string, IssuingCa>,
    register: (m: { kind: RotationKind; id: string; material: IssuingCa | SigningCa | JwtSigner }) => void,
  ): Promise<PersistedItem> {
    const notBefore = floorSeconds(now - BACKDATE_MS);
    if (action.kind === 'jwt') {
      const type: KeyType = this.cfg.jwtKeyType === 'ES384' ? 'ec-p384' : 'ec-p256';
      const key = SigningKey.generate(type, randomId());
      await writeKeyFile(join(this.caDir, jwtFiles(key.id).key), key);
      register({ kind: 'jwt', id: key.id, material: new JwtSigner(key) });
      return { id: key.id, slot: 'prepared', notBefore, notAfter: floorSeconds(now + this.cfg.jwtKeyTtlMs), alg: this.cfg.jwtKeyType };
    }

    const fresh = SigningKey.generate(this.cfg.keyType);
    const ski = keyIdOf(fresh.publicKeySpki);
    const id = ski.toString('hex');
    const key = fresh.withId(id);
    if (action.kind === 'root') {
      const notAfter = floorSeconds(now + this.cfg.rootTtlMs);
      const certDer = await createCaCert({
        subjectKey: key,
        subject: caSubject('root', this.trustDomain, id),
        issuer: undefined,
        notBefore,
        notAfter,
        pathLength: undefined,
        trustDomain: this.trustDomain,
      });
      const files = rootFiles(id);
      await writeKeyFile(join(this.caDir, files.key), key);
      await writeFileAtomic(join(this.caDir, files.cert), toPem(certDer, 'CERTIFICATE'), PUBLIC_FILE_MODE);
      register({ kind: 'root', id, material: { id, key, certDer, ski, notAfter, chainAbove: [] } });
      return { id, slot: 'prepared', notBefore, notAfter };
    }

    const issuer = this.currentIssuer(next, now, pendingRoots);
    const notAfter = floorSeconds(Math.min(now + this.cfg.caTtlMs, issuer.notAfter));
    if (notAfter <= now + 1000) {
      throw unavailable(`cannot create a signing CA: issuing CA ${issuer.id} expires at ${iso(issuer.notAfter)}`);
    }
    const certDer = await createCaCert({
      subjectKey: key,
      subject: caSubject('signing', this.trustDomain, id),
      issuer,
      notBefore,
      notAfter,
      pathLength: 0,
      trustDomain: this.trustDomain,
    });
    const files = signingFiles(id);
    await writeKeyFile(join(this.caDir, files.key), key);
    await writeFileAtomic(join(this.caDir, files.cert), toPem(certDer, 'CERTIFICATE'), PUBLIC_FILE_MODE);
    register({ kind: 'x509', id, material: this.signingCaFrom(id, key, certDer, ski, issuer) });
    return { id, slot: 'prepared', notBefore, notAfter, issuerId: issuer.id };
  }

  /** The CA that issues new signing CAs: the upstream one, or the active root of `state`. */
  private currentIssuer(state: PersistedState, now: number, pending: ReadonlyMap<string, IssuingCa>): IssuingCa {
    if (this.upstream) {
      if (now >= this.upstream.issuer.notAfter) throw failedPrecondition(`upstream CA certificate expired at ${iso(this.upstream.issuer.notAfter)}`);
      return this.upstream.issuer;
    }
    const active = state.roots.find((r) => r.slot === 'active');
    const root = active && (this.roots.get(active.id) ?? pending.get(active.id));
    if (!root) throw internal('no active root CA to issue a signing CA');
    return root;
  }

  private signingCaFrom(id: string, key: SigningKey, certDer: Buffer, ski: Buffer, issuer: IssuingCa): SigningCa {
    return {
      id,
      key,
      certDer,
      ski,
      issuerId: issuer.id,
      template: new X509SvidTemplate({ key, certDer, subjectKeyId: ski }),
      chainTail: [certDer, ...issuer.chainAbove],
    };
  }

  private filesOf(kind: RotationKind, id: string): string[] {
    if (kind === 'root') return Object.values(rootFiles(id));
    if (kind === 'x509') return Object.values(signingFiles(id));
    return Object.values(jwtFiles(id));
  }

  private pruneMaterial(): void {
    const keep = (map: Map<string, unknown>, items: readonly SlotItem[]) => {
      const ids = new Set(items.map((i) => i.id));
      for (const id of map.keys()) if (!ids.has(id)) map.delete(id);
    };
    keep(this.roots, this.state.roots);
    keep(this.signingCas, this.state.x509);
    keep(this.jwtSigners, this.state.jwt);
  }

  private selectActive(): void {
    const x = this.state.x509.find((i) => i.slot === 'active');
    this.activeSigning = x ? { ca: this.signingCas.get(x.id)!, notAfter: x.notAfter } : undefined;
    const j = this.state.jwt.find((i) => i.slot === 'active');
    this.activeJwt = j ? { signer: this.jwtSigners.get(j.id)!, notAfter: j.notAfter } : undefined;
  }

  // -- loading and saving ---------------------------------------------------------------------

  private async loadMaterial(): Promise<void> {
    for (const item of this.state.roots) {
      const files = rootFiles(item.id);
      const certDer = await this.readCert(files.cert);
      const key = await readKeyFile(join(this.caDir, files.key), item.id);
      const cert = parseCert(certDer, files.cert);
      checkKeyMatches(cert, key, join(this.caDir, files.key));
      const ski = keyIdOf(key.publicKeySpki);
      if (ski.toString('hex') !== item.id) throw failedPrecondition(`${files.cert}: key does not match root ID ${item.id}`);
      if (!cert.verify(key.publicKey)) throw failedPrecondition(`${files.cert}: root certificate is not self-signed by its key`);
      this.roots.set(item.id, { id: item.id, key, certDer, ski, notAfter: certTimes(cert).notAfter, chainAbove: [] });
    }
    for (const item of this.state.x509) {
      const files = signingFiles(item.id);
      const issuer = this.upstream && item.issuerId === this.upstream.issuer.id ? this.upstream.issuer : this.roots.get(item.issuerId ?? '');
      if (!issuer) {
        throw failedPrecondition(`CA state: signing CA ${item.id} names issuer ${item.issuerId ?? '(none)'}, which is not in the state`);
      }
      const certDer = await this.readCert(files.cert);
      const key = await readKeyFile(join(this.caDir, files.key), item.id);
      const cert = parseCert(certDer, files.cert);
      checkKeyMatches(cert, key, join(this.caDir, files.key));
      if (!cert.verify(issuer.key.publicKey)) throw failedPrecondition(`${files.cert}: not signed by its issuer ${issuer.id}`);
      const ski = keyIdOf(key.publicKeySpki);
      if (ski.toString('hex') !== item.id) throw failedPrecondition(`${files.cert}: key does not match signing CA ID ${item.id}`);
      this.signingCas.set(item.id, this.signingCaFrom(item.id, key, certDer, ski, issuer));
    }
    for (const item of this.state.jwt) {
      const key = await readKeyFile(join(this.caDir, jwtFiles(item.id).key), item.id);
      const expected = item.alg === 'ES384' ? 'ec-p384' : 'ec-p256';
      if (key.algorithm !== expected) throw failedPrecondition(`${jwtFiles(item.id).key}: key is not ${item.alg ?? 'ES256'}`);
      this.jwtSigners.set(item.id, new JwtSigner(key));
    }
    this.selectActive();
  }

  private async readCert(file: string): Promise<Buffer> {
    const path = join(this.caDir, file);
    let text: string;
    try {
      text = await readFile(path, 'latin1');
    } catch (err) {
      throw failedPrecondition(`CA state: ${path} is missing or unreadable`, err);
    }
    const [first] = pemCertificates(text, path);
    return first!;
  }

  private async saveState(state: PersistedState): Promise<void> {
    await checkDirSafe(this.caDir, true);
    await writeFileAtomic(join(this.caDir, STATE_FILE), `${JSON.stringify(state, null, 2)}\n`, KEY_FILE_MODE);
  }

  // -- describe -------------------------------------------------------------------------------

  /** For `agentid ca show`: IDs, subjects, validity, slots and key IDs; never key material. */
  describe(): object {
    const subjectOf = (certDer: Buffer) => new NodeX509Certificate(certDer).subject.replace(/\n/g, ', ');
    const item = (i: PersistedItem, certDer?: Buffer) => ({
      id: i.id,
      slot: i.slot,
      ...(certDer ? { subject: subjectOf(certDer) } : {}),
      notBefore: iso(i.notBefore),
      notAfter: iso(i.notAfter),
    });
    const next = this.nextRotationAt();
    return {
      trustDomain: this.trustDomain.name,
      mode: this.upstream ? 'upstream' : 'self-managed root',
      bundleVersion: this.state.bundleSequence,
      jwtKeysVersion: this.state.jwtKeysSequence,
      jwtIssuer: this.cfg.jwtIssuer,
      ...(this.upstream
        ? {
            upstream: {
              id: this.upstream.issuer.id,
              subject: subjectOf(this.upstream.issuer.certDer),
              notAfter: iso(this.upstream.issuer.notAfter),
              bundle: this.upstream.bundle.map((c) => ({ subject: subjectOf(c), sha256: sha256Hex(c) })),
            },
          }
        : { roots: this.state.roots.map((r) => item(r, this.roots.get(r.id)?.certDer)) }),
      signingCas: this.state.x509.map((c) => ({ ...item(c, this.signingCas.get(c.id)?.certDer), issuerId: c.issuerId })),
      jwtKeys: this.state.jwt.map((k) => ({
        ...item(k),
        kid: k.id,
        alg: k.alg,
        publishedUntil: iso(k.notAfter + this.cfg.maxJwtTtlMs),
      })),
      nextRotationAt: Number.isFinite(next) ? iso(next) : 'now',
    };
  }

  private checkMember(id: SpiffeId): void {
    if (!id.isMemberOf(this.trustDomain)) {
      throw invalidArgument(`SPIFFE ID ${id.toString()} is not in trust domain ${this.trustDomain.name}`);
    }
    if (id.path === '') throw invalidArgument('an SVID must not be issued for the trust domain ID itself');
  }
}

// ---------------------------------------------------------------------------------------------

async function readState(caDir: string): Promise<PersistedState | undefined> {
  const path = join(caDir, STATE_FILE);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw failedPrecondition(`CA state ${path} cannot be read`, err);
    const leftovers = (await readdir(caDir)).filter((f) => !f.startsWith('.'));
    if (leftovers.length > 0) {
      throw failedPrecondition(
        `CA state ${path} is missing but ${caDir} holds ${leftovers.slice(0, 3).join(', ')}${leftovers.length > 3 ? ', ...' : ''}; ` +
          `agentid does not replace a CA silently: restore the state or move ${caDir} aside`,
      );
    }
    return undefined;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw failedPrecondition(`CA state ${path} is not valid JSON`, err);
  }
  return checkState(parsed, path);
}

function checkState(value: unknown, path: string): PersistedState {
  const bad = (why: string) => failedPrecondition(`CA state ${path}: ${why}`);
  if (typeof value !== 'object' || value === null) throw bad('not an object');
  const s = value as Record<string, unknown>;
  if (s.version !== STATE_VERSION) throw bad(`version ${String(s.version)} is not supported (expected ${STATE_VERSION})`);
  if (typeof s.trustDomain !== 'string' || typeof s.issuer !== 'string') throw bad('trustDomain and issuer must be strings');
  for (const k of ['bundleSequence', 'jwtKeysSequence'] as const) {
    if (!Number.isSafeInteger(s[k]) || (s[k] as number) < 1) throw bad(`${k} must be a positive integer`);
  }
  const items = (name: 'roots' | 'x509' | 'jwt'): PersistedItem[] => {
    const list = s[name];
    if (!Array.isArray(list)) throw bad(`${name} must be a list`);
    let active = 0;
    const seen = new Set<string>();
    for (const raw of list as unknown[]) {
      const i = raw as Record<string, unknown>;
      if (typeof i !== 'object' || i === null) throw bad(`${name}: entry is not an object`);
      // IDs become file names: hex or base64url only, so a crafted state cannot point outside the directory.
      if (typeof i.id !== 'string' || !/^[A-Za-z0-9_-]{8,64}$/.test(i.id)) throw bad(`${name}: bad id`);
      if (seen.has(i.id)) throw bad(`${name}: duplicate id ${i.id}`);
      seen.add(i.id);
      if (i.slot !== 'prepared' && i.slot !== 'active' && i.slot !== 'retired') throw bad(`${name} ${i.id}: bad slot`);
      if (i.slot === 'active') active++;
      if (!Number.isSafeInteger(i.notBefore) || !Number.isSafeInteger(i.notAfter)) throw bad(`${name} ${i.id}: bad validity`);
      if (name === 'x509' && typeof i.issuerId !== 'string') throw bad(`${name} ${i.id}: missing issuerId`);
      if (name === 'jwt' && i.alg !== 'ES256' && i.alg !== 'ES384') throw bad(`${name} ${i.id}: bad alg`);
      if (i.tainted !== undefined && typeof i.tainted !== 'boolean') throw bad(`${name} ${i.id}: tainted must be true or false`);
      if (i.tainted === true && i.slot === 'active') throw bad(`${name} ${i.id}: a tainted item cannot be active`);
    }
    if (active > 1) throw bad(`${name}: more than one active entry`);
    return list as PersistedItem[];
  };
  const revokedCas = s.revokedCas === undefined ? [] : s.revokedCas;
  if (!Array.isArray(revokedCas)) throw bad('revokedCas must be a list');
  for (const raw of revokedCas as unknown[]) {
    const c = raw as Record<string, unknown>;
    if (typeof c !== 'object' || c === null) throw bad('revokedCas: entry is not an object');
    if (typeof c.id !== 'string' || typeof c.issuerId !== 'string' || typeof c.serial !== 'string' || !/^[0-9a-f]{1,40}$/.test(c.serial)) {
      throw bad('revokedCas: each entry needs id, issuerId and a lowercase hex serial');
    }
    if (!Number.isSafeInteger(c.revokedAt) || !Number.isSafeInteger(c.notAfter)) throw bad(`revokedCas ${c.id}: bad times`);
  }
  return {
    version: STATE_VERSION,
    trustDomain: s.trustDomain,
    issuer: s.issuer,
    bundleSequence: s.bundleSequence as number,
    jwtKeysSequence: s.jwtKeysSequence as number,
    ...(typeof s.upstreamBundleSha256 === 'string' ? { upstreamBundleSha256: s.upstreamBundleSha256 } : {}),
    roots: items('roots'),
    x509: items('x509'),
    jwt: items('jwt'),
    revokedCas: revokedCas as RevokedCa[],
  };
}

async function loadUpstream(
  files: { certFile: string; keyFile: string; bundleFile?: string },
  now: number,
): Promise<Upstream> {
  let certText: string;
  try {
    certText = await readFile(files.certFile, 'latin1');
  } catch (err) {
    throw failedPrecondition(`upstream certFile ${files.certFile} cannot be read`, err);
  }
  const [certDer] = pemCertificates(certText, `upstream certFile ${files.certFile}`);
  const cert = parseCert(certDer!, `upstream certFile ${files.certFile}`);
  const keyBytes = await readPrivateFile(files.keyFile);
  let key: SigningKey;
  try {
    key = SigningKey.fromPrivateKeyBytes(keyBytes, 'upstream', `upstream keyFile ${files.keyFile}`);
  } finally {
    keyBytes.fill(0);
  }
  checkKeyMatches(cert, key, `upstream keyFile ${files.keyFile}`);

  const parsed = new x509.X509Certificate(certDer!);
  const what = `upstream certificate ${files.certFile}`;
  const bc = parsed.getExtension(x509.BasicConstraintsExtension);
  if (!bc?.ca) throw failedPrecondition(`${what}: is not a CA (basicConstraints CA=true is required)`);
  if (bc.pathLength !== undefined && bc.pathLength < 1) {
    throw failedPrecondition(`${what}: pathLen ${bc.pathLength} leaves no room for agentid's signing CAs (needs at least 1)`);
  }
  const ku = parsed.getExtension(x509.KeyUsagesExtension);
  if (ku && (ku.usages & x509.KeyUsageFlags.keyCertSign) === 0) throw failedPrecondition(`${what}: keyUsage lacks keyCertSign`);
  const { notBefore, notAfter } = certTimes(cert);
  if (now >= notAfter) throw failedPrecondition(`${what}: expired at ${iso(notAfter)}`);
  if (now < notBefore) throw failedPrecondition(`${what}: not valid before ${iso(notBefore)}`);
  const skiExt = parsed.getExtension(x509.SubjectKeyIdentifierExtension);
  // AKIs of our signing CAs must carry the upstream's own SKI value, whatever method made it.
  const ski = skiExt ? Buffer.from(skiExt.keyId, 'hex') : keyIdOf(key.publicKeySpki);

  const parts = der.certificateParts(certDer!);
  const selfSigned = parts.subject.equals(parts.issuer) && cert.verify(key.publicKey);
  let bundle: Buffer[];
  if (files.bundleFile) {
    let bundleText: string;
    try {
      bundleText = await readFile(files.bundleFile, 'latin1');
    } catch (err) {
      throw failedPrecondition(`upstream bundleFile ${files.bundleFile} cannot be read`, err);
    }
    bundle = pemCertificates(bundleText, `upstream bundleFile ${files.bundleFile}`);
    bundle.forEach((c, i) => {
      const b = parseCert(c, `upstream bundleFile ${files.bundleFile} certificate ${i + 1}`);
      if (!b.ca) throw failedPrecondition(`upstream bundleFile ${files.bundleFile} certificate ${i + 1}: is not a CA`);
    });
  } else if (selfSigned) {
    bundle = [certDer!];
  } else {
    throw failedPrecondition(`${what}: is not self-signed, so upstream.bundleFile must name the trust anchors it chains to`);
  }
  const keyHash = sha256Hex(key.publicKeySpki);
  const id = ski.toString('hex');
  return {
    issuer: { id, key: key.withId(id), certDer: certDer!, ski, notAfter, chainAbove: selfSigned ? [] : [certDer!] },
    bundle,
    bundleSha256: sha256Hex(Buffer.concat(bundle)),
    stateTag: `upstream:${keyHash}`,
  };
}
