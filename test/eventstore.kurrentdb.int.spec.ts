import t from 'tap';
import { createKurrentEventStore } from '../lib/eventstore/kurrentdb.ts';
import { eventStoreConformance } from './conformance/eventstore.ts';

// The KurrentDB server is shared: the suite names every stream and event type with a random run
// prefix, so runs never see each other's events.
const url = process.env['KURRENTDB_URL'];

if (!url) {
  t.skip('KurrentDB adapter skipped: KURRENTDB_URL not set', () => undefined);
} else {
  await eventStoreConformance(t, 'KurrentDB', async () => {
    const store = createKurrentEventStore(url);
    await store.ping();
    return store;
  });
}
