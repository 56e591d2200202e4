import { connectionIdentity } from '../../lib/nats.ts';
import pg from 'pg';
import t from 'tap';
import { executionIdFor, REQUEST_HEADERS, subjects, userStream } from '../../contracts/index.ts';
import { headers as natsHeaders } from '@nats-io/transport-node';
import type { EventStore, ReadStreamOptions, RecordedEvent } from '../../lib/eventstore/types.ts';
import { seedHistory } from '../../bench/lib/seed.ts';
import { harness } from './test/harness.ts';

/**
 * The request paths that ask about one execution (the answers lookup, GET /executions/:id, a
 * cancel) find it through the store's index by execution id: the events they read do not grow
 * with the user's history. Counted, not timed: the dispatcher runs on a store that counts every
 * event it is handed from the user's stream.
 */

const HISTORY = 20_000;

/**
 * The store, counting the events of `stream` that reads hand out (stream reads and reads by key),
 * and the reads of it (queries, at least one each).
 */
function countingStore(
  store: EventStore,
  stream: string,
): { store: EventStore; read: () => number; reads: () => { stream: number; byKey: number } } {
  let read = 0;
  const reads = { stream: 0, byKey: 0 };
  async function* count(s: string, events: AsyncIterable<RecordedEvent>): AsyncGenerator<RecordedEvent> {
    for await (const e of events) {
      if (s === stream) read++;
      yield e;
    }
  }
  const readStream = (s: string, options?: ReadStreamOptions) => {
    if (s === stream) reads.stream++;
    return count(s, store.readStream(s, options));
  };
  const readByKey = (s: string, key: string) => {
    if (s === stream) reads.byKey++;
    return count(s, store.readByKey(s, key));
  };
  const proxy = new Proxy(store, {
    get(target, prop) {
      if (prop === 'readStream') return readStream;
      if (prop === 'readByKey') return readByKey;
      const value: unknown = Reflect.get(target, prop, target);
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
  return { store: proxy, read: () => read, reads: () => ({ ...reads }) };
}

t.test(
  `a user with ${HISTORY} events: lookup, status and cancel of the oldest execution read a handful`,
  async (t) => {
    const h = await harness(t);
    const userId = 'long-history';
    const pool = new pg.Pool({ connectionString: h.databaseUrl, max: 2 });
    // Executions `seed-0`, `seed-1`, ... of noop, three events each, straight into the tables.
    await seedHistory(pool, { users: [userId], events: HISTORY, requestPrefix: 'seed' });
    const { rows } = await pool.query<{ n: number }>(
      'select count(*)::int as n from toolbus_events where stream_id = $1',
      [userStream(userId)],
    );
    t.ok(rows[0]!.n >= HISTORY, `the user's stream holds ${rows[0]!.n} events`);
    // Closed now: the harness drops the database at teardown, before later teardowns would run.
    await pool.end();

    const counting = countingStore(h.store, userStream(userId));
    const d = await h.start({}, { store: counting.store });
    const token = await h.token(userId);
    // Whatever start-up read is not part of the requests measured below.
    const before = counting.read();

    // 1. "What became of seed-0?" on toolbus.answers.<user>, as the agent client asks.
    const hdrs = natsHeaders();
    hdrs.set(REQUEST_HEADERS.authorization, `Bearer ${token}`);
    const reply = await h.nc.request(
      subjects.answers(userId, connectionIdentity(h.nc)),
      JSON.stringify({ requestId: 'seed-0' }),
      {
        timeout: 30_000,
        headers: hdrs,
      },
    );
    t.match(
      reply.json<{ answer: unknown }>().answer,
      { status: 'completed', requestId: 'seed-0' },
      'the answer of the oldest execution is found',
    );
    const afterLookup = counting.read();

    // 2. GET /executions/:id of the second oldest.
    const res = await d.app.inject({
      method: 'GET',
      url: `/executions/${executionIdFor(userId, 'seed-1')}`,
      headers: { authorization: `Bearer ${token}` },
    });
    t.equal(res.statusCode, 200, 'the status of an old execution is found');
    t.match(res.json(), { answer: { status: 'completed' } });
    const afterStatus = counting.read();

    // 3. Cancel of the third oldest (already completed: it says so).
    const cancel = await h.agent.cancel({ requestId: 'seed-2' }, { token });
    t.match(cancel, { cancelled: false, status: 'completed' }, 'a cancel finds it ended');
    const afterCancel = counting.read();

    // Each needs the execution's 3 events and the stream's last one (the tail); a backward read
    // to the oldest execution would have read the whole history.
    const PER_REQUEST = 8;
    t.ok(
      afterLookup - before <= PER_REQUEST,
      `the lookup read ${afterLookup - before} events (at most ${PER_REQUEST})`,
    );
    t.ok(
      afterStatus - afterLookup <= PER_REQUEST,
      `the status read ${afterStatus - afterLookup} events (at most ${PER_REQUEST})`,
    );
    t.ok(
      afterCancel - afterStatus <= PER_REQUEST * 3,
      `the cancel read ${afterCancel - afterStatus} events (at most ${PER_REQUEST * 3})`,
    );
    t.ok(afterLookup - before > 0, 'the lookup did go to the store (the count counts)');
  },
);

t.test('a lookup of a request not yet handled is one query of the store', async (t) => {
  // Under overload agents look up requests still queued, many a second; each such lookup finds
  // nothing, and each query holds one of the store's connections that appends wait for.
  const h = await harness(t);
  const userId = 'queued';
  const counting = countingStore(h.store, userStream(userId));
  await h.start({}, { store: counting.store });
  const before = counting.reads();
  const hdrs = natsHeaders();
  hdrs.set(REQUEST_HEADERS.authorization, `Bearer ${await h.token(userId)}`);
  const reply = await h.nc.request(
    subjects.answers(userId, connectionIdentity(h.nc)),
    JSON.stringify({ requestId: 'not-yet-handled' }),
    { timeout: 30_000, headers: hdrs },
  );
  t.same(reply.json(), { answer: null }, 'no answer yet');
  const after = counting.reads();
  t.same(
    { stream: after.stream - before.stream, byKey: after.byKey - before.byKey },
    { stream: 0, byKey: 1 },
    "one read through the index by execution id, no read of the user's stream (its tail)",
  );
});
