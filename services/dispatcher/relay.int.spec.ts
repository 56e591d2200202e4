import { randomUUID } from 'node:crypto';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { pino } from 'pino';
import t from 'tap';
import { subjects, type Notification } from '../../contracts/index.ts';
import { signToken } from '../../lib/auth.ts';
import { loadConfig } from '../../lib/config.ts';
import { createPostgresEventStore } from '../../lib/eventstore/postgres.ts';
import type { RecordedEvent, SubscribeOptions, Subscription } from '../../lib/eventstore/types.ts';
import { connectNats } from '../../lib/nats.ts';
import { readUserEvents, recordExecution } from '../../test/support/events.ts';
import { createTestDatabase } from '../../test/support/postgres.ts';
import { startNats, startRedis } from '../../test/support/processes.ts';
import { startNotifier } from '../notifier/app.ts';
import { NotifierEnv } from '../notifier/config.ts';
import { subscribe, waitFor } from '../notifier/test-client.ts';
import { EventRelay, MSG_ID_HEADER } from './relay.ts';

/**
 * The event relay publishes every committed event of the user streams, whoever committed it and
 * whether or not it was published on commit: real NATS, PostgreSQL (store, lock, checkpoint) and
 * a real notifier whose periodic tail check is off.
 */
const SECRET = 'relay-test-secret-that-is-long-enough-0123456789';
const WAIT_MS = 60_000;
const db = await createTestDatabase(t);
const nats = await startNats(t);
const redis = await startRedis(t);
const store = await createPostgresEventStore({ connectionString: db.url });
const nc = await connectNats(nats.url, 'relay-test-relays');
const listener = await connectNats(nats.url, 'relay-test-listener');
const log = pino({ level: 'silent' });
t.teardown(async () => {
  await listener.close();
  await nc.close();
  await store.close();
});

const user = () => `u${randomUUID().slice(0, 8)}`;
const relay = (name: string) =>
  new EventRelay({ store, nc, connectionString: db.url, log, name, lockPollMs: 100, checkpointMs: 50 });

/**
 * Waits until `r` follows the store. A relay is active once it holds the lock, a moment before it
 * reads where it starts (its checkpoint, or the store's end for a relay that never ran): what is
 * committed in that moment it does not relay, by design, so a test writes only after this.
 */
const following = (r: EventRelay, what = 'the relay') =>
  waitFor(`${what} following the store`, () => r.following, WAIT_MS);

/** Every event message published for `userId`: its event id, revision and Nats-Msg-Id header. */
function listen(userId: string) {
  const seen: Array<{ id: string; revision: number; msgId: string | undefined }> = [];
  const sub = listener.subscribe(subjects.events(userId), {
    callback: (_err, msg) => {
      const n = msg.json<Extract<Notification, { kind: 'event' }>>();
      seen.push({ id: n.event.id, revision: n.revision, msgId: msg.headers?.get(MSG_ID_HEADER) });
    },
  });
  return { seen, ids: () => new Set(seen.map((s) => s.id)), stop: () => sub.unsubscribe() };
}
const storedIds = async (userId: string) => (await readUserEvents(store, userId)).map((e) => e.event.id);

t.test('an event committed without a publish reaches the socket through the relay', async (t) => {
  const notifier = await startNotifier(
    loadConfig(NotifierEnv, {
      NODE_ENV: 'test',
      LOG_LEVEL: 'warn',
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      JWT_SECRET: SECRET,
      NOTIFIER_PORT: '0',
      NOTIFIER_TAIL_CHECK_MS: '0',
    }),
    { store },
  );
  t.teardown(() => notifier.close());
  const r = relay('socket');
  await r.start();
  t.teardown(() => r.close());
  await following(r);

  const u = user();
  const heard = listen(u);
  t.teardown(() => heard.stop());
  const client = await subscribe(notifier.address, await signToken(SECRET, { sub: u }, '1h'));
  // A dispatcher that died between its commit and its publish: the events are only in the store.
  await recordExecution(store, u);
  await client.waitFor('the three committed events', () => client.events().length >= 3, WAIT_MS);
  t.same(client.revisions(), [0, 1, 2], 'every revision once, in order');
  t.same(
    client.events().map((e) => e.event.id),
    await storedIds(u),
    'exactly the stored events',
  );
  await waitFor('the relay’s messages', () => heard.seen.length >= 3, WAIT_MS);
  t.ok(
    heard.seen.every((s) => s.msgId === s.id),
    'each message carries its event id as Nats-Msg-Id',
  );
  client.ws.close();
});

t.test('a relay restarted resumes from its checkpoint and skips nothing', async (t) => {
  const u = user();
  const heard = listen(u);
  t.teardown(() => heard.stop());
  const first = relay('resume');
  // Closed also when the test fails: a relay left running would publish the next tests' events.
  t.teardown(() => first.close());
  await first.start();
  await following(first);
  await recordExecution(store, u);
  await waitFor('the first execution relayed', () => heard.ids().size >= 3, WAIT_MS);
  await first.close();

  // Committed while no relay runs.
  await recordExecution(store, u);
  await recordExecution(store, u);
  const second = relay('resume');
  await second.start();
  t.teardown(() => second.close());
  const stored = await storedIds(u);
  await waitFor('every stored event relayed', () => stored.every((id) => heard.ids().has(id)), WAIT_MS);
  t.equal(stored.length, 9);
  t.ok(
    second.published < 9,
    `the second relay started after what the first published (${second.published} published)`,
  );
});

