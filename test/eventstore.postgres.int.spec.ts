import t from 'tap';
import { createPostgresEventStore } from '../lib/eventstore/postgres.ts';
import { eventStoreConformance } from './conformance/eventstore.ts';
import { createTestDatabase } from './support/postgres.ts';

// One fresh database; each store the suite asks for is a new instance (its own pool) on it.
const db = await createTestDatabase(t);

// Small batches so that every read and every catch-up crosses batch boundaries.
await eventStoreConformance(t, 'PostgreSQL (batches of 3)', () =>
  createPostgresEventStore({ connectionString: db.url, batchSize: 3, pollIntervalMs: 50 }),
);
await eventStoreConformance(t, 'PostgreSQL (defaults)', () =>
  createPostgresEventStore({ connectionString: db.url }),
);
