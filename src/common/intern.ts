/**
 * Values that many long-lived objects hold alike, each kept once: with 10,000 connections open,
 * every connection of one process (and often of many processes) holds the same selector list,
 * parent chain and attestation facts, and every stream of one task the same identity. Callers
 * must treat what they get as immutable (it is shared). Bounded: when the pool reaches `limit`
 * distinct values it forgets them all, so a value seen again is kept anew (nothing already handed
 * out changes; only sharing with later callers is lost).
 */
export class InternPool<T> {
  private readonly values = new Map<string, T>();

  constructor(private readonly limit = 4096) {}

  /**
   * The value kept under `key`, or `make()` kept from now on. `key` must name the value's whole
   * content (two different values never share a key), or `fits` must check it.
   */
  intern(key: string, make: () => T, fits: (known: T) => boolean = () => true): T {
    const known = this.values.get(key);
    if (known !== undefined && fits(known)) return known;
    if (known === undefined && this.values.size >= this.limit) this.values.clear();
    const value = make();
    this.values.set(key, value);
    return value;
  }

  get size(): number {
    return this.values.size;
  }
}
