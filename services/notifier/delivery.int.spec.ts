import { randomUUID } from 'node:crypto';
import t from 'tap';
import { CLOSE_CODES } from '../../contracts/index.ts';
import { signToken } from '../../lib/auth.ts';
import { loadConfig } from '../../lib/config.ts';
import { createPostgresEventStore } from '../../lib/eventstore/postgres.ts';
import { connectNats } from '../../lib/nats.ts';
import { readUserEvents, recordExecution } from '../../test/support/events.ts';
import { createTestDatabase } from '../../test/support/postgres.ts';
import { startNats, startRedis } from '../../test/support/processes.ts';
import { startNotifier, type Notifier } from './app.ts';
import { NotifierEnv } from './config.ts';
import { openClient, subscribe, ticketFor, waitFor, type TestClient } from './test-client.ts';

/**
 * Every event of a user reaches that user's sockets once, in revision order: across concurrent
 * writers, a reconnect in the middle of a burst, a lost NATS publish, a NATS restart, and next to
 * a client that stopped reading. Real NATS (owned by this file), Redis and PostgreSQL.
 */
const SECRET = 'delivery-test-secret-that-is-long-enough-0123456';
const db = await createTestDatabase(t);
const nats = await startNats(t);
const redis = await startRedis(t);
const store = await createPostgresEventStore({ connectionString: db.url });
const publisher = await connectNats(nats.url, 'delivery-test');
const env = {
  NODE_ENV: 'test',
  LOG_LEVEL: 'warn',
  NATS_URL: nats.url,
  REDIS_URL: redis.url,
  JWT_SECRET: SECRET,
  NOTIFIER_PORT: '0',
  NOTIFIER_MAX_BUFFER_BYTES: String(256 * 1024),
  // Long enough that only a NATS reconnect (or a gap) can trigger a store read in these tests.
  NOTIFIER_TAIL_CHECK_MS: '600000',
};
const notifier = await startNotifier(loadConfig(NotifierEnv, env), { store });
t.teardown(async () => {
  await notifier.close();
  await publisher.close();
  await store.close();
});

const user = () => `u${randomUUID().slice(0, 8)}`;
const tokenOf = (sub: string) => signToken(SECRET, { sub }, '1h');
const range = (n: number) => Array.from({ length: n }, (_, i) => i);
const overflows = async (n: Notifier) =>
  (await n.app.metrics.getSingleMetric('toolbus_notifier_queue_overflows_total')!.get()).values[0]?.value ??
  0;
const storedIds = async (userId: string) => (await readUserEvents(store, userId)).map((e) => e.event.id);
const ids = (c: TestClient) => c.events().map((e) => e.event.id);

t.test('users never see each other’s events under concurrent load', async (t) => {
  const users = [user(), user(), user()];
  const clients = new Map<string, TestClient[]>();
  for (const u of users) {
    const tk = await tokenOf(u);
    clients.set(u, [await subscribe(notifier.address, tk), await subscribe(notifier.address, tk)]);
  }
  const perWriter = 8;
  // Two writers per user: appends race (and retry), publishes may arrive out of order.
  await Promise.all(
    users.flatMap((u) =>
      [0, 1].map(async () => {
        for (let i = 0; i < perWriter; i++)
          await recordExecution(store, u, { nats: publisher, tool: `tool_${u.toLowerCase()}` });
      }),
    ),
  );
  const total = 2 * perWriter * 3;
  for (const u of users) {
    for (const c of clients.get(u)!) {
      await c.waitFor(`${total} events of ${u}`, () => c.events().length >= total);
      t.same(c.revisions(), range(total), `${u}: every revision once, in order`);
      t.ok(
        c.events().every((e) => e.userId === u && e.event.metadata.userId === u),
        `${u}: only its own events`,
      );
      t.same(ids(c), await storedIds(u), `${u}: exactly the stored events`);
      c.ws.close();
    }
  }
});

t.test('a client cut off in the middle of a burst resumes with every event exactly once', async (t) => {
  const u = user();
  const tk = await tokenOf(u);
  const executions = 30;
  const first = await subscribe(notifier.address, tk);
  const burst = (async () => {
    for (let i = 0; i < executions; i++) await recordExecution(store, u, { nats: publisher });
  })();
  await first.waitFor('part of the burst', () => first.events().length >= 20);
  first.ws.terminate();
  const before = first.events();
  const last = before.at(-1)!.revision;

  const second = await subscribe(notifier.address, tk, { afterRevision: last });
  const ready = second.received.find((n) => n.kind === 'ready');
  t.ok(
    ready && ready.kind === 'ready' && ready.revision !== null && ready.revision >= last,
    'ready names the replayed revision',
  );
  await burst;
  await second.waitFor(
    'the rest of the burst',
    () => second.events().at(-1)?.revision === executions * 3 - 1,
  );
  const all = [...before, ...second.events()];
  t.same(
    all.map((e) => e.revision),
    range(executions * 3),
    'no gap, no duplicate across the reconnect',
  );
  t.same(
    all.map((e) => e.event.id),
    await storedIds(u),
  );
  second.ws.close();
});

t.test('a missed NATS publish is filled from the store', async (t) => {
  const u = user();
  const client = await subscribe(notifier.address, await tokenOf(u));
  await recordExecution(store, u, { nats: publisher });
  await recordExecution(store, u); // appended, never published
  await recordExecution(store, u, { nats: publisher });
  // The next publish wakes the user's feed, which reads everything after what it has sent.
  await client.waitFor('nine events', () => client.events().length >= 9);
  t.same(client.revisions(), range(9));
  t.same(ids(client), await storedIds(u));
  client.ws.close();
});

