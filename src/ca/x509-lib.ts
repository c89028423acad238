/*
 * The one entry to @peculiar/x509 for this module: loads the Reflect metadata polyfill tsyringe needs first
 * (sibling imports evaluate in order) and points the library at Node's built-in WebCrypto.
 */
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';

x509.cryptoProvider.set(globalThis.crypto);

export { x509 };
