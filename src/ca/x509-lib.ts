/*
 * The one entry to @peculiar/x509 for this module: installs the Reflect metadata shim first
 * (sibling imports evaluate in order) and points the library at Node's built-in WebCrypto.
 */
import './reflect-shim.js';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(globalThis.crypto);

export { x509 };
