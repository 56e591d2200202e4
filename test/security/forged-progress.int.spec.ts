import { randomUUID } from 'node:crypto';
import t from 'tap';
import { startNotifierFixture } from './notifier-fixture.ts';
import {
  envelopeEvents,
  notificationName,
  requestContext,
  subjects,
  userStream,
  type Notification,
} from '../../contracts/index.ts';
import { connectNats } from '../../lib/nats.ts';
import { toEventData } from '../../lib/toolEvents.ts';
import { subscribe, type TestClient } from '../../services/notifier/test-client.ts';
import { recordExecution, streamTail } from '../support/events.ts';

/**
 * Attack: progress forged on `toolbus.progress.<victim>` for an execution that is not running
 * (unknown, finished, or another user's). Progress is not stored, so the notifier shows it only
 * for an execution that the victim's stream holds as started (ToolExecuting) and not ended.
 */
const {
  notifier,
  store,
  nats,
  user,
  token: tokenOf,
} = await startNotifierFixture(t, {
  NOTIFIER_TAIL_CHECK_MS: '600000',
});
const bus = await connectNats(nats.url, 'forged-progress');
t.teardown(() => bus.close());
const dropped = async () =>
  (await notifier.app.metrics.getSingleMetric('toolbus_notifier_progress_dropped_total')!.get()).values[0]
    ?.value ?? 0;
const progressOf = (c: TestClient) =>
  c.received.filter((n): n is Extract<Notification, { kind: 'progress' }> => n.kind === 'progress');

function progress(userId: string, executionId: string, message: string): Notification {
  return { kind: 'progress', userId, executionId, correlationId: executionId, fraction: 0.5, message };
}

async function waitForDropped(atLeast: number): Promise<void> {
  const deadline = Date.now() + 20_000;
  while ((await dropped()) < atLeast) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${atLeast} dropped progress messages`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** Ends a running execution the way the dispatcher does: a ToolCompleted appended, then published. */
async function complete(userId: string, requestId: string): Promise<void> {
  const tail = await streamTail(store, userId);
  const [event] = envelopeEvents(
    [{ type: 'ToolCompleted', data: { result: { ok: true }, redacted: [], durationMs: 3, cached: false } }],
    requestContext(userId, requestId, () => new Date().toISOString()),
    tail.hash,
  );
  await store.append(userStream(userId), [toEventData(event!)], tail.revision);
  const n: Notification = {
    kind: 'event',
    name: notificationName(event!.type),
    userId,
    revision: tail.revision + 1,
    event: event!,
  };
  bus.publish(subjects.events(userId), JSON.stringify(n));
}

t.test('progress for an execution that is not running never reaches the socket', async (t) => {
  const victim = user();
  const other = user();
  const socket = await subscribe(notifier.address, await tokenOf(victim));
  const otherSocket = await subscribe(notifier.address, await tokenOf(other));
  const finished = await recordExecution(store, victim, { nats: bus });
  const othersRunning = await recordExecution(store, other, { nats: bus, outcome: 'executing' });
  await socket.waitFor('the finished execution', () => socket.events().length === 3);
  await otherSocket.waitFor('the other user’s running execution', () => otherSocket.events().length === 2);

  const before = await dropped();
  bus.publish(subjects.progress(victim), JSON.stringify(progress(victim, randomUUID(), 'unknown')));
  bus.publish(subjects.progress(victim), JSON.stringify(progress(victim, finished.executionId, 'finished')));
  bus.publish(
    subjects.progress(victim),
    JSON.stringify(progress(victim, othersRunning.executionId, 'another user’s')),
  );
  await waitForDropped(before + 3);
  t.same(progressOf(socket), [], 'none of them was shown');
  t.same(progressOf(otherSocket), [], 'nor to the user whose execution it names');
  socket.ws.close();
  otherSocket.ws.close();
});

t.test('progress for a running execution reaches the socket, and stops with its end', async (t) => {
  const u = user();
  const socket = await subscribe(notifier.address, await tokenOf(u));
  const running = await recordExecution(store, u, { nats: bus, outcome: 'executing' });
  // Published right after its ToolExecuting, before the socket has it: it waits for the store read.
  const first = progress(u, running.executionId, 'first');
  bus.publish(subjects.progress(u), JSON.stringify(first));
  await socket.waitFor('the first progress', () => progressOf(socket).length === 1);
  t.same(progressOf(socket), [first]);
  const order = socket.received.map((n) => (n.kind === 'event' ? n.name : n.kind));
  t.ok(
    order.indexOf('tool_executing') < order.indexOf('progress'),
    `progress comes after its tool_executing (${order.join(' ')})`,
  );

  await complete(u, running.requestId);
  await socket.waitFor('the completion', () => socket.events().length === 3);
  const before = await dropped();
  bus.publish(subjects.progress(u), JSON.stringify(progress(u, running.executionId, 'after the end')));
  await waitForDropped(before + 1);
  t.same(progressOf(socket), [first], 'progress after the end was dropped');
  socket.ws.close();
});

t.test('a socket that connects while an execution runs gets its progress', async (t) => {
  const u = user();
  const running = await recordExecution(store, u, { outcome: 'executing' }); // before anyone watches
  const socket = await subscribe(notifier.address, await tokenOf(u));
  const p = progress(u, running.executionId, 'still running');
  bus.publish(subjects.progress(u), JSON.stringify(p));
  await socket.waitFor('progress', () => progressOf(socket).length === 1);
  t.same(progressOf(socket), [p]);
  socket.ws.close();
});
