import pg from 'pg';
import t from 'tap';
import { randomUUID } from 'node:crypto';
import { migrate } from '../lib/db.ts';
import { createPostgresEventStore, FETCH_AFTER_SQL } from '../lib/eventstore/postgres.ts';
import { eventStoreMigrations } from '../lib/eventstore/postgres.migrations.ts';
import { collect, eventStoreConformance } from './conformance/eventstore.ts';
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

/** Counts the reads (each one query) a store's subscriptions make; nothing else is changed. */
function countReads(store: object): () => number {
  const s = store as { fetchAfter: (...args: unknown[]) => Promise<unknown> };
  const fetchAfter = s.fetchAfter.bind(store);
  let reads = 0;
  s.fetchAfter = (...args) => {
    reads++;
    return fetchAfter(...args);
  };
  return () => reads;
}

t.test('a subscription is woken by an append of another process at once, not by its poll', async (t) => {
  // Polling once an hour: only the NOTIFY sent after the other store's commit can wake it within
  // the test's time (or, while an older transaction anywhere on the server holds the events behind
  // the visibility horizon, the store's short look-again). Each append waits for the event before
  // it, so each is a wake of its own. No time bound is asserted: a loaded machine is slow.
  const reader = await createPostgresEventStore({ connectionString: db.url, pollIntervalMs: 3_600_000 });
  const writer = await createPostgresEventStore({ connectionString: db.url });
  t.teardown(async () => {
    await reader.close();
    await writer.close();
  });
  const subscription = reader.subscribe({ from: 'end', filter: { streamPrefixes: ['wake-'] } });
  const received: Array<{ revision: number; at: number }> = [];
  let arrived: () => void = () => undefined;
  const reading = (async () => {
    for await (const e of subscription) {
      received.push({ revision: e.revision, at: performance.now() });
      arrived();
      if (e.revision === 2) return;
    }
  })();
  await subscription.caughtUp;
  const delays: number[] = [];
  for (let i = 0; i < 3; i++) {
    const next = new Promise<void>((resolve) => (arrived = resolve));
    const sent = performance.now();
    await writer.append(
      'wake-1',
      [{ id: randomUUID(), type: 'Woken', data: { i }, metadata: {} }],
      i - 1 < 0 ? 'no_stream' : i - 1,
    );
    await next;
    delays.push(received.at(-1)!.at - sent);
  }
  await reading;
  await subscription.close();
  t.strictSame(
    received.map((r) => r.revision),
    [0, 1, 2],
    'each append reached the subscription before the next was made',
  );
  t.comment(`delays ${delays.map((d) => d.toFixed(0)).join(', ')} ms`);
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
    // Its reads are counted (the real store answers them), to know when it has looked again.
    const reads = countReads(reader);
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
    // The append has committed but is invisible behind the blocker: the subscription, woken, finds
    // nothing, and looks again (twice here) before the blocker ends.
    const readsAtAppend = reads();
    while (reads() < readsAtAppend + 2) await new Promise((r) => setTimeout(r, 10));
    const released = performance.now();
    await blocker.query('commit');
    const got = await first;
    await subscription.close();
    t.equal(got?.id, id, 'the event arrives without waiting for the poll');
    t.comment(`${(got!.at - released).toFixed(0)} ms after the release`);
  },
);

