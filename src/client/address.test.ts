import { describe, expect, it } from 'vitest';
import { isAgentIdError } from '../common/errors.js';
import { ENDPOINT_SOCKET_ENV, parseEndpointAddress, resolveEndpointAddress } from './address.js';

describe('parseEndpointAddress', () => {
  it.each([
    ['unix-uri-empty-authority', 'unix:///run/agentid/api.sock', '/run/agentid/api.sock'],
    ['unix-uri-no-authority', 'unix:/run/agentid/api.sock', '/run/agentid/api.sock'],
    ['plain-absolute-path', '/run/agentid/api.sock', '/run/agentid/api.sock'],
    ['uppercase-scheme', 'UNIX:///tmp/s.sock', '/tmp/s.sock'],
    ['percent-encoded-space', 'unix:///tmp/a%20b.sock', '/tmp/a b.sock'],
  ])('accepts %s', (_name, text, socketPath) => {
    const addr = parseEndpointAddress(text);
    expect(addr.socketPath).toBe(socketPath);
    expect(addr.grpcTarget).toBe(`unix://${socketPath}`);
  });

  it.each([
    ['empty', '', /is empty/],
    ['relative-path', 'run/api.sock', /unix:\/\/\/absolute\/path URI or an absolute path/],
    ['tcp-endpoint', 'tcp://127.0.0.1:8081', /tcp endpoints are not supported/],
    ['http-scheme', 'http://localhost/api.sock', /scheme must be "unix"/],
    ['authority-host', 'unix://localhost/run/api.sock', /must not include an authority/],
    ['authority-userinfo', 'unix://user@/run/api.sock', /must not include user info/],
    ['opaque-relative', 'unix:run/api.sock', /must have an absolute path/],
    ['no-path', 'unix://', /must include a path/],
    ['query', 'unix:///run/api.sock?x=1', /must not include a query/],
    ['fragment', 'unix:///run/api.sock#frag', /must not include a fragment/],
    ['bad-percent-encoding', 'unix:///run/%zz.sock', /malformed percent-encoding/],
    ['nul-byte', '/run/a\0b.sock', /NUL byte/],
    ['encoded-nul-byte', 'unix:///run/a%00b.sock', /NUL byte/],
    ['directory', 'unix:///run/agentid/', /not a directory/],
    ['root-only', '/', /not a directory/],
    ['too-long-for-sun-path', `/${'a'.repeat(107)}`, /longer than 107 bytes/],
  ])('rejects %s', (_name, text, message) => {
    let caught: unknown;
    try {
      parseEndpointAddress(text);
    } catch (err) {
      caught = err;
    }
    expect(isAgentIdError(caught, 'invalid_argument')).toBe(true);
    expect((caught as Error).message).toMatch(message);
  });
});

describe('resolveEndpointAddress', () => {
  it('prefers the explicit address over the environment', () => {
    const env = { [ENDPOINT_SOCKET_ENV]: 'unix:///from/env.sock' };
    expect(resolveEndpointAddress('/explicit.sock', env).socketPath).toBe('/explicit.sock');
  });

  it('falls back to SPIFFE_ENDPOINT_SOCKET', () => {
    const env = { [ENDPOINT_SOCKET_ENV]: 'unix:///from/env.sock' };
    expect(resolveEndpointAddress(undefined, env).socketPath).toBe('/from/env.sock');
  });

  it('names the variable when nothing is configured, and treats an empty variable as unset', () => {
    for (const env of [{}, { [ENDPOINT_SOCKET_ENV]: '' }]) {
      expect(() => resolveEndpointAddress(undefined, env)).toThrow(/set SPIFFE_ENDPOINT_SOCKET/);
    }
  });

  it('refuses an explicit empty address instead of silently using the environment', () => {
    const env = { [ENDPOINT_SOCKET_ENV]: 'unix:///from/env.sock' };
    expect(() => resolveEndpointAddress('', env)).toThrow(/is empty/);
  });

  it('reports a malformed environment value as invalid_argument', () => {
    expect(() => resolveEndpointAddress(undefined, { [ENDPOINT_SOCKET_ENV]: 'tcp://1.2.3.4:1' })).toThrow(/tcp endpoints/);
  });
});
