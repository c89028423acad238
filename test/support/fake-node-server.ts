/*
 * A small stand-in for the agentid server's agent listener (agentid.node.v1.AgentIdNode over real
 * TLS), so the agent can be tested before and apart from the real one: its own PKI (root, server
 * SVID, node SVIDs, workload SVIDs for the public keys agents send), join tokens, a Sync stream fed
 * from records the test sets, and switches to go offline and to evict. It is not the server's
 * logic: tests of the real listener live with it.
 */
import 'reflect-metadata';
import { createPublicKey, generateKeyPairSync, randomBytes, sign, webcrypto, type KeyObject } from 'node:crypto';
import type { AddressInfo, Socket } from 'node:net';
import tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import * as x509 from '@peculiar/x509';
import { loadProto } from '../../src/common/proto.js';
import { toPem } from '../../src/verify/der.js';
import { peerChainDer } from '../../src/verify/tls.js';
import { Certificate } from '../../src/verify/certificate.js';
import type { AuthorityRecord, RegistrationEntry, Revocation, TaskRecord } from '../../src/datastore/types.js';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);
const subtle = webcrypto.subtle;
const EC = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

export interface FakeNodeServerOptions {
  trustDomain?: string;
  /** Lifetime of workload X.509-SVIDs it mints (default 1h). */
  svidTtlMs?: number;
  nodeSvidTtlMs?: number;
}

interface Stream {
  node: string;
  call: grpc.ServerWritableStream<unknown, unknown>;
}

export class FakeNodeServer {
  readonly trustDomain: string;
  rootDer!: Buffer;
  rootPem!: string;
  private rootKeys!: webcrypto.CryptoKeyPair;
  private rootCert!: x509.X509Certificate;
  private serverChainPem!: string;
  private serverKeyPem!: string;
  private readonly jwtKey: { privateKey: KeyObject; publicKey: KeyObject } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  private readonly kid = randomBytes(8).toString('hex');
  private tlsServer: tls.Server | undefined;
  private grpcServer: grpc.Server | undefined;
  private readonly sockets = new Set<Socket>();
  private readonly chains = new Map<string, Buffer[]>();
  private readonly streams = new Set<Stream>();
  port = 0;

  readonly tokens = new Map<string, string>();
  readonly entries = new Map<string, RegistrationEntry>();
  readonly tasks = new Map<string, TaskRecord & { node?: string }>();
  readonly revocations = new Map<string, Revocation>();
  readonly evicted = new Set<string>();
  revision = 1;
  /** Every public key (SPKI DER) agents sent for workload SVIDs, and every mint made. */
  readonly publicKeysSeen: Buffer[] = [];
  readonly minted: { node: string; spiffeId: string; serial: string }[] = [];
  readonly calls: string[] = [];
  /** Attest calls still to be answered RESOURCE_EXHAUSTED (as the server's rate limit would) before one is served. */
  attestBusy = 0;

  constructor(private readonly opts: FakeNodeServerOptions = {}) {
    this.trustDomain = opts.trustDomain ?? 'fake.example';
  }

  static async create(opts: FakeNodeServerOptions = {}): Promise<FakeNodeServer> {
    const s = new FakeNodeServer(opts);
    await s.init();
    return s;
  }