t.test('a database from before keys: its rows are found by the executionId of their metadata', async (t) => {
  const old = await createTestDatabase(t);
  const pool = new pg.Pool({ connectionString: old.url, max: 1 });
  // The database is dropped at teardown, perhaps before this pool ends: its idle client is then
  // terminated, which is expected and must not crash the test.
  pool.on('error', () => undefined);
  t.teardown(() => pool.end());
  await migrate(
    pool,
    'eventstore',
    eventStoreMigrations.filter((m) => m.version <= 2),
  );
  // Appended as a store of version 2 did: the six-argument function, no key.
  const before = [
    { executionId: 'exec-1' },
    { executionId: 'exec-2' },
    'metadata that is not an object',
    { executionId: 'not a key' },
    { executionId: 'exec-1' },
  ].map((metadata) => ({ id: randomUUID(), metadata }));
  await pool.query('select * from toolbus_append($1, $2, $3, $4, $5, $6)', [
    'user-old',
    'no_stream',
    before.map((e) => e.id),
    before.map(() => 'Old'),
    before.map(() => '{}'),
    before.map((e) => JSON.stringify(e.metadata)),
  ]);

  const store = await createPostgresEventStore({ connectionString: old.url });
  t.teardown(() => store.close());
  const idsOf = async (key: string) => (await collect(store.readByKey('user-old', key))).map((e) => e.id);
  t.strictSame(await idsOf('exec-1'), [before[0]!.id, before[4]!.id], 'old rows of execution 1, in order');
  t.strictSame(await idsOf('exec-2'), [before[1]!.id], 'the old row of execution 2');
  const { rows } = await pool.query<{ n: number }>(
    `select count(*)::int as n from toolbus_events where event_key is null`,
  );
  t.equal(rows[0]!.n, 2, 'rows without a usable executionId (not an object, not a key) keep no key');

  const added = randomUUID();
  await store.append('user-old', [{ id: added, type: 'New', data: {}, metadata: {}, key: 'exec-1' }], 4);
  t.strictSame(
    await idsOf('exec-1'),
    [before[0]!.id, before[4]!.id, added],
    'a new event joins the old ones under the same key',
  );
});

t.test('readByKey reads the index, not the stream', async (t) => {
  const store = await createPostgresEventStore({ connectionString: db.url });
  const pool = new pg.Pool({ connectionString: db.url, max: 1 });
  t.teardown(async () => {
    await store.close();
    await pool.end();
  });
  // A stream of 2,000 events, one of which has the key looked for.
  const stream = `long-${randomUUID().slice(0, 8)}`;
  const key = randomUUID();
  const batch = (n: number, keyOf: (i: number) => string | undefined) =>
    Array.from({ length: n }, (_, i) => ({
      id: randomUUID(),
      type: 'Filler',
      data: {},
      metadata: {},
      ...(keyOf(i) !== undefined && { key: keyOf(i)! }),
    }));
  await store.append(
    stream,
    batch(1_000, () => randomUUID()),
    'no_stream',
  );
  await store.append(
    stream,
    batch(1, () => key),
    999,
  );
  await store.append(
    stream,
    batch(999, () => undefined),
    1000,
  );
  await pool.query('analyze toolbus_events');
  const { rows } = await pool.query<{ 'QUERY PLAN': Array<{ Plan: Record<string, unknown> }> }>(
    `explain (analyze, format json) select * from toolbus_events
      where stream_id = $1 and event_key = $2 and revision >= 0 order by revision limit 500`,
    [stream, key],
  );
  const plan = JSON.stringify(rows[0]!['QUERY PLAN']);
  t.match(plan, /toolbus_events_stream_key/, 'the plan uses the (stream, key) index');
  t.notMatch(plan, /"Seq Scan"/, 'no sequential scan');
  t.strictSame(
    (await collect(store.readByKey(stream, key))).map((e) => e.revision),
    [1000],
    'the one event with the key',
  );
});

