/*
 * PostgreSQL connection URLs as agentid accepts them, without loading the driver (config uses
 * this). Forms: postgresql://user:password@host:5432/db?sslmode=require, and for a Unix socket
 * postgresql:///db?host=/run/postgresql (or the socket directory percent-encoded as the host).
 * A URL may carry a password: only describePostgresUrl's host and database ever reach logs and
 * error messages.
 */

export interface PostgresTarget {
  /** Host (with :port when given) or socket directory. */
  host: string;
  database: string;
}

/** Where a URL points; undefined when it is not a postgresql:// (or postgres://) URL naming a database. */
export function parsePostgresUrl(url: string): PostgresTarget | undefined {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return undefined;
  }
  if (parsed.protocol !== 'postgresql:' && parsed.protocol !== 'postgres:') return undefined;
  let database: string;
  let host: string;
  try {
    database = decodeURIComponent(parsed.pathname.replace(/^\//, ''));
    host = decodeURIComponent(parsed.hostname) || parsed.searchParams.get('host') || 'localhost';
  } catch {
    return undefined;
  }
  if (database === '' || database.includes('/')) return undefined;
  return { host: `${host}${parsed.port ? `:${parsed.port}` : ''}`, database };
}

/** For logs and errors: host and database only, never the user or password. */
export function describePostgresUrl(url: string): PostgresTarget {
  return parsePostgresUrl(url) ?? { host: 'unparsable URL', database: '' };
}
