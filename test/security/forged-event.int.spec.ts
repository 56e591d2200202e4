import { randomUUID } from 'node:crypto';
import t from 'tap';
import { startNotifierFixture } from './notifier-fixture.ts';
import { notificationName, subjects, type Notification, type ToolEvent } from '../../contracts/index.ts';
import { connectNats } from '../../lib/nats.ts';
import { type Notifier } from '../../services/notifier/app.ts';
import { subscribe, type TestClient } from '../../services/notifier/test-client.ts';
import { readUserEvents, recordExecution } from '../support/events.ts';

/**
 * Attack: a client that may publish on `events.user.<victim>` (here a plain test connection, as if
 * the permissions let it) publishes a forged event with the next revision, and one with a revision
 * that exists but other content. Before, the victim's socket showed the first and then dropped the
 * real event of that revision as a duplicate. Now a NATS event only makes the notifier read the
 * store: neither forged event is shown, and the real one arrives once, in order.
 */
// Only a NATS event may make the notifier read the store during these tests.
const {
  notifier,
  store,
  nats,
  user,
  token: tokenOf,
} = await startNotifierFixture(t, {
  NOTIFIER_TAIL_CHECK_MS: '600000',
});
const attacker = await connectNats(nats.url, 'forged-event-attacker');
const dispatcher = await connectNats(nats.url, 'forged-event-dispatcher');
t.teardown(async () => {
  await attacker.close();
  await dispatcher.close();
});
const counter = async (n: Notifier, name: string) =>
  (await n.app.metrics.getSingleMetric(name)!.get()).values.reduce((sum, v) => sum + v.value, 0);
const ids = (c: TestClient, userId: string) =>
  c
    .events()
    .filter((e) => e.userId === userId)
    .map((e) => e.event.id);
const storedIds = async (userId: string) => (await readUserEvents(store, userId)).map((e) => e.event.id);

function forged(userId: string, revision: number, event: ToolEvent): string {
  const n: Notification = { kind: 'event', name: notificationName(event.type), userId, revision, event };
  return JSON.stringify(n);
}

/** A completed event that looks like the victim's, with its own id and a result the attacker chose. */
function forgedCompletion(like: ToolEvent): ToolEvent {
  return {
    ...like,
    id: randomUUID(),
    type: 'ToolCompleted',
    data: { result: { forged: true }, redacted: [], durationMs: 1, cached: false },
  };
}

/**
 * Resolves once the notifier has handled every message the attacker published before: a progress
 * message for an unknown execution, sent after them on the same connection, is dropped only after
 * the store read that the forged events caused.
 */
async function attackerMessagesHandled(userId: string): Promise<void> {
  const before = await counter(notifier, 'toolbus_notifier_progress_dropped_total');
  const probe: Notification = {
    kind: 'progress',
    userId,
    executionId: randomUUID(),
    correlationId: 'probe',
    fraction: 0,
  };
  attacker.publish(subjects.progress(userId), JSON.stringify(probe));
  const deadline = Date.now() + 20_000;
  while ((await counter(notifier, 'toolbus_notifier_progress_dropped_total')) === before) {
    if (Date.now() > deadline) throw new Error('timed out waiting for the probe to be dropped');
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

t.test('a forged event with the next revision is never shown; the real one is, once', async (t) => {
  const victim = user();
  const socket = await subscribe(notifier.address, await tokenOf(victim));
  const admin = await subscribe(notifier.address, await tokenOf('admin-forged', ['admin']), {
    userId: '*',
  });
  const first = await recordExecution(store, victim, { nats: dispatcher });
  await socket.waitFor('the first execution', () => socket.events().length === 3);
  const mismatchedBefore = await counter(notifier, 'toolbus_notifier_mismatched_events_total');

  // Revision 3 does not exist yet: the forged event claims it.
  attacker.publish(subjects.events(victim), forged(victim, 3, forgedCompletion(first.events[2]!)));
  await attackerMessagesHandled(victim);
  t.equal(socket.events().length, 3, 'the forged event was not shown to the victim');

  // The real event of revision 3 (and the rest of its execution) is stored, then published.
  await recordExecution(store, victim, { nats: dispatcher });
  await socket.waitFor('the second execution', () => socket.events().length >= 6);
  t.same(socket.revisions(), [0, 1, 2, 3, 4, 5], 'every revision once, in order');
  t.same(ids(socket, victim), await storedIds(victim), 'exactly the stored events');
  t.notOk(
    socket.events().some((e) => JSON.stringify(e.event).includes('forged')),
    'no forged content reached the socket',
  );

  await admin.waitFor('the second execution, for the admin', () => ids(admin, victim).length >= 6);
  t.same(ids(admin, victim), await storedIds(victim), 'the admin watching everyone saw only stored events');
  t.ok(
    (await counter(notifier, 'toolbus_notifier_mismatched_events_total')) > mismatchedBefore,
    'the forged announcement was counted once the store was read',
  );
  socket.ws.close();
  admin.ws.close();
});

t.test('a forged event at an existing revision, with other content, is never shown', async (t) => {
  const victim = user();
  const socket = await subscribe(notifier.address, await tokenOf(victim));
  const run = await recordExecution(store, victim, { nats: dispatcher });
  await socket.waitFor('the execution', () => socket.events().length === 3);
  const stored = await storedIds(victim);

  // Same id as the stored revision 2, other content; and another id at revision 1.
  const sameId = {
    ...run.events[2]!,
    data: { result: { forged: true }, redacted: [], durationMs: 1, cached: false },
  };
  attacker.publish(subjects.events(victim), forged(victim, 2, sameId as ToolEvent));
  attacker.publish(subjects.events(victim), forged(victim, 1, forgedCompletion(run.events[1]!)));
  await attackerMessagesHandled(victim);

  await recordExecution(store, victim, { nats: dispatcher });
  await socket.waitFor('the next execution', () => socket.events().length >= 6);
  t.same(socket.revisions(), [0, 1, 2, 3, 4, 5], 'every revision once, in order');
  t.same(ids(socket, victim).slice(0, 3), stored);
  t.same(ids(socket, victim), await storedIds(victim), 'exactly the stored events');
  t.notOk(
    socket.events().some((e) => JSON.stringify(e.event).includes('forged')),
    'no forged content reached the socket',
  );

  // A socket that connects now replays the store: the forged events left no trace.
  const later = await subscribe(notifier.address, await tokenOf(victim));
  t.same(ids(later, victim), await storedIds(victim));
  socket.ws.close();
  later.ws.close();
});

t.test('a forged event for a user nobody watches before it is stored is not shown to an admin', async (t) => {
  // The admin's feed for this user starts from the forged announcement: it still reads the store.
  const victim = user();
  const admin = await subscribe(notifier.address, await tokenOf('admin-forged-2', ['admin']), {
    userId: '*',
  });
  const run = await recordExecution(store, victim); // stored, not published
  attacker.publish(subjects.events(victim), forged(victim, 3, forgedCompletion(run.events[2]!)));
  await attackerMessagesHandled(victim);
  t.equal(ids(admin, victim).length, 0, 'nothing shown for the forged revision');

  await recordExecution(store, victim, { nats: dispatcher });
  await admin.waitFor('the real events', () => ids(admin, victim).length >= 3);
  t.same(ids(admin, victim), (await storedIds(victim)).slice(3), 'the stored events from revision 3 on');
  t.same(
    admin
      .events()
      .filter((e) => e.userId === victim)
      .map((e) => e.revision),
    [3, 4, 5],
  );
  admin.ws.close();
});
