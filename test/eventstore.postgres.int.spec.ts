import pg from 'pg';
import t from 'tap';
import { randomUUID } from 'node:crypto';
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

t.test('a subscription is woken by an append of another process at once, not by its poll', async (t) => {
  // Polling once a minute: only the NOTIFY sent after the other store's commit can wake it in time
  // (or, while an older transaction anywhere on the server holds the events behind the visibility
  // horizon, the store's short look-again).
  const reader = await createPostgresEventStore({ connectionString: db.url, pollIntervalMs: 60_000 });
  const writer = await createPostgresEventStore({ connectionString: db.url });
  t.teardown(async () => {
    await reader.close();
    await writer.close();
  });
  const subscription = reader.subscribe({ from: 'end', filter: { streamPrefixes: ['wake-'] } });
  const received: number[] = [];
  const reading = (async () => {
    for await (const e of subscription) {
      received.push(performance.now());
      if (e.revision === 2) return;
    }
  })();
  await subscription.caughtUp;
  const sent: number[] = [];
  for (let i = 0; i < 3; i++) {
    sent.push(performance.now());
    await writer.append(
      'wake-1',
      [{ id: randomUUID(), type: 'Woken', data: { i }, metadata: {} }],
      i - 1 < 0 ? 'no_stream' : i - 1,
    );
    await new Promise((r) => setTimeout(r, 200));
  }
  await reading;
  await subscription.close();
  const delays = received.map((at, i) => at - sent[i]!);
  t.ok(
    delays.every((d) => d < 5_000),
    `each event arrived within seconds, not a minute (${delays.map((d) => d.toFixed(0)).join(', ')} ms)`,
  );
});

t.test(
  'an event held behind an older open transaction arrives after that transaction ends, before any poll',
  async (t) => {
    // The poll never comes within the test's time: only the wake-ups (NOTIFY, the look-again behind
    // the horizon) can deliver the event. No time bound is asserted: a loaded machine is slow.
    const reader = await createPostgresEventStore({ connectionString: db.url, pollIntervalMs: 3_600_000 });
    const writer = await createPostgresEventStore({ connectionString: db.url });
    const blocker = new pg.Client({ connectionString: db.url });
    await blocker.connect();
    t.teardown(async () => {
      await blocker.end().catch(() => undefined);
      await reader.close();
      await writer.close();
    });
    const subscription = reader.subscribe({ from: 'end', filter: { streamPrefixes: ['held-'] } });
    const first = (async () => {
      for await (const e of subscription) return { id: e.id, at: performance.now() };
      return null;
    })();
    await subscription.caughtUp;
    // A transaction with an id, older than the append, keeps the append behind the horizon.
    await blocker.query('begin');
    await blocker.query('select pg_current_xact_id()');
    const id = randomUUID();
    await writer.append('held-1', [{ id, type: 'Held', data: {}, metadata: {} }], 'no_stream');
    // The append has committed but is invisible behind the blocker: the subscription looks again.
    await new Promise((r) => setTimeout(r, 500));
    const released = performance.now();
    await blocker.query('commit');
    const got = await first;
    await subscription.close();
    t.equal(got?.id, id, 'the event arrives without waiting for the poll');
    t.comment(`${(got!.at - released).toFixed(0)} ms after the release`);
  },
);
