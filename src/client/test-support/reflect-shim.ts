/*
 * @peculiar/x509 v2 pulls in tsyringe, which refuses to load unless a Reflect metadata
 * polyfill is present, and none is installed. This minimal polyfill covers the three calls
 * tsyringe makes. Test support only: the client library itself never loads @peculiar/x509.
 */
type MetadataTarget = object;
const store = new WeakMap<MetadataTarget, Map<unknown, unknown>>();
const R = Reflect as unknown as Record<string, unknown>;

if (typeof R.getMetadata !== 'function') {
  R.defineMetadata = (key: unknown, value: unknown, target: MetadataTarget) => {
    let map = store.get(target);
    if (!map) store.set(target, (map = new Map()));
    map.set(key, value);
  };
  R.getOwnMetadata = (key: unknown, target: MetadataTarget) => store.get(target)?.get(key);
  R.getMetadata = (key: unknown, target: MetadataTarget) => {
    for (let t: MetadataTarget | null = target; t; t = Object.getPrototypeOf(t) as MetadataTarget | null) {
      const map = store.get(t);
      if (map?.has(key)) return map.get(key);
    }
    return undefined;
  };
}

export {};
