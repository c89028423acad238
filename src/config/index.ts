export * from './types.js';
export { DEFAULTS, type ConfigDefaults } from './defaults.js';
export { loadConfig, type LoadConfigOptions } from './load.js';
export { configWarnings } from './warnings.js';
