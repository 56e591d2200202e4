/**
 * The event store every service uses: KurrentDB when `KURRENTDB_URL` is set (as in
 * docker-compose), PostgreSQL otherwise. Both adapters pass the same conformance suite
 * (test/conformance/eventstore.ts), so callers never need to know which one they got.
 */
import { createKurrentEventStore } from './kurrentdb.ts';
import { createPostgresEventStore, type PostgresEventStoreOptions } from './postgres.ts';
import type { EventStore } from './types.ts';

export * from './types.ts';

export interface EventStoreConfig {
  /** `kurrentdb://` / `esdb://` URL; when set, KurrentDB is the event store. */
  KURRENTDB_URL?: string | undefined;
  /** PostgreSQL, used when `KURRENTDB_URL` is not set. */
  DATABASE_URL: string;
  /** PostgreSQL only: false commits every append on its own (default true, group commit). */
  EVENTSTORE_GROUP_COMMIT?: boolean | undefined;
}

/** Settings for the chosen adapter; `onError` applies to both, the rest to PostgreSQL only. */
export type EventStoreOptions = Omit<PostgresEventStoreOptions, 'connectionString'>;

/** Opens the configured store (for PostgreSQL this also runs its migrations). */
export async function createEventStore(
  config: EventStoreConfig,
  options: EventStoreOptions = {},
): Promise<EventStore> {
  if (config.KURRENTDB_URL) {
    return createKurrentEventStore(config.KURRENTDB_URL, { onError: options.onError });
  }
  return createPostgresEventStore({
    groupCommit: config.EVENTSTORE_GROUP_COMMIT ?? true,
    ...options,
    connectionString: config.DATABASE_URL,
  });
}
