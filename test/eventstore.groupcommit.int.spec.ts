/**
 * Group commit in the PostgreSQL event store (docs/decisions/0028-group-commit.md): appends of
 * different streams share one transaction, each keeps its own expected-revision check and retry
 * rule, a conflict fails only its own stream, and readers still see one gap-free global order.
 *
 * Batching is made certain, not hoped for: appends made in one turn of the event loop go out
 * together, and appends made while the store's commits are all held (their stream locks taken by
 * another session) gather until one ends.
 */
import { randomUUID } from 'node:crypto';
import pg from 'pg';
import t from 'tap';
import { createPostgresEventStore } from '../lib/eventstore/postgres.ts';
import { GROUP_COMMIT_DEFAULTS } from '../lib/eventstore/postgres.groupcommit.ts';
import {
  comparePositions,
  WrongExpectedRevisionError,
  type AppendResult,
  type EventData,
  type EventStore,
  type ExpectedRevision,
} from '../lib/eventstore/types.ts';
import { collect, consume, eventually, type Tap } from './conformance/eventstore.ts';
import { createTestDatabase } from './support/postgres.ts';

const db = await createTestDatabase(t);

async function openStore(tt: Tap): Promise<EventStore> {
  const store = await createPostgresEventStore({ connectionString: db.url, pollIntervalMs: 50 });
  tt.teardown(() => store.close());
  return store;
}

async function rawClient(tt: Tap): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: db.url });
  await client.connect();
  tt.teardown(() => client.end());
  return client;
}

const event = (data: EventData['data'] = {}): EventData => ({
  id: randomUUID(),
  type: 'Grouped',
  data,
  metadata: {},
});

/** A fresh stream name for this run. */
const streamName = (label: string) => `${label}-${randomUUID().slice(0, 8)}`;

/** Settles every promise; a rejection is returned as its error. */
const settle = <T>(promises: Array<Promise<T>>) =>
  Promise.all(
    promises.map((p) =>
      p.then(
        (v) => v,
        (e: unknown) => e as Error,
      ),
    ),
  );

/** Waits until `n` sessions wait for a lock of `locktype` on the test database. */
async function waitForWaiters(observer: pg.Client, locktype: string, n: number): Promise<void> {
  await eventually(`${n} session(s) waiting for a ${locktype} lock`, async () => {
    const { rows } = await observer.query<{ n: number }>(
      `select count(*)::int as n from pg_locks l join pg_stat_activity a on a.pid = l.pid
        where l.locktype = $1 and not l.granted and a.datname = current_database()`,
      [locktype],
    );
    return rows[0]!.n >= n ? true : undefined;
  });
}

/**
 * Holds every commit the store may have in flight: another session takes the locks of
 * `maxInFlight` gate streams, and one append to each gate is sent (each alone, each waiting for
 * its lock). Until `release`, the store's next appends can only gather.
 */
async function holdCommits(tt: Tap, store: EventStore) {
  const holder = await rawClient(tt);
  const observer = await rawClient(tt);
  await holder.query('begin');
  const gates: Array<Promise<AppendResult>> = [];
  for (let i = 0; i < GROUP_COMMIT_DEFAULTS.maxInFlight; i++) {
    const gate = streamName('gate');
    await holder.query(`select pg_advisory_xact_lock(hashtextextended('toolbus-stream:' || $1, 0))`, [gate]);
    gates.push(store.append(gate, [event()], 'no_stream'));
    await waitForWaiters(observer, 'advisory', i + 1);
  }
  return {
    async release(): Promise<void> {
      await holder.query('commit');
      await Promise.all(gates);
    },
  };
}

t.test('appends of many streams made in one turn commit in one transaction', async (t) => {
  const store = await openStore(t);
  const streams = Array.from({ length: 40 }, () => streamName('turn'));
  const results = await Promise.all(streams.map((s) => store.append(s, [event(), event()], 'no_stream')));
  const commits = new Set(results.map((r) => r.position!.commit));
  t.equal(commits.size, 1, '40 appends, one transaction id');
  t.ok(
    results.every((r) => r.written && r.nextRevision === 1),
    'each append wrote its two events at revisions 0 and 1',
  );
  for (const [i, s] of streams.entries()) {
    const events = await collect(store.readStream(s));
    t.strictSame(
      events[1]!.position,
      results[i]!.position,
      `${s}: the append's position is that of its own last event`,
    );
  }
  const prepares = results.map((r) => r.position!.prepare);
  t.equal(new Set(prepares).size, prepares.length, 'every append has a position of its own');
});

