export { Attestor, type Attestation, type AttestorOptions } from './attestor.js';
export { readPeerCredentials, closePidfd, pidfdIsAlive, type PeerCredentials } from './peercred.js';
export { readProcessRef, isAlive, parseStat, parseCgroupV2, parseStatusGroups, type ProcessRef, type ProcStat } from './proc.js';
export { DEFAULT_SHA256_MAX_BYTES } from './exe-hash.js';
