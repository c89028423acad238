/*
 * @peculiar/x509 v2 resolves its algorithms through tsyringe, which refuses to load unless
 * Reflect.getMetadata exists (it expects the reflect-metadata package, not installed here).
 * tsyringe uses only getMetadata, getOwnMetadata and defineMetadata; this provides exactly
 * those, and only when no real polyfill is present.
 */
type Target = object;
type MetadataReflect = typeof Reflect & {
  getMetadata?: (key: unknown, target: Target) => unknown;
  getOwnMetadata?: (key: unknown, target: Target) => unknown;
  defineMetadata?: (key: unknown, value: unknown, target: Target) => void;
};

const R = Reflect as MetadataReflect;
if (typeof R.getMetadata !== 'function') {
  const store = new WeakMap<Target, Map<unknown, unknown>>();
  const getOwn = (key: unknown, target: Target): unknown => store.get(target)?.get(key);
  R.getOwnMetadata = getOwn;
  R.getMetadata = (key, target) => {
    for (let t: Target | null = target; t !== null; t = Object.getPrototypeOf(t) as Target | null) {
      const map = store.get(t);
      if (map?.has(key)) return map.get(key);
    }
    return undefined;
  };
  R.defineMetadata = (key, value, target) => {
    let map = store.get(target);
    if (!map) store.set(target, (map = new Map()));
    map.set(key, value);
  };
}

export {};
