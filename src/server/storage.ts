import type { Config } from '../config/index.js';
import type { Logger } from '../common/logger.js';
import { openDatastore } from '../datastore/index.js';
import { join } from 'node:path';
import { BatchedIssuances } from '../datastore/batched-issuances.js';
import { IssuanceJournal } from '../datastore/issuance-journal.js';
import type { Datastore } from '../datastore/types.js';
import { ReadModel } from '../state/read-model.js';
import type { ServerMetrics } from '../ops/index.js';

/** How often the read model looks at the change feed without a notification. */
const POLL_INTERVAL_MS = 500;

export interface Storage {
  datastore: Datastore;
  /** Issuance records, written in batches off the request path. */
  issuances: BatchedIssuances;
  close(): Promise<void>;
}

export async function buildStorage(config: Config, deps: { logger: Logger; metrics: Pick<ServerMetrics, 'timeDatastore'> }): Promise<Storage> {
  // Write latency is measured at the store (metrics); reads come from the read model.
  const datastore = deps.metrics.timeDatastore(await openDatastore(config, deps));
  // What a crash kept from reaching the datastore is recorded first (issuance-journal.ts).
  const journal = await IssuanceJournal.open(join(config.dataDir, 'issuances.journal'), datastore.issuances, deps.logger).catch(async (err) => {
    await datastore.close();
    throw err;
  });
  const issuances = new BatchedIssuances(datastore.issuances, deps.logger, {}, journal);
  return {
    datastore,
    issuances,
    async close() {
      await issuances.flush().catch((err) => deps.logger.error({ err }, 'could not record the last issuances'));
      await journal.close();
      await datastore.close();
    },
  };
}

export async function buildReadModel(datastore: Datastore, deps: { logger: Logger }): Promise<ReadModel> {
  const model = await ReadModel.load({ datastore, logger: deps.logger.child({ module: 'state' }), pollIntervalMs: POLL_INTERVAL_MS });
  model.start();
  return model;
}
