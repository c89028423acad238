import { createPrivateKey, createPublicKey } from 'node:crypto';
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { failedPrecondition } from '../common/errors.js';
import { Secret } from '../common/secret.js';
import { generateLeafKeyPair } from '../ca/keys.js';
import { ensurePrivateDir, KEY_FILE_MODE, readPrivateFile, writeFileAtomic } from '../ca/key-files.js';
import { SpiffeId, TrustDomain } from '../spiffe/spiffe-id.js';
import { Certificate } from '../verify/certificate.js';
import type { WireNodeSvid } from './node-client.js';

/** The agent's node SVID and its key, as held in <data-dir>/node (0700; files 0600). */
export interface NodeIdentity {
  node: string;
  spiffeId: SpiffeId;
  chainDer: Buffer[];
  keyPkcs8: Secret<Buffer>;
  notBefore: number;
  expiresAt: number;
  /** DER roots of the trust domain as the server last sent them (every server's). */
  trustBundle: Buffer[];
}

const DIR = 'node';
const KEY_FILE = 'node-key.der';
const SVID_FILE = 'node-svid.json';

/** A fresh node key; only its public half goes to the server. */
export function newNodeKey(): { spki: Buffer; pkcs8: Secret<Buffer> } {
  const pair = generateLeafKeyPair('ec-p256');
  return { spki: pair.spki, pkcs8: pair.pkcs8 };
}

/**
 * Checks what the server answered to Attest or RenewNodeSvid: the leaf names a node of the trust
 * domain (spiffe://<td>/agentid/node/<name>) and certifies the key the agent generated.
 */
export function acceptNodeSvid(wire: WireNodeSvid, key: { spki: Buffer; pkcs8: Secret<Buffer> }, trustDomain: TrustDomain | undefined): NodeIdentity {
  if (wire.cert_chain.length === 0) throw failedPrecondition('the server sent a node SVID without a certificate');
  const leaf = new Certificate(wire.cert_chain[0]!);
  const id = SpiffeId.parse(wire.spiffe_id);
  if (leaf.uriSans[0] !== id.toString()) throw failedPrecondition(`the node SVID names ${leaf.uriSans[0] ?? 'nothing'}, not ${id.toString()}`);
  if (trustDomain && id.trustDomain.name !== trustDomain.name) throw failedPrecondition(`the node SVID is of trust domain ${id.trustDomain.name}, not ${trustDomain.name}`);
  if (id.path !== `/agentid/node/${wire.node}`) throw failedPrecondition(`the node SVID ${id.toString()} is not the ID of node ${wire.node}`);
  if (!leaf.publicKey.export({ format: 'der', type: 'spki' }).equals(key.spki)) throw failedPrecondition('the node SVID does not certify the key this agent generated');
  return {
    node: wire.node,
    spiffeId: id,
    chainDer: wire.cert_chain.map((b) => Buffer.from(b)),
    keyPkcs8: key.pkcs8,
    notBefore: leaf.notBefore,
    expiresAt: leaf.notAfter,
    trustBundle: wire.trust_bundle.map((b) => Buffer.from(b)),
  };
}

/** Reads and writes the node identity in the data directory. */
export class NodeIdentityFiles {
  readonly dir: string;

  constructor(dataDir: string) {
    this.dir = join(dataDir, DIR);
  }

  async load(): Promise<NodeIdentity | undefined> {
    let text: string;
    try {
      text = await readFile(join(this.dir, SVID_FILE), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw failedPrecondition(`cannot read ${join(this.dir, SVID_FILE)}`, err);
    }
    await ensurePrivateDir(this.dir, true);
    const saved = JSON.parse(text) as { node: string; spiffeId: string; chain: string[]; trustBundle: string[] };
    const key = await readPrivateFile(join(this.dir, KEY_FILE));
    const chainDer = saved.chain.map((c) => Buffer.from(c, 'base64'));
    const leaf = new Certificate(chainDer[0]!);
    // A crash between writing a renewed key and its SVID leaves a pair that does not match: attest again.
    const publicKey = createPublicKey(createPrivateKey({ key, format: 'der', type: 'pkcs8' })).export({ format: 'der', type: 'spki' });
    if (!leaf.publicKey.export({ format: 'der', type: 'spki' }).equals(publicKey)) return undefined;
    return {
      node: saved.node,
      spiffeId: SpiffeId.parse(saved.spiffeId),
      chainDer,
      keyPkcs8: new Secret(key),
      notBefore: leaf.notBefore,
      expiresAt: leaf.notAfter,
      trustBundle: saved.trustBundle.map((c) => Buffer.from(c, 'base64')),
    };
  }

  /** Key first, then the SVID that names it (load() refuses a pair that does not match). */
  async save(identity: NodeIdentity): Promise<void> {
    await ensurePrivateDir(this.dir, true);
    await writeFileAtomic(join(this.dir, KEY_FILE), identity.keyPkcs8.reveal(), KEY_FILE_MODE);
    const saved = {
      node: identity.node,
      spiffeId: identity.spiffeId.toString(),
      chain: identity.chainDer.map((d) => d.toString('base64')),
      trustBundle: identity.trustBundle.map((d) => d.toString('base64')),
    };
    await writeFileAtomic(join(this.dir, SVID_FILE), JSON.stringify(saved), KEY_FILE_MODE);
  }
}