t.test('appends made while the commits are in flight gather into the next one', async (t) => {
  const store = await openStore(t);
  const held = await holdCommits(t, store);
  // Sent over several turns of the event loop: nothing can go while the commits are held.
  const streams = Array.from({ length: 12 }, () => streamName('gathered'));
  const pending: Array<Promise<AppendResult>> = [];
  for (const s of streams) {
    pending.push(store.append(s, [event()], 'no_stream'));
    await new Promise((resolve) => setImmediate(resolve));
  }
  await held.release();
  const results = await Promise.all(pending);
  t.equal(new Set(results.map((r) => r.position!.commit)).size, 1, '12 appends, one transaction');
  t.ok(
    results.every((r) => r.written),
    'all written',
  );
});

t.test('a conflicting stream in a batch fails alone; the others commit', async (t) => {
  const store = await openStore(t);
  const [a, b, c, d] = ['a', 'b', 'c', 'd'].map(streamName) as [string, string, string, string];
  await Promise.all([a, b, c, d].map((s) => store.append(s, [event()], 'no_stream')));
  const late = event();
  const outcomes = await settle([
    store.append(a, [event()], 0),
    store.append(b, [late], 5),
    store.append(c, [event()], 'no_stream'),
    store.append(d, [event()], 'any'),
  ]);
  const [ra, rb, rc, rd] = outcomes;
  t.type(rb, WrongExpectedRevisionError, 'the wrong exact revision fails');
  t.equal((rb as WrongExpectedRevisionError).actual, 0, 'and says the actual revision');
  t.type(rc, WrongExpectedRevisionError, 'no_stream on an existing stream fails');
  t.equal((rc as WrongExpectedRevisionError).actual, 0, 'and says the actual revision');
  const landed = [ra, rd] as AppendResult[];
  t.ok(
    landed.every((r) => r.written && r.nextRevision === 1),
    'the others land',
  );
  t.equal(landed[0]!.position!.commit, landed[1]!.position!.commit, 'in one transaction');
  t.equal((await collect(store.readStream(b))).length, 1, 'nothing of the failed append was written');
  t.notOk(
    (await collect(store.readAll())).some((e) => e.id === late.id),
    'the failed event is nowhere',
  );
});

t.test('an idempotent retry inside a batch returns written=false', async (t) => {
  const store = await openStore(t);
  const [s, other, mismatch] = ['retry', 'other', 'mismatch'].map(streamName) as [string, string, string];
  const first = [event(), event(), event()];
  const mismatched = [event()];
  const original = await store.append(s, first, 'no_stream');
  await store.append(mismatch, mismatched, 'no_stream');
  await store.append(mismatch, [event()], 0);
  const [retry, fresh, wrong] = await settle([
    store.append(s, first, 'no_stream'),
    store.append(other, [event()], 'no_stream'),
    // The same ids where the expected revision says something else: a conflict, not a retry.
    store.append(mismatch, mismatched, 1),
  ]);
  t.strictSame(
    retry,
    { nextRevision: 2, position: null, written: false },
    'the retry is a no-op that names the revision',
  );
  t.ok((fresh as AppendResult).written, 'the other append in the batch is written');
  t.type(wrong, WrongExpectedRevisionError, 'ids where the expected revision does not put them conflict');
  t.equal((await collect(store.readStream(s))).length, 3, 'nothing written twice');
  t.ok(original.written, 'the original append was written');
});

t.test('appends of one stream made together go in successive transactions, in order', async (t) => {
  const store = await openStore(t);
  const s = streamName('same');
  const others = Array.from({ length: 5 }, () => streamName('beside'));
  const mine = Array.from({ length: 8 }, () => store.append(s, [event(), event()], 'any'));
  const theirs = others.map((o) => store.append(o, [event()], 'any'));
  const results = await Promise.all(mine);
  await Promise.all(theirs);
  t.strictSame(
    results.map((r) => r.nextRevision).sort((x, y) => x - y),
    [1, 3, 5, 7, 9, 11, 13, 15],
    'every append got revisions of its own',
  );
  t.equal(new Set(results.map((r) => r.position!.commit)).size, 8, 'one transaction each');
  const events = await collect(store.readStream(s));
  t.strictSame(
    events.map((e) => e.revision),
    Array.from({ length: 16 }, (_, i) => i),
    'the stream is contiguous',
  );
  t.ok(
    events.every((e, i) => i === 0 || comparePositions(events[i - 1]!.position, e.position) < 0),
    "the stream's revisions follow its positions",
  );

  // Two appends that both expect the stream to be new: one wins, the other sees it.
  const fresh = streamName('race');
  const race = await settle([
    store.append(fresh, [event()], 'no_stream'),
    store.append(fresh, [event()], 'no_stream'),
  ]);
  t.equal(race.filter((r) => r instanceof WrongExpectedRevisionError).length, 1, 'one of two fails');
  t.equal(race.filter((r) => !(r instanceof Error)).length, 1, 'the other lands');
});