t.test('a lost publish at the end of a burst arrives with the periodic tail check', async (t) => {
  const second = await startNotifier(loadConfig(NotifierEnv, { ...env, NOTIFIER_TAIL_CHECK_MS: '500' }), {
    store,
  });
  t.teardown(() => second.close());
  const u = user();
  const client = await subscribe(second.address, await tokenOf(u));
  await recordExecution(store, u, { nats: publisher });
  await recordExecution(store, u); // the last one: no later event reveals the gap
  await client.waitFor('six events', () => client.events().length >= 6);
  t.same(client.revisions(), range(6));
  client.ws.close();
});

t.test('a NATS restart loses nothing: the tails are checked after the reconnect', async (t) => {
  const u = user();
  const client = await subscribe(notifier.address, await tokenOf(u));
  await recordExecution(store, u, { nats: publisher });
  await client.waitFor('first execution', () => client.events().length === 3);

  await nats.kill();
  await recordExecution(store, u); // appended while NATS is down: nobody can publish them
  await recordExecution(store, u);
  await nats.start();
  await client.waitFor('the executions written during the outage', () => client.events().length >= 9, 30_000);

  await waitFor('publisher reconnected', () => !publisher.isClosed() && publisher.info !== undefined);
  await publisher.flush();
  await recordExecution(store, u, { nats: publisher });
  await client.waitFor('live again', () => client.events().length >= 12, 30_000);
  t.same(client.revisions(), range(12), 'every event once, in order');
  t.same(ids(client), await storedIds(u));
  t.notOk(client.isClosed(), 'the socket stayed open through the restart');
  client.ws.close();
});

t.test('a client that stops reading is cut off; the others keep receiving', async (t) => {
  // Its own notifier, which gives a socket one second to drain.
  const notifier = await startNotifier(
    loadConfig(NotifierEnv, { ...env, NOTIFIER_SLOW_CONSUMER_MS: '1000' }),
    {
      store,
    },
  );
  t.teardown(() => notifier.close());
  const u = user();
  const other = user();
  const tk = await tokenOf(u);
  const slow = await subscribe(notifier.address, tk);
  const fast = await subscribe(notifier.address, tk);
  const bystander = await subscribe(notifier.address, await tokenOf(other));
  const socketsBefore = notifier.stats().sockets;
  (slow.ws as unknown as { _socket: { pause(): void; resume(): void } })._socket.pause();

  const blob = 'x'.repeat(100_000);
  let written = 0;
  // Until the paused socket's kernel buffers and then the notifier's limit fill, and its second passes.
  const until = Date.now() + 30_000;
  while (notifier.stats().sockets === socketsBefore && Date.now() < until) {
    await recordExecution(store, u, { nats: publisher, result: { blob } });
    await recordExecution(store, other, { nats: publisher });
    written++;
  }
  t.equal(notifier.stats().sockets, socketsBefore - 1, `cut off after ${written} large executions`);

  await fast.waitFor('everything, for the reading socket', () => fast.events().length >= written * 3, 60_000);
  await bystander.waitFor(
    'everything, for the other user',
    () => bystander.events().length >= written * 3,
    60_000,
  );
  t.same(fast.revisions(), range(written * 3));
  t.same(bystander.revisions(), range(written * 3));

  (slow.ws as unknown as { _socket: { resume(): void } })._socket.resume();
  const closed = await slow.closed;
  t.equal(closed.code, CLOSE_CODES.slowConsumer, 'the slow client learns why once it reads again');
  t.ok(slow.events().length < written * 3, 'the slow client did not get everything');
  t.same(slow.revisions(), range(slow.events().length), 'what it got is in order, without gaps');
  fast.ws.close();
  bystander.ws.close();
});

t.test(
  'a long replay to a slow reader: live events beyond the queue limit come from the store, once, in order',
  async (t) => {
    const u = user();
    const blob = 'y'.repeat(250_000);
    // About 25 MB: far more than the kernel buffers of one paused socket take, so the replay waits.
    const history = 100;
    for (let i = 0; i < history; i++) await recordExecution(store, u, { result: { blob } });
    const overflowsBefore = await overflows(notifier);

    const tk = await tokenOf(u);
    const client = await openClient(notifier.address, { ticket: await ticketFor(notifier.address, tk) });
    const socket = (client.ws as unknown as { _socket: { pause(): void; resume(): void } })._socket;
    socket.pause();
    client.send({ type: 'subscribe' });
    // While the replay waits for the paused reader, more than the queue can hold arrives live.
    const live = 10;
    for (let i = 0; i < live; i++) await recordExecution(store, u, { nats: publisher, result: { blob } });
    socket.resume();

    const total = (history + live) * 3;
    await client.waitFor('every event', () => client.events().length >= total || client.isClosed(), 60_000);
    t.notOk(
      client.isClosed(),
      `still open (${client.isClosed() ? JSON.stringify(await client.closed) : ''})`,
    );
    t.same(client.revisions(), range(total), 'every revision once, in order');
    t.ok(
      (await overflows(notifier)) > overflowsBefore,
      'live events were left to the store rather than kept in memory',
    );
    client.ws.close();
  },
);

t.test('resuming after a revision the store does not have says so and continues from the tail', async (t) => {
  const u = user();
  await recordExecution(store, u);
  const client = await subscribe(notifier.address, await tokenOf(u), { afterRevision: 10 });
  t.match(client.received, [
    { kind: 'error', code: 'RESUME_AHEAD' },
    { kind: 'ready', userId: u, revision: 2 },
  ]);
  await recordExecution(store, u, { nats: publisher });
  await client.waitFor('new events', () => client.events().length >= 3);
  t.same(client.revisions(), [3, 4, 5]);
  client.ws.close();
});
