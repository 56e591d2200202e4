import type { CommonConfig } from '../../lib/config.ts';
import { createEventStore } from '../../lib/eventstore/index.ts';
import type { EventStore } from '../../lib/eventstore/types.ts';
import type { Log } from './runner.ts';

/**
 * The configured event store: KurrentDB when KURRENTDB_URL is set, PostgreSQL at DATABASE_URL
 * otherwise. Errors a subscription retries through are logged, not thrown.
 */
export function openEventStore(config: CommonConfig, logger?: Log): Promise<EventStore> {
  return createEventStore(config, {
    onError: (e) => logger?.warn({ err: e }, 'event store error; retrying'),
  });
}
