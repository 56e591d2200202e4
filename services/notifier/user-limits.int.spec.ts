import { randomUUID } from 'node:crypto';
import t from 'tap';
import { userStream } from '../../contracts/index.ts';
import { signToken } from '../../lib/auth.ts';
import { loadConfig } from '../../lib/config.ts';
import { createPostgresEventStore } from '../../lib/eventstore/postgres.ts';
import type { EventStore, ReadStreamOptions } from '../../lib/eventstore/types.ts';
import { connectNats } from '../../lib/nats.ts';
import { readUserEvents, recordExecution } from '../../test/support/events.ts';
import { createTestDatabase } from '../../test/support/postgres.ts';
import { startNats, startRedis } from '../../test/support/processes.ts';
import { CLOSE_TRY_AGAIN_LATER, startNotifier, type Notifier } from './app.ts';
import { NotifierEnv } from './config.ts';
import { openClient, subscribe, ticketFor, waitFor, type TestClient } from './test-client.ts';

/**
 * What one user can take from the notifier: a bounded number of authenticated sockets, and one
 * store read at a time for their replays (a few in all), so that a user replaying a long stream
 * on many sockets neither starves other users nor loses, repeats or reorders anything for
 * themselves. Real NATS (owned by this file), Redis and PostgreSQL; the store is the real one,
 * wrapped only to count (and, where a test says so, hold back) the forward reads of a stream.
 */
const SECRET = 'user-limits-test-secret-that-is-long-enough-0123456';
const db = await createTestDatabase(t);
const nats = await startNats(t);
const redis = await startRedis(t);
const realStore = await createPostgresEventStore({ connectionString: db.url });
const publisher = await connectNats(nats.url, 'user-limits-test');

/**
 * Catch-up reads (forward reads of a stream's history: from below `history`, where the stream
 * ended when the test wrote it; the feed's own reads start at the end) of each stream in flight,
 * their peak, and streams whose catch-up reads wait for a release.
 */
const reads = {
  history: new Map<string, number>(),
  inFlight: new Map<string, number>(),
  peak: new Map<string, number>(),
  total: 0,
  peakTotal: 0,
  held: new Map<string, { promise: Promise<void>; release: () => void }>(),
};
function hold(userId: string): () => void {
  let release!: () => void;
  const promise = new Promise<void>((resolve) => (release = resolve));
  reads.held.set(userStream(userId), { promise, release });
  return () => {
    reads.held.delete(userStream(userId));
    release();
  };
}
const peakOf = (userId: string) => reads.peak.get(userStream(userId)) ?? 0;
function readStreamCounted(stream: string, options: ReadStreamOptions = {}) {
  const from = typeof options.fromRevision === 'number' ? options.fromRevision : 0;
  if ((options.direction ?? 'forwards') !== 'forwards' || from >= (reads.history.get(stream) ?? 0))
    return realStore.readStream(stream, options);
  return (async function* () {
    const now = (reads.inFlight.get(stream) ?? 0) + 1;
    reads.inFlight.set(stream, now);
    reads.peak.set(stream, Math.max(reads.peak.get(stream) ?? 0, now));
    reads.total++;
    reads.peakTotal = Math.max(reads.peakTotal, reads.total);
    try {
      await reads.held.get(stream)?.promise;
      yield* realStore.readStream(stream, options);
    } finally {
      reads.inFlight.set(stream, reads.inFlight.get(stream)! - 1);
      reads.total--;
    }
  })();
}
const store: EventStore = new Proxy(realStore, {
  get(target, prop) {
    if (prop === 'readStream') return readStreamCounted;
    const value: unknown = Reflect.get(target, prop, target);
    return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
  },
});

const env = {
  NODE_ENV: 'test',
  LOG_LEVEL: 'warn',
  NATS_URL: nats.url,
  REDIS_URL: redis.url,
  JWT_SECRET: SECRET,
  NOTIFIER_PORT: '0',
  NOTIFIER_TAIL_CHECK_MS: '600000',
};
t.teardown(async () => {
  await publisher.close();
  await realStore.close();
});
async function notifierWith(
  t: { teardown(fn: () => Promise<void>): void },
  extra: Record<string, string>,
): Promise<Notifier> {
  const n = await startNotifier(loadConfig(NotifierEnv, { ...env, ...extra }), { store });
  t.teardown(() => n.close());
  return n;
}

const user = () => `u${randomUUID().slice(0, 8)}`;
const tokenOf = (sub: string) => signToken(SECRET, { sub }, '1h');
const range = (n: number, from = 0) => Array.from({ length: n }, (_, i) => from + i);
const storedIds = async (userId: string) => (await readUserEvents(realStore, userId)).map((e) => e.event.id);
const ids = (c: TestClient) => c.events().map((e) => e.event.id);
const refusals = async (n: Notifier, reason: string) =>
  (await n.app.metrics.getSingleMetric('toolbus_notifier_refused_total')!.get()).values.find(
    (v) => v.labels['reason'] === reason,
  )?.value ?? 0;