t.test('a subscription’s page reads indexes only: its cost does not grow with the table', async (t) => {
  // Every subscription runs this query at every wake; with a scan of the table in it, the
  // database's CPU per dispatch grew with the history (benchmark 2, bench/pg-work.ts). A table
  // filled since its last ANALYZE is when the planner knows least: a fresh database, autovacuum off.
  const fresh = await createTestDatabase();
  const store = await createPostgresEventStore({ connectionString: fresh.url });
  const pool = new pg.Pool({ connectionString: fresh.url, max: 1 });
  t.teardown(async () => {
    await store.close();
    await pool.end();
    // pg's pool.end() resolves before its connections have gone; a forced drop would end them
    // under the client's feet (an error in CI). Dropped once the server has no session left on it.
    const admin = new pg.Client({ connectionString: db.url });
    await admin.connect();
    const sessions = async () =>
      (
        await admin.query<{ n: number }>(
          'select count(*)::int as n from pg_stat_activity where datname = $1',
          [fresh.name],
        )
      ).rows[0]!.n;
    while ((await sessions()) > 0) await new Promise((r) => setTimeout(r, 20));
    await admin.end();
    await fresh.drop();
  });
  await pool.query('alter table toolbus_events set (autovacuum_enabled = false)');
  for (let i = 0; i < 6; i++) {
    await store.append(
      `page-${randomUUID().slice(0, 8)}`,
      Array.from({ length: 1_000 }, () => ({ id: randomUUID(), type: 'Filler', data: {}, metadata: {} })),
      'no_stream',
    );
  }
  const { rows: last } = await pool.query<{ tx: string; seq: string }>(
    'select tx_id::text as tx, seq from toolbus_events order by tx_id desc, seq desc offset 10 limit 1',
  );
  const plan = async (prefixes: string[] | null, exclude: string | null) => {
    const { rows } = await pool.query<{ 'QUERY PLAN': unknown }>(
      `explain (analyze, format json) ${FETCH_AFTER_SQL}`,
      [last[0]!.tx, last[0]!.seq, prefixes, null, 500, exclude],
    );
    return JSON.stringify(rows[0]!['QUERY PLAN']);
  };
  const { rows: snapshot } = await pool.query<{ s: string }>('select pg_current_snapshot()::text as s');
  for (const [what, p] of [
    ['every stream', await plan(null, null)],
    ['a stream prefix', await plan(['page-%'], null)],
    ['from the end (a snapshot left out)', await plan(null, snapshot[0]!.s)],
  ] as const) {
    t.notMatch(p, /"Seq Scan"/, `${what}: no sequential scan`);
    t.match(p, /toolbus_events_global/, `${what}: the global-order index`);
  }
});

t.test(
  'a subscription with settleMs reads a burst of appends together, and closes while it waits',
  async (t) => {
    const reader = await createPostgresEventStore({ connectionString: db.url, pollIntervalMs: 3_600_000 });
    const writer = await createPostgresEventStore({ connectionString: db.url });
    t.teardown(async () => {
      await reader.close();
      await writer.close();
    });
    const reads = countReads(reader);

    const settleMs = 1_000;
    const subscription = reader.subscribe({ from: 'end', filter: { streamPrefixes: ['settle-'] }, settleMs });
    const received: number[] = [];
    let allThere: () => void = () => undefined;
    const all = new Promise<void>((resolve) => (allThere = resolve));
    const reading = (async () => {
      for await (const e of subscription) {
        received.push(e.revision);
        if (received.length === 10) allThere();
      }
    })();
    await subscription.caughtUp;
    const before = reads();
    const since = performance.now();
    for (let i = 0; i < 10; i++) {
      await writer.append(
        'settle-1',
        [{ id: randomUUID(), type: 'Settled', data: { i }, metadata: {} }],
        i - 1 < 0 ? 'no_stream' : i - 1,
      );
    }
    const appending = performance.now() - since;
    await all;
    const burstReads = reads() - before;
    t.strictSame(received, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 'every event, in order');
    // Without settleMs each append is a wake and a read of its own (ten or so); with it, one read per
    // second of appending, and the one after: at most a look behind the horizon more.
    t.ok(
      burstReads <= Math.ceil(appending / settleMs) + 2,
      `${burstReads} reads for 10 appends made in ${appending.toFixed(0)} ms`,
    );

    // A subscription closed during its pause ends at once, not after it.
    const patient = reader.subscribe({
      from: 'end',
      filter: { streamPrefixes: ['settle-'] },
      settleMs: 3_600_000,
    });
    const ended = (async () => {
      for await (const _ of patient) return 'event';
      return 'ended';
    })();
    await patient.caughtUp;
    // The writer's NOTIFY reaching the reader wakes the subscription into its pause (its listener
    // was registered first, and runs first); a turn of the event loop later it waits there.
    const notified = new Promise<void>((resolve) => {
      const off = (reader as unknown as { onAppend(l: () => void): () => void }).onAppend(() => {
        off();
        resolve();
      });
    });
    await writer.append(
      'settle-1',
      [{ id: randomUUID(), type: 'Settled', data: { i: 10 }, metadata: {} }],
      9,
    );
    await notified;
    await new Promise((resolve) => setImmediate(resolve));
    await subscription.close();
    await reading;
    await patient.close();
    t.equal(await ended, 'ended', 'the pause ends with close(); the event waits for the next read');
  },
);
