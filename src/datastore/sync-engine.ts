import { failedPrecondition } from '../common/errors.js';
import type {
  AnchorStore,
  AuthorityStore,
  Change,
  JoinTokenStore,
  NodeStore,
  ChangeFeed,
  Datastore,
  EntryStore,
  IssuanceStore,
  RevocationStore,
  Stores,
  TaskStore,
} from './types.js';

/*
 * SQLite (better-sqlite3) and the memory store are synchronous engines. This adapter gives them
 * the asynchronous Datastore contract:
 *  - every call outside a transaction runs as one synchronous step, so it is atomic by itself;
 *  - transaction(fn) opens a transaction, awaits fn with stores bound to it, then commits or rolls
 *    back. While it is open, other callers wait (a queue), because a synchronous engine has one
 *    connection and their statements would otherwise land inside the open transaction;
 *  - after a committed write, change-feed watchers are told (once per event-loop turn).
 */

/** The synchronous shape of a store: same methods, plain return values. */
type Sync<T> = { [K in keyof T]: T[K] extends (...args: infer A) => Promise<infer R> ? (...args: A) => R : never };

export interface SyncStores {
  entries: Sync<EntryStore>;
  tasks: Sync<TaskStore>;
  revocations: Sync<RevocationStore>;
  issuances: Sync<IssuanceStore>;
  authorities: Sync<AuthorityStore>;
  anchors: Sync<AnchorStore>;
  nodes: Sync<NodeStore>;
  joinTokens: Sync<JoinTokenStore>;
  changes: { since(after: number, limit: number): Change[]; head(): number; prune(beforeRevision: number): number };
}

export interface SyncEngine {
  kind: Datastore['kind'];
  stores: SyncStores;
  begin(): void;
  commit(): void;
  rollback(): void;
  ping(): void;
  close(): void;
  /** Turns a driver error into an AgentIdError (anything else passes through). */
  mapError(err: unknown, what: string): unknown;
}

const METHODS = {
  entries: ['create', 'update', 'delete', 'get', 'list'],
  tasks: ['create', 'get', 'findById', 'list', 'finish'],
  revocations: ['add', 'get', 'list', 'prune'],
  issuances: ['record', 'listForSpiffeId', 'latestNotAfter', 'listRevokedUnexpired', 'countForSpiffeId', 'prune'],
  authorities: ['put', 'get', 'list', 'prune'],
  anchors: ['get', 'put'],
  nodes: ['put', 'get', 'list'],
  joinTokens: ['create', 'consume', 'prune'],
} as const satisfies { [K in keyof Stores]: readonly (keyof Stores[K])[] };

/** Methods that can append to the change feed. */
const WRITES = new Set(['create', 'update', 'delete', 'finish', 'add', 'prune', 'put', 'consume']);

type Call = <T>(what: string, write: boolean, fn: () => T) => Promise<T>;

function bindStores(sync: SyncStores, call: Call): Stores {
  const out: Record<string, Record<string, unknown>> = {};
  for (const [store, methods] of Object.entries(METHODS)) {
    const target = (sync as unknown as Record<string, Record<string, (...a: unknown[]) => unknown>>)[store]!;
    const bound: Record<string, unknown> = {};
    for (const m of methods) {
      bound[m] = (...args: unknown[]) => call(`${store}.${m}`, WRITES.has(m), () => target[m]!.apply(target, args));
    }
    out[store] = bound;
  }
  return out as unknown as Stores;
}

export function asyncDatastore(engine: SyncEngine): Datastore {
  let closed = false;
  /** Resolves when the open transaction (if any) has ended; transactions queue on it. */
  let queue: Promise<void> = Promise.resolve();
  let inTransaction = false;
  const watchers = new Set<() => void>();
  let notifyScheduled = false;

  const notify = () => {
    if (notifyScheduled || watchers.size === 0) return;
    notifyScheduled = true;
    setImmediate(() => {
      notifyScheduled = false;
      for (const w of [...watchers]) w();
    });
  };
  const run = <T>(what: string, fn: () => T): T => {
    if (closed) throw failedPrecondition('datastore: closed');
    try {
      return fn();
    } catch (err) {
      throw engine.mapError(err, what);
    }
  };
  /** Waits for any open transaction (and those queued before us) to finish. */
  const exclusive = async <T>(fn: () => Promise<T> | T): Promise<T> => {
    const previous = queue;
    let release!: () => void;
    queue = new Promise((r) => (release = r));
    try {
      await previous;
      return await fn();
    } finally {
      release();
    }
  };

  const outer: Call = async (what, write, fn) => {
    // Reads outside a transaction need no queue: a synchronous step cannot interleave with anything.
    if (!inTransaction && !write) return run(what, fn);
    return exclusive(() => {
      const result = run(what, fn);
      if (write) notify();
      return result;
    });
  };
  const stores = bindStores(engine.stores, outer);

  const changes: ChangeFeed = {
    since: (after, limit = 1000) => outer('changes.since', false, () => engine.stores.changes.since(after, limit)),
    head: () => outer('changes.head', false, () => engine.stores.changes.head()),
    prune: (before) => outer('changes.prune', true, () => engine.stores.changes.prune(before)),
    watch(listener) {
      watchers.add(listener);
      return () => watchers.delete(listener);
    },
  };

  return {
    kind: engine.kind,
    ...stores,
    changes,
    transaction<T>(fn: (tx: Stores) => Promise<T>): Promise<T> {
      return exclusive(async () => {
        run('begin', () => engine.begin());
        inTransaction = true;
        let open = true;
        const inside: Call = async (what, _write, step) => {
          if (!open) throw failedPrecondition(`datastore: ${what} after its transaction ended`);
          return run(what, step);
        };
        try {
          const result = await fn(bindStores(engine.stores, inside));
          run('commit', () => engine.commit());
          notify();
          return result;
        } catch (err) {
          try {
            engine.rollback();
          } catch {
            // The engine already rolled back (a failed COMMIT does); the caller's error is what matters.
          }
          throw err;
        } finally {
          open = false;
          inTransaction = false;
        }
      });
    },
    async ping() {
      run('ping', () => engine.ping());
    },
    async close() {
      if (closed) return;
      await exclusive(() => {
        closed = true;
        watchers.clear();
        engine.close();
      });
    },
  };
}

export type SyncEntryStore = SyncStores['entries'];
export type SyncTaskStore = SyncStores['tasks'];
export type SyncRevocationStore = SyncStores['revocations'];
export type SyncIssuanceStore = SyncStores['issuances'];
export type SyncAuthorityStore = SyncStores['authorities'];
export type SyncAnchorStore = SyncStores['anchors'];
export type SyncNodeStore = SyncStores['nodes'];
export type SyncJoinTokenStore = SyncStores['joinTokens'];