const isReady = (c: TestClient) => c.received.some((n) => n.kind === 'ready');

async function history(userId: string, executions: number): Promise<void> {
  for (let i = 0; i < executions; i++) await recordExecution(realStore, userId);
  reads.history.set(userStream(userId), executions * 3);
}

/** Opens sockets with tickets, without subscribing yet. */
async function openSockets(address: string, token: string, count: number): Promise<TestClient[]> {
  const clients: TestClient[] = [];
  for (let i = 0; i < count; i++)
    clients.push(await openClient(address, { ticket: await ticketFor(address, token) }));
  return clients;
}

/** Opens a socket without a ticket, sends the auth message and subscribes. */
async function viaAuthMessage(address: string, token: string): Promise<TestClient> {
  const client = await openClient(address);
  client.send({ type: 'auth', token });
  client.send({ type: 'subscribe' });
  await client.waitFor('ready or a close', () => isReady(client) || client.isClosed());
  return client;
}

t.test(
  'a user beyond NOTIFIER_MAX_SOCKETS_PER_USER is refused with 1013; the open ones keep working',
  async (t) => {
    const notifier = await notifierWith(t, { NOTIFIER_MAX_SOCKETS_PER_USER: '3' });
    const alice = user();
    const tk = await tokenOf(alice);
    const refusedBefore = await refusals(notifier, 'user_sockets');
    const open = [
      await subscribe(notifier.address, tk),
      await subscribe(notifier.address, tk),
      await viaAuthMessage(notifier.address, tk),
    ];
    t.notOk(open[2]!.isClosed(), 'a socket authenticated by message counts like one with a ticket');

    const overTicket = await openClient(notifier.address, { ticket: await ticketFor(notifier.address, tk) });
    overTicket.send({ type: 'subscribe' });
    await overTicket.waitFor(
      'a close (or, wrongly, ready)',
      () => overTicket.isClosed() || isReady(overTicket),
    );
    const closedTicket = overTicket.isClosed() ? await overTicket.closed : null;
    t.same(
      closedTicket,
      { code: CLOSE_TRY_AGAIN_LATER, reason: 'TOO_MANY_SOCKETS' },
      'a fourth (ticket): 1013',
    );
    t.match(overTicket.received, [{ kind: 'error', code: 'TOO_MANY_SOCKETS' }], 'told why before the close');
    t.equal(overTicket.events().length, 0, 'and sent nothing else');

    const overAuth = await viaAuthMessage(notifier.address, tk);
    t.same(
      overAuth.isClosed() ? await overAuth.closed : null,
      { code: CLOSE_TRY_AGAIN_LATER, reason: 'TOO_MANY_SOCKETS' },
      'a fourth (auth): 1013',
    );
    t.match(overAuth.received, [{ kind: 'error', code: 'TOO_MANY_SOCKETS' }]);
    t.equal((await refusals(notifier, 'user_sockets')) - refusedBefore, 2, 'both refusals are counted');

    // A fresh auth message on an open socket extends it: it takes no second place.
    open[0]!.send({ type: 'auth', token: await tokenOf(alice) });
    open[0]!.send({ type: 'ping' });
    await open[0]!.waitFor(
      'pong',
      () => open[0]!.received.some((n) => n.kind === 'pong') || open[0]!.isClosed(),
    );
    t.notOk(open[0]!.isClosed(), 'extending a socket at the cap is not refused');

    await recordExecution(realStore, alice, { nats: publisher });
    for (const c of open) {
      await c.waitFor('the live execution', () => c.events().length >= 3);
      t.same(c.revisions(), [0, 1, 2], 'the open sockets still get their live events');
      t.notOk(c.isClosed());
    }
    const bob = await subscribe(notifier.address, await tokenOf(user()));
    t.notOk(bob.isClosed(), 'another user is not affected');

    // Closing one gives its place back.
    const socketsBefore = notifier.stats().sockets;
    open[1]!.ws.close();
    await waitFor('the closed socket to leave', () => notifier.stats().sockets === socketsBefore - 1);
    const again = await subscribe(notifier.address, tk);
    t.same(again.revisions(), [0, 1, 2], 'a new socket is accepted once one closed, and replays');
    for (const c of [open[0]!, open[2]!, again, bob]) c.ws.close();
  },
);

