import type { Selector } from '../spiffe/selector.js';
import { identitiesUnchangedUntil, type CallerFacts, type Identity } from './identity.js';

export interface IdentityMemoDeps {
  /** Full identity resolution (entries, tasks, revocations at `now`). */
  resolve(caller: CallerFacts, now: number): Identity[];
  /**
   * Values that change whenever something resolution reads may have changed (entries, tasks,
   * revocations), compared one by one with ===.
   */
  version(): readonly unknown[];
  isRevoked(spiffeId: string): boolean;
  taskBufferMs: number;
}

interface Memo {
  caller: CallerFacts;
  version: readonly unknown[];
  until: number;
  identities: Identity[];
}

/**
 * Identity resolution remembered per connection, for the unary calls (FetchJWTSVID and
 * ValidateJWTSVID ask for the caller's identities on every call, usually with nothing changed).
 * An answer is reused only for the same connection and the same caller facts (a re-attested
 * process gets new ones), while every version value is unchanged, before the time its first
 * identity would lapse (identitiesUnchangedUntil), and while none of its SPIFFE IDs is revoked
 * (checked on each reuse, so a revocation applied to the read model counts at once, before its
 * change batch is complete). Kept in a WeakMap: it goes away with the connection's key object.
 */
export class IdentityMemo {
  private readonly byConnection = new WeakMap<object, Memo>();
  private hitCount = 0;
  private missCount = 0;

  constructor(private readonly deps: IdentityMemoDeps) {}

  identitiesFor(connection: object, caller: CallerFacts, now: number): Identity[] {
    const version = this.deps.version();
    const memo = this.byConnection.get(connection);
    if (
      memo &&
      now < memo.until &&
      sameValues(memo.version, version) &&
      sameFacts(memo.caller, caller) &&
      !memo.identities.some((i) => this.deps.isRevoked(i.spiffeId.toString()))
    ) {
      this.hitCount++;
      return memo.identities;
    }
    this.missCount++;
    const identities = this.deps.resolve(caller, now);
    this.byConnection.set(connection, { caller, version, until: identitiesUnchangedUntil(identities, this.deps.taskBufferMs), identities });
    return identities;
  }

  /** Calls answered from the memo and calls that resolved, for tests. */
  stats(): { hits: number; misses: number } {
    return { hits: this.hitCount, misses: this.missCount };
  }
}

function sameValues(a: readonly unknown[], b: readonly unknown[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

function sameSelectors(a: readonly Selector[], b: readonly Selector[]): boolean {
  return a === b || (a.length === b.length && a.every((s, i) => s.type === b[i]!.type && s.value === b[i]!.value));
}

function sameFacts(a: CallerFacts, b: CallerFacts): boolean {
  return (
    a.pid === b.pid &&
    a.startTime === b.startTime &&
    a.cgroup === b.cgroup &&
    sameSelectors(a.selectors, b.selectors) &&
    a.ancestors.length === b.ancestors.length &&
    a.ancestors.every((p, i) => p.pid === b.ancestors[i]!.pid && p.startTime === b.ancestors[i]!.startTime)
  );
}