t.test('of two relays one publishes; the other takes over when it stops', async (t) => {
  const u = user();
  const heard = listen(u);
  t.teardown(() => heard.stop());
  const a = relay('pair');
  const b = relay('pair');
  t.teardown(() => Promise.all([a.close(), b.close()]));
  await a.start();
  await following(a, 'a');
  await b.start();
  await waitFor('b on standby', () => b.state === 'standby', WAIT_MS);

  await recordExecution(store, u);
  await recordExecution(store, u);
  const before = await storedIds(u);
  await waitFor('both executions relayed', () => before.every((id) => heard.ids().has(id)), WAIT_MS);
  // Published once each: a flush of the listener's connection makes sure no second copy is on its way.
  await nc.flush();
  await listener.flush();
  t.equal(heard.seen.length, before.length, 'each event published once');
  t.equal(b.published, 0, 'the standby published nothing');

  await a.close();
  await following(b, 'b');
  await recordExecution(store, u);
  const after = await storedIds(u);
  await waitFor(
    'the execution after the takeover relayed',
    () => after.every((id) => heard.ids().has(id)),
    WAIT_MS,
  );
  t.ok(b.published >= 3, 'the relay that took over publishes');
});

t.test(
  'a burst of more events than one write holds is relayed whole, in order, and checkpointed',
  async (t) => {
    const u = user();
    const heard = listen(u);
    t.teardown(() => heard.stop());
    // Committed while no relay runs: the relay then reads them in pages, far more than one turn's
    // batch of publishes (256), and must publish every one in store order.
    const first = relay('burst');
    t.teardown(() => first.close());
    await first.start();
    await following(first); // its checkpoint written: the next relay starts there
    await first.close();
    for (let i = 0; i < 100; i++) await recordExecution(store, u);
    const stored = await storedIds(u);
    const second = relay('burst');
    t.teardown(() => second.close());
    await second.start();
    await waitFor('the burst relayed', () => stored.every((id) => heard.ids().has(id)), WAIT_MS);
    t.same(
      heard.seen.map((s) => s.revision),
      stored.map((_, i) => i),
      'each revision once, in order',
    );
    // The checkpoint written on close covers everything published: a relay started after it
    // publishes only what comes next.
    await second.close();
    const third = relay('burst');
    await third.start();
    t.teardown(() => third.close());
    await following(third, 'the third relay');
    await recordExecution(store, u);
    const after = await storedIds(u);
    await waitFor('the next execution relayed', () => after.every((id) => heard.ids().has(id)), WAIT_MS);
    await nc.flush();
    await listener.flush();
    t.equal(third.published, 3, 'the next relay published only the new execution');
    t.equal(heard.seen.length, after.length, 'no event published twice');
  },
);

t.test('a relay keeps no event it has relayed: its memory does not grow with the history', async (t) => {
  // The store's subscription as the relay reads it, each event it hands out watched by a WeakRef.
  const handedOut: Array<WeakRef<RecordedEvent>> = [];
  const watched = new Proxy(store, {
    get(target, key) {
      if (key !== 'subscribe') return bound(target, key);
      return (options: SubscribeOptions): Subscription => {
        const subscription = target.subscribe(options);
        return new Proxy(subscription, {
          get(s, k) {
            if (k !== Symbol.asyncIterator) return bound(s, k);
            return () => {
              const it = s[Symbol.asyncIterator]();
              return {
                next: async () => {
                  const r = await it.next();
                  if (!r.done) handedOut.push(new WeakRef(r.value));
                  return r;
                },
                return: async (value?: unknown) => (await it.return?.(value)) ?? { done: true, value },
              };
            };
          },
        });
      };
    },
  });
  const r = new EventRelay({
    store: watched,
    nc,
    connectionString: db.url,
    log,
    name: 'memory',
    lockPollMs: 100,
    checkpointMs: 50,
  });
  await r.start();
  t.teardown(() => r.close());
  await following(r);
  const u = user();
  const heard = listen(u);
  t.teardown(() => heard.stop());
  // Four times the store's read page (500 events): a subscription may still hold its last page
  // (bounded); the leak held every event.
  for (let i = 0; i < 700; i++) await recordExecution(store, u);
  await waitFor('2,100 events relayed', () => heard.seen.length >= 2_100, WAIT_MS);

  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  await new Promise((resolve) => setImmediate(resolve));
  gc();
  const alive = handedOut.filter((ref) => ref.deref() !== undefined).length;
  t.ok(handedOut.length >= 2_100, `the relay read the events (${handedOut.length})`);
  t.ok(
    alive <= 500,
    `after a collection, at most a page of them is still held (${alive} of ${handedOut.length})`,
  );
});

function bound(target: object, key: string | symbol): unknown {
  const value: unknown = Reflect.get(target, key);
  return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
}