t.test(
  'many sockets of one user replaying a long stream at once: one store read at a time, each gets everything in order; another user stays live',
  async (t) => {
    const notifier = await notifierWith(t, {});
    const alice = user();
    const executions = 400; // 1200 events: several pages for each replay
    const total = executions * 3;
    await history(alice, executions);
    const bob = user();
    const bobClient = await subscribe(notifier.address, await tokenOf(bob));

    const sockets = 24;
    const clients = await openSockets(notifier.address, await tokenOf(alice), sockets);
    const release = hold(alice); // alice's first catch-up read waits until released
    for (const c of clients) c.send({ type: 'subscribe', afterRevision: -1 });
    const catchUp = () => notifier.stats().catchUpReads;
    await waitFor('every replay at its first read', () => catchUp().running + catchUp().queued === sockets);
    t.same(catchUp(), { running: 1, queued: sockets - 1 }, 'one replay reads, the others wait their turn');
    t.equal(peakOf(alice), 1, 'one store read of the user at a time');

    // While alice's replays are under way (one read held, the rest queued), bob's live event arrives.
    await recordExecution(realStore, bob, { nats: publisher });
    await bobClient.waitFor('bob’s live execution', () => bobClient.events().length >= 3);
    t.same(bobClient.revisions(), [0, 1, 2], 'the other user’s live events are delivered during the replays');
    t.ok(
      clients.every((c) => !isReady(c)),
      'alice’s replays were still waiting then',
    );

    release();
    for (const c of clients) {
      await c.waitFor('the whole history', () => isReady(c) || c.isClosed(), 60_000);
      t.notOk(c.isClosed(), 'still open');
    }
    const stored = await storedIds(alice);
    t.ok(
      clients.every((c) => JSON.stringify(c.revisions()) === JSON.stringify(range(total))),
      `every socket got revisions 0..${total - 1}, once each, in order`,
    );
    t.ok(
      clients.every((c) => JSON.stringify(ids(c)) === JSON.stringify(stored)),
      'exactly the stored events',
    );
    t.ok(
      clients.every((c) => c.received.find((n) => n.kind === 'ready')?.revision === total - 1),
      'ready names the last revision',
    );
    t.equal(peakOf(alice), 1, 'never more than one store read of the user in flight');

    await recordExecution(realStore, alice, { nats: publisher });
    for (const c of clients) {
      await c.waitFor('the live execution after the replay', () => c.events().length >= total + 3);
      t.same(c.revisions(), range(total + 3), 'then live events, without a gap or a duplicate');
    }
    t.same(notifier.stats().catchUpReads, { running: 0, queued: 0 }, 'no turn left taken');
    for (const c of [...clients, bobClient]) c.ws.close();
  },
);

t.test(
  'NOTIFIER_MAX_CATCHUP_READS bounds the replays of all users together; a socket closed while waiting gives its turn up',
  async (t) => {
    const notifier = await notifierWith(t, { NOTIFIER_MAX_CATCHUP_READS: '2' });
    const users = [user(), user(), user()];
    const executions = 150; // 450 events: two pages each
    for (const u of users) await history(u, executions);
    reads.peakTotal = reads.total;

    const releases = users.map(hold);
    const clients = new Map<string, TestClient[]>();
    for (const u of users) clients.set(u, await openSockets(notifier.address, await tokenOf(u), 2));
    const catchUp = () => notifier.stats().catchUpReads;
    // The first two users take both turns (one read each, held), their second sockets wait...
    for (const u of users.slice(0, 2)) for (const c of clients.get(u)!) c.send({ type: 'subscribe' });
    await waitFor('four replays at their first read', () => catchUp().running + catchUp().queued === 4);
    t.same(catchUp(), { running: 2, queued: 2 }, 'two read (one per user), two wait');
    // ...and so does the third user, though none of its reads runs: every turn is taken.
    for (const c of clients.get(users[2]!)!) c.send({ type: 'subscribe' });
    await waitFor('six replays at their first read', () => catchUp().running + catchUp().queued === 6);
    t.same(catchUp(), { running: 2, queued: 4 }, 'the third user waits too');
    t.ok(reads.peakTotal <= 2, `at most two catch-up reads in flight in all (${reads.peakTotal})`);

    // One waiting socket goes away: its turn is not taken when it comes.
    const gone = clients.get(users[2]!)![1]!;
    gone.ws.close();
    await gone.closed;

    for (const release of releases) release();
    const remaining = [...clients.values()].flat().filter((c) => c !== gone);
    for (const c of remaining) {
      await c.waitFor('the whole history', () => isReady(c) || c.isClosed(), 60_000);
      t.notOk(c.isClosed(), 'still open');
    }
    for (const u of users) {
      const stored = await storedIds(u);
      for (const c of clients.get(u)!.filter((c) => c !== gone)) {
        t.same(c.revisions(), range(executions * 3), `${u}: every revision once, in order`);
        t.same(ids(c), stored);
      }
      t.equal(peakOf(u), 1, `${u}: one read at a time`);
    }
    t.ok(reads.peakTotal <= 2, `never more than two in flight (${reads.peakTotal})`);
    await waitFor('every turn given back', () => notifier.stats().catchUpReads.queued === 0);
    t.same(notifier.stats().catchUpReads, { running: 0, queued: 0 });

    const late = await subscribe(notifier.address, await tokenOf(users[2]!));
    t.same(late.revisions(), range(executions * 3), 'a later socket of that user replays normally');
    for (const c of [...remaining, late]) c.ws.close();
  },
);
