export * from './spiffe-id.js';
export * from './selector.js';
