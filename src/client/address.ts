import { invalidArgument } from '../common/errors.js';

/** The environment variable that names the Workload API endpoint (SPIFFE Workload Endpoint §4). */
export const ENDPOINT_SOCKET_ENV = 'SPIFFE_ENDPOINT_SOCKET';

/** Linux sun_path holds 108 bytes including the terminating NUL. */
const MAX_SOCKET_PATH_BYTES = 107;

export interface EndpointAddress {
  /** Absolute filesystem path of the Unix domain socket. */
  readonly socketPath: string;
  /** The same socket as a grpc-js target: unix:///abs/path. */
  readonly grpcTarget: string;
}

/**
 * Parses a Workload API address. Accepted forms:
 *   unix:///abs/path   (SPIFFE Workload Endpoint URI, empty authority)
 *   unix:/abs/path     (the same URI without an authority component)
 *   /abs/path          (a plain absolute path, for convenience)
 * The URI rules follow go-spiffe: no authority, user info, query or fragment, and an absolute
 * path. tcp:// endpoints are refused because the caller would then be identified by nothing.
 */
export function parseEndpointAddress(text: string): EndpointAddress {
  const what = `Workload API address ${JSON.stringify(text.length > 120 ? `${text.slice(0, 120)}...` : text)}`;
  if (text.length === 0) throw invalidArgument('Workload API address is empty');
  if (text.includes('\0')) throw invalidArgument(`${what}: must not contain a NUL byte`);

  let path: string;
  if (text.startsWith('/')) {
    path = text;
  } else {
    const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):/.exec(text)?.[1];
    if (scheme === undefined) {
      throw invalidArgument(`${what}: must be a unix:///absolute/path URI or an absolute path`);
    }
    const lower = scheme.toLowerCase();
    if (lower === 'tcp') {
      throw invalidArgument(`${what}: tcp endpoints are not supported; use a unix:// socket`);
    }
    if (lower !== 'unix') throw invalidArgument(`${what}: scheme must be "unix"`);
    path = parseUnixUri(text.slice(scheme.length + 1), what);
  }

  if (path === '/' || path.endsWith('/')) throw invalidArgument(`${what}: must name a socket file, not a directory`);
  if (Buffer.byteLength(path, 'utf8') > MAX_SOCKET_PATH_BYTES) {
    throw invalidArgument(`${what}: socket path is longer than ${MAX_SOCKET_PATH_BYTES} bytes`);
  }
  return { socketPath: path, grpcTarget: `unix://${path}` };
}

function parseUnixUri(rest: string, what: string): string {
  let path: string;
  if (rest.startsWith('//')) {
    const afterSlashes = rest.slice(2);
    const end = afterSlashes.search(/[/?#]/);
    const authority = end === -1 ? afterSlashes : afterSlashes.slice(0, end);
    if (authority.includes('@')) throw invalidArgument(`${what}: unix socket URI must not include user info`);
    if (authority !== '') {
      throw invalidArgument(`${what}: unix socket URI must not include an authority; write unix:///absolute/path`);
    }
    path = afterSlashes;
  } else if (rest.startsWith('/')) {
    path = rest;
  } else {
    throw invalidArgument(`${what}: unix socket URI must have an absolute path (opaque or relative forms are not allowed)`);
  }
  if (path.includes('?')) throw invalidArgument(`${what}: unix socket URI must not include a query`);
  if (path.includes('#')) throw invalidArgument(`${what}: unix socket URI must not include a fragment`);
  if (path === '') throw invalidArgument(`${what}: unix socket URI must include a path`);
  try {
    path = decodeURIComponent(path);
  } catch {
    throw invalidArgument(`${what}: unix socket URI has a malformed percent-encoding`);
  }
  if (path.includes('\0')) throw invalidArgument(`${what}: must not contain a NUL byte`);
  return path;
}

/**
 * The explicit address wins over SPIFFE_ENDPOINT_SOCKET. An empty environment variable counts
 * as unset; an explicitly passed empty string is a configuration error and is refused.
 */
export function resolveEndpointAddress(
  explicit?: string,
  env: Readonly<Record<string, string | undefined>> = process.env,
): EndpointAddress {
  if (explicit !== undefined) return parseEndpointAddress(explicit);
  const fromEnv = env[ENDPOINT_SOCKET_ENV];
  if (fromEnv === undefined || fromEnv === '') {
    throw invalidArgument(`Workload API address: none given; pass socketPath or set ${ENDPOINT_SOCKET_ENV}`);
  }
  return parseEndpointAddress(fromEnv);
}
