import { datastoreConformance } from './conformance.js';
import { createMemoryDatastore } from './memory.js';

datastoreConformance('memory', () => {
  const ds = createMemoryDatastore();
  return { ds, cleanup: () => ds.close() };
});