  private async init(): Promise<void> {
    this.rootKeys = (await subtle.generateKey(EC, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
    this.rootCert = await x509.X509CertificateGenerator.create({
      serialNumber: '01',
      subject: 'CN=fake root',
      issuer: 'CN=fake root',
      notBefore: new Date(Date.now() - 3600_000),
      notAfter: new Date(Date.now() + 24 * 3600_000),
      signingAlgorithm: EC,
      publicKey: this.rootKeys.publicKey,
      signingKey: this.rootKeys.privateKey,
      extensions: [
        new x509.BasicConstraintsExtension(true, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(this.rootKeys.publicKey),
      ],
    });
    this.rootDer = Buffer.from(this.rootCert.rawData);
    this.rootPem = toPem(this.rootDer, 'CERTIFICATE');
    const serverKeys = (await subtle.generateKey(EC, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
    const serverCert = await this.issue(serverKeys.publicKey, `spiffe://${this.trustDomain}/agentid/server`, 3600_000);
    this.serverChainPem = toPem(serverCert, 'CERTIFICATE');
    this.serverKeyPem = toPem(Buffer.from(await subtle.exportKey('pkcs8', serverKeys.privateKey)), 'PRIVATE KEY');
  }

  /** A leaf for `publicKey` naming `spiffeId`, signed by the root. */
  async issue(publicKey: webcrypto.CryptoKey | Buffer, spiffeId: string, ttlMs: number): Promise<Buffer> {
    const key = Buffer.isBuffer(publicKey) ? await subtle.importKey('spki', publicKey, { name: 'ECDSA', namedCurve: 'P-256' }, true, ['verify']) : publicKey;
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber: randomBytes(8).toString('hex').replace(/^[89a-f]/, '1'),
      subject: '',
      issuer: this.rootCert.subject,
      notBefore: new Date(Date.now() - 1000),
      notAfter: new Date(Date.now() + ttlMs),
      signingAlgorithm: EC,
      publicKey: key,
      signingKey: this.rootKeys.privateKey,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
        new x509.SubjectAlternativeNameExtension([{ type: 'url', value: spiffeId }], true),
        await x509.AuthorityKeyIdentifierExtension.create(this.rootKeys.publicKey),
      ],
    });
    return Buffer.from(cert.rawData);
  }

  authority(): AuthorityRecord {
    return { serverId: 'fake-server', x509Authorities: [this.rootDer.toString('base64')], jwtKeys: [{ ...this.jwtKey.publicKey.export({ format: 'jwk' }), kid: this.kid, alg: 'ES256', use: 'jwt-svid' }], crls: [], updatedAt: 1, retireAt: null };
  }

  joinToken(node: string): string {
    const token = randomBytes(16).toString('hex');
    this.tokens.set(token, node);
    return token;
  }

  /** Adds or replaces an entry and pushes it to every node's stream. */
  putEntry(entry: Omit<RegistrationEntry, 'createdAt' | 'updatedAt' | 'revision'>): RegistrationEntry {
    const full: RegistrationEntry = { ...entry, createdAt: 1, updatedAt: 1, revision: 1 };
    this.entries.set(entry.id, full);
    this.push({ entries: [JSON.stringify(full)] });
    return full;
  }

  revoke(spiffeId: string): void {
    const r: Revocation = { spiffeId, reason: 'test', revokedAt: Date.now(), revokedBy: 'test', keepUntil: Date.now() + 3600_000 };
    this.revocations.set(spiffeId, r);
    this.push({ revocations: [JSON.stringify(r)] });
  }

  /** Ends the node's streams with `evicted: true`; every later call of the node is refused. */
  evict(node: string): void {
    this.evicted.add(node);
    for (const s of [...this.streams]) {
      if (s.node !== node) continue;
      s.call.write(this.update({ evicted: true }));
      s.call.end();
      this.streams.delete(s);
    }
  }

  private update(fields: Partial<Record<string, unknown>>) {
    return { snapshot: false, revision: this.revision, entries: [], deleted_entries: [], tasks: [], revocations: [], removed_revocations: [], authorities: [], removed_authorities: [], evicted: false, ...fields };
  }

  private push(fields: Partial<Record<string, unknown>>): void {
    this.revision++;
    for (const s of this.streams) s.call.write(this.update(fields));
  }

  private nodeOf(call: { getPeer(): string }): string {
    const chain = this.chains.get(call.getPeer());
    const id = chain ? new Certificate(chain[0]!).uriSans[0] : undefined;
    const m = id ? /\/agentid\/node\/([^/]+)$/.exec(id) : null;
    if (!m) throw Object.assign(new Error('a node SVID is required'), { code: grpc.status.UNAUTHENTICATED });
    if (this.evicted.has(m[1]!)) throw Object.assign(new Error('node evicted'), { code: grpc.status.PERMISSION_DENIED });
    return m[1]!;
  }

  private async nodeSvid(node: string, publicKey: Buffer) {
    const spiffeId = `spiffe://${this.trustDomain}/agentid/node/${node}`;
    const cert = await this.issue(publicKey, spiffeId, this.opts.nodeSvidTtlMs ?? 3600_000);
    return { node, spiffe_id: spiffeId, cert_chain: [cert], expires_at: new Certificate(cert).notAfter, trust_bundle: [this.rootDer] };
  }

  private handlers(): grpc.UntypedServiceImplementation {
    const unary = (name: string, fn: (req: any, call: grpc.ServerUnaryCall<any, any>) => Promise<unknown>): grpc.handleUnaryCall<any, any> =>
      (call, cb) => {
        this.calls.push(name);
        fn(call.request, call).then((r) => cb(null, r), (err) => cb({ code: err.code ?? grpc.status.INTERNAL, details: err.message }));
      };
    return {
      Attest: unary('Attest', async (req) => {
        if (this.attestBusy > 0) {
          this.attestBusy--;
          throw Object.assign(new Error('too many Attest attempts from this address'), { code: grpc.status.RESOURCE_EXHAUSTED });
        }
        const node = this.tokens.get(req.join_token);
        if (!node) throw Object.assign(new Error('join token unknown or already used'), { code: grpc.status.PERMISSION_DENIED });
        this.tokens.delete(req.join_token);
        return this.nodeSvid(node, req.public_key);
      }),
      RenewNodeSvid: unary('RenewNodeSvid', async (req, call) => this.nodeSvid(this.nodeOf(call), req.public_key)),
      MintX509Svids: unary('MintX509Svids', async (req, call) => {
        const node = this.nodeOf(call);
        const results = [];
        for (const r of req.requests as { entry_id: string; task_agent: string; task_id: string; public_key: Buffer }[]) {
          this.publicKeysSeen.push(Buffer.from(r.public_key));
          const spiffeId = r.entry_id ? this.entries.get(r.entry_id)?.spiffeId : this.tasks.get(`${r.task_agent}/${r.task_id}`)?.spiffeId;
          if (!spiffeId || this.revocations.has(spiffeId)) {
            results.push({ cert_chain: [], expires_at: 0, error_code: 'permission_denied', error_message: 'not for this node' });
            continue;
          }
          createPublicKey({ key: r.public_key, format: 'der', type: 'spki' });
          const cert = await this.issue(r.public_key, spiffeId, this.opts.svidTtlMs ?? 3600_000);
          const c = new Certificate(cert);
          this.minted.push({ node, spiffeId, serial: c.serial });
          results.push({ cert_chain: [cert], expires_at: c.notAfter, error_code: '', error_message: '' });
        }
        return { results };
      }),
      MintJwtSvid: unary('MintJwtSvid', async (req, call) => {
        this.nodeOf(call);
        const spiffeId = req.entry_id ? this.entries.get(req.entry_id)?.spiffeId : this.tasks.get(`${req.task_agent}/${req.task_id}`)?.spiffeId;
        if (!spiffeId) throw Object.assign(new Error('unknown identity'), { code: grpc.status.NOT_FOUND });
        const now = Math.floor(Date.now() / 1000);
        const enc = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
        const input = `${enc({ alg: 'ES256', kid: this.kid, typ: 'JWT' })}.${enc({ sub: spiffeId, aud: req.audience, iat: now, exp: now + 300, jti: randomBytes(8).toString('hex') })}`;
        const sig = sign('sha256', Buffer.from(input), { key: this.jwtKey.privateKey, dsaEncoding: 'ieee-p1363' });
        return { token: `${input}.${sig.toString('base64url')}`, expires_at: (now + 300) * 1000 };
      }),
      StartTask: unary('StartTask', async (req, call) => {
        const node = this.nodeOf(call);
        const now = Date.now();
        const task: TaskRecord & { node: string } = {
          id: req.id,
          agent: req.agent,
          spiffeId: `spiffe://${this.trustDomain}/agent/${req.agent}/task/${req.id}`,
          binding: { kind: 'process', pid: req.pid, startTime: req.start_time, descendants: req.descendants },
          metadata: req.metadata,
          state: 'active',
          x509TtlMs: 300_000,
          jwtTtlMs: 300_000,
          createdAt: now,
          expiresAt: now + 1800_000,
          endedAt: null,
          endReason: null,
          createdBy: `node:${node} uid:${req.caller_uid}`,
          node,
        };
        this.tasks.set(`${task.agent}/${task.id}`, task);
        this.push({ tasks: [JSON.stringify(task)] });
        return { task: JSON.stringify(task) };
      }),
      EndTask: unary('EndTask', async (req, call) => {
        this.nodeOf(call);
        const t = this.tasks.get(`${req.agent}/${req.id}`);
        if (!t) throw Object.assign(new Error('no such task'), { code: grpc.status.NOT_FOUND });
        const ended = { ...t, state: 'ended' as const, endedAt: Date.now(), endReason: req.reason };
        this.tasks.set(`${req.agent}/${req.id}`, ended);
        this.revocations.set(t.spiffeId, { spiffeId: t.spiffeId, reason: 'task ended', revokedAt: Date.now(), revokedBy: 'test', keepUntil: Date.now() + 3600_000 });
        this.push({ tasks: [JSON.stringify(ended)], revocations: [JSON.stringify(this.revocations.get(t.spiffeId))] });
        return { task: JSON.stringify(ended) };
      }),
      Sync: (call: grpc.ServerWritableStream<any, any>) => {
        this.calls.push('Sync');
        let node: string;
        try {
          node = this.nodeOf(call);
        } catch (err) {
          call.emit('error', { code: (err as { code: number }).code, details: (err as Error).message });
          return;
        }
        // Always a full snapshot first (the protocol allows it for any after_revision).
        call.write(this.update({
          snapshot: true,
          entries: [...this.entries.values()].map((e) => JSON.stringify(e)),
          tasks: [...this.tasks.values()].filter((t) => t.node === node).map((t) => JSON.stringify(t)),
          revocations: [...this.revocations.values()].map((r) => JSON.stringify(r)),
          authorities: [JSON.stringify(this.authority())],
        }));
        const stream = { node, call };
        this.streams.add(stream);
        call.on('cancelled', () => this.streams.delete(stream));
        call.on('close', () => this.streams.delete(stream));
      },
    };
  }

  /** Listens (again, on the same port after `stop`). */
  async start(): Promise<void> {
    const grpcServer = new grpc.Server();
    grpcServer.addService((loadProto('agentid/node/v1/node.proto') as any).agentid.node.v1.AgentIdNode.service, this.handlers());
    const injector = grpcServer.createConnectionInjector(grpc.ServerCredentials.createInsecure());
    const server = tls.createServer({ cert: this.serverChainPem, key: this.serverKeyPem, requestCert: true, rejectUnauthorized: false, ALPNProtocols: ['h2'] });
    server.on('connection', (s: Socket) => {
      this.sockets.add(s);
      s.once('close', () => this.sockets.delete(s));
    });
    server.on('secureConnection', (socket: tls.TLSSocket) => {
      const key = `${socket.remoteAddress}:${socket.remotePort}`;
      this.chains.set(key, peerChainDer(socket));
      injector.injectConnection(socket);
    });
    await new Promise<void>((resolve) => server.listen(this.port, '127.0.0.1', () => resolve()));
    this.port = (server.address() as AddressInfo).port;
    this.tlsServer = server;
    this.grpcServer = grpcServer;
  }

  /** Goes offline: the listener closes and every connection drops. */
  async stop(): Promise<void> {
    const server = this.tlsServer;
    this.tlsServer = undefined;
    for (const s of this.streams) s.call.destroy();
    this.streams.clear();
    for (const s of this.sockets) s.destroy();
    this.grpcServer?.forceShutdown();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }
}
