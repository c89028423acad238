// The DER and PEM helpers the client exports; one implementation shared with verify/.
export { splitDer, toPem } from '../common/der.js';