t.test(
  'an event id held by a concurrent transaction of another stream fails only its own append',
  async (t) => {
    const store = await openStore(t);
    const other = await rawClient(t);
    const observer = await rawClient(t);
    const shared = event();
    // Another session appends the id and keeps its transaction open.
    await other.query('begin');
    await other.query(
      `select * from toolbus_append($1, 'no_stream', array[$2]::uuid[], array['Grouped'], array['{}'], array['{}'], array[null]::text[])`,
      [streamName('holder'), shared.id],
    );
    const [a, b, c] = ['dup', 'clean', 'clean'].map(streamName) as [string, string, string];
    const pending = settle([
      store.append(a, [event(), shared], 'no_stream'),
      store.append(b, [event()], 'no_stream'),
      store.append(c, [event()], 'no_stream'),
    ]);
    // The batch waits on the unique index for the other transaction, which then commits: 23505.
    await waitForWaiters(observer, 'transactionid', 1);
    await other.query('commit');
    const [ra, rb, rc] = await pending;
    t.type(ra, WrongExpectedRevisionError, 'the append with the taken id fails');
    t.ok((rb as AppendResult).written && (rc as AppendResult).written, 'the others of its batch land');
    t.strictSame(await collect(store.readStream(a)), [], 'nothing of the failed append was written');
  },
);

t.test('a subscription sees every event once, in order, under concurrent group commits', async (t) => {
  const WRITERS = 3;
  const STREAMS = 12;
  const APPENDS = 15;
  const prefix = `sub${randomUUID().slice(0, 6)}-`;
  const reader = await openStore(t);
  const subscription = reader.subscribe({ from: 'start', filter: { streamPrefixes: [prefix] } });
  const consumer = consume(subscription);
  t.teardown(() => subscription.close());
  const writers = await Promise.all(Array.from({ length: WRITERS }, () => openStore(t)));

  // Every writer drives its streams at once; each stream appends in order with exact revisions.
  const appended = new Map<string, AppendResult[]>();
  const streamOf = (w: number, s: number) => `${prefix}${w}-${s}`;
  await Promise.all(
    writers.flatMap((store, w) =>
      Array.from({ length: STREAMS }, async (_, s) => {
        const stream = streamOf(w, s);
        const results: AppendResult[] = [];
        for (let i = 0; i < APPENDS; i++) {
          const expected: ExpectedRevision = i === 0 ? 'no_stream' : 2 * i - 1;
          results.push(await store.append(stream, [event({ i }), event({ i })], expected));
        }
        appended.set(stream, results);
      }),
    ),
  );
  const total = WRITERS * STREAMS * APPENDS * 2;
  await eventually('the subscriber to receive every event', async () =>
    consumer.events.length >= total ? true : undefined,
  );
  const events = consumer.events;
  t.equal(events.length, total, 'every event, none twice');
  t.ok(
    events.every((e, i) => i === 0 || comparePositions(events[i - 1]!.position, e.position) < 0),
    'strictly increasing positions',
  );
  const seen = new Map<string, number>();
  let contiguous = true;
  for (const e of events) {
    const next = seen.get(e.streamId) ?? 0;
    if (e.revision !== next) contiguous = false;
    seen.set(e.streamId, next + 1);
  }
  t.ok(contiguous, "each stream's events arrive at revisions 0, 1, 2, ... in the global order");
  const positions = new Map(events.map((e) => [`${e.streamId}@${e.revision}`, e.position]));
  const matching = [...appended].every(([stream, results]) =>
    results.every((r) => comparePositions(positions.get(`${stream}@${r.nextRevision}`)!, r.position!) === 0),
  );
  t.ok(matching, "each append's position is that of its last event in the global order");
  const commits = new Set([...appended.values()].flat().map((r) => r.position!.commit));
  t.ok(
    commits.size < WRITERS * STREAMS * APPENDS,
    `${WRITERS * STREAMS * APPENDS} appends in ${commits.size} transactions`,
  );
});

t.test('with groupCommit: false every append is its own transaction', async (t) => {
  const store = await createPostgresEventStore({ connectionString: db.url, groupCommit: false });
  t.teardown(() => store.close());
  const results = await Promise.all(
    Array.from({ length: 10 }, () => store.append(streamName('alone'), [event()], 'no_stream')),
  );
  t.equal(new Set(results.map((r) => r.position!.commit)).size, 10, 'ten transactions');
});
