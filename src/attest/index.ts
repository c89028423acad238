export { Attestor, recheckNeeds, RECHECK_ALL, type RecheckNeeds, type Attestation, type AttestOptions, type AttestorOptions, type ProcessFacts } from './attestor.js';
export { readPeerCredentials, openPeerPidfd, closePidfd, pidfdIsAlive, type PeerCredentials } from './peercred.js';
export { readProcessRef, isAlive, parseStat, parseCgroupV2, parseStatusGroups, type ProcessRef, type ProcStat } from './proc.js';
export { DEFAULT_SHA256_MAX_BYTES } from './exe-hash.js';
export { AttestationCache } from './attestation-cache.js';
