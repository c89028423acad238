import type { Logger } from '../common/logger.js';
import type { DatastoreConfig } from '../config/types.js';
import { openPostgresDatastore } from './postgres.js';
import { openSqliteDatastore } from './sqlite.js';
import type { Datastore } from './types.js';

export type * from './types.js';

/**
 * Opens the datastore the configuration names (datastore.url): the data directory's SQLite file
 * or a PostgreSQL database, with its schema brought up to date. Logs where (file, or host and
 * database), never the connection URL.
 */
export async function openDatastore(config: { datastore: DatastoreConfig }, deps: { logger: Logger }): Promise<Datastore> {
  const { logger } = deps;
  const where = config.datastore;
  if (where.kind === 'sqlite') {
    const ds = await openSqliteDatastore(where.file, { logger });
    logger.info({ datastore: 'sqlite', file: where.file }, 'datastore opened');
    return ds;
  }
  const ds = await openPostgresDatastore(where.url.reveal(), { logger });
  logger.info({ datastore: 'postgresql', host: where.host, database: where.database }, 'datastore opened');
  return ds;
}
