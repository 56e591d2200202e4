/**
 * The append functions' lookups stay on the indexes when the events table grows after their plans
 * were made (PL/pgSQL keeps a session's plans): a fresh store filling up before PostgreSQL's first
 * ANALYZE must not scan the whole table on every append (migration 5 of the event store).
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import t from 'tap';
import { createPostgresEventStore } from '../lib/eventstore/postgres.ts';
import { createTestDatabase } from './support/postgres.ts';

t.test('appends on a store that grew since their first call read no whole table', async (t) => {
  const db = await createTestDatabase(t);
  // The store's migrations; then the functions are called on one session, as a pooled connection.
  await (await createPostgresEventStore({ connectionString: db.url })).close();
  const client = new pg.Client({ connectionString: db.url });
  await client.connect();
  t.teardown(() => client.end());
  // As before the first automatic ANALYZE: no statistics for the planner to learn the size from.
  await client.query('alter table toolbus_events set (autovacuum_enabled = false)');

  let n = 0;
  const ids = () => [randomUUID(), randomUUID()];
  const text = (k: number) => Array.from({ length: k }, () => '{}');
  const single = () =>
    client.query('select * from toolbus_append($1, $2, $3, $4, $5, $6, $7)', [
      `user-${n++}`,
      'no_stream',
      ids(),
      ['A', 'B'],
      text(2),
      text(2),
      ['k', 'k'],
    ]);
  const batch = () =>
    client.query('select * from toolbus_append_batch($1, $2, $3, $4, $5, $6, $7, $8)', [
      [`user-${n++}`, `user-${n++}`],
      ['no_stream', 'no_stream'],
      [2, 2],
      [...ids(), ...ids()],
      ['A', 'B', 'A', 'B'],
      text(4),
      text(4),
      ['k', 'k', 'k', 'k'],
    ]);
  // Enough calls on the small table for the session to keep its plans.
  for (let i = 0; i < 10; i++) {
    await single();
    await batch();
  }
  await client.query(
    `insert into toolbus_events (stream_id, revision, event_id, event_type, data, metadata)
     select 'bulk', g, gen_random_uuid(), 'X', '{}', '{}' from generate_series(0, 19999) g`,
  );
  const scans = async () => {
    // This session's counts are flushed when it next goes idle, then read in a new snapshot.
    await client.query('select pg_stat_force_next_flush()');
    const { rows } = await client.query<{ seq: string; idx: string }>(
      `select seq_scan::text as seq, idx_scan::text as idx from pg_stat_user_tables where relname = 'toolbus_events'`,
    );
    return { seq: Number(rows[0]!.seq), idx: Number(rows[0]!.idx) };
  };
  const before = await scans();
  for (let i = 0; i < 10; i++) {
    await single();
    await batch();
  }
  const after = await scans();
  t.equal(after.seq - before.seq, 0, 'no append scanned the 20,000-event table');
  t.ok(after.idx - before.idx >= 20, 'each looked its event ids up in the index');
  const { rows } = await client.query<{ c: string }>(
    `select count(*)::text as c from toolbus_events where stream_id like 'user-%'`,
  );
  t.equal(Number(rows[0]!.c), 120, 'and every append was written (30 singles and 30 pairs, 2 events each)');
});
