/**
 * Scenario 1 — a single tool execution, seen from both ends.
 *
 * Proves, against the running stack (dispatcher, projector, notifier as processes; real NATS,
 * Redis, PostgreSQL): an agent asks for a tool over NATS and gets exactly one terminal answer with
 * the tool's result; the user's WebSocket receives `tool_requested`, `tool_executing` and
 * `tool_completed` for that execution, in revision order, carrying the same execution and
 * correlation ids and the same result; progress reaches both the agent and the socket; the store
 * holds exactly the events the socket showed.
 */
import t from 'tap';
import type { Notification } from '../../contracts/index.ts';
import type { InterimAnswer } from '../../lib/clients/agent.ts';
import { subscribe } from '../../services/notifier/test-client.ts';
import { startTestStack } from '../support/stack.ts';
import { eventsOf, newUserId, terminal, typesOf, userEvents } from './support.ts';

const s = await startTestStack(t);

t.test('an execution reaches the agent and the user socket', async (t) => {
  const userId = newUserId('single');
  const token = await s.token(userId);
  const socket = await subscribe(s.url('notifier'), token);
  t.teardown(() => socket.ws.close());
  t.same(
    socket.received.find((n) => n.kind === 'ready'),
    { kind: 'ready', userId, revision: -1 },
    'a new user starts from an empty stream',
  );

  const interim: InterimAnswer[] = [];
  const values = Array.from({ length: 100 }, (_, i) => i + 1);
  const answer = terminal(
    await s.agent.execute(
      'dataset_stats',
      { columns: { latency: values } },
      { token, correlationId: 'conv-42', onProgress: (a) => interim.push(a) },
    ),
  );

  t.equal(answer.status, 'completed', 'the agent gets a completed answer');
  if (answer.status !== 'completed') return;
  const stats = (answer.result as { rowCount: number; columns: Record<string, Record<string, number>> })
    .columns['latency'];
  t.equal((answer.result as { rowCount: number }).rowCount, 100, 'the result is the tool output');
  const near = (actual: number | undefined, expected: number) =>
    actual !== undefined && Math.abs(actual - expected) < 1e-9;
  t.ok(near(stats?.['p50'], 50.5), `p50 of 1..100 is 50.5 (${stats?.['p50']})`);
  t.ok(near(stats?.['p90'], 90.1), `p90 of 1..100 is 90.1 (${stats?.['p90']})`);
  t.ok(near(stats?.['p99'], 99.01), `p99 of 1..100 is 99.01 (${stats?.['p99']})`);
  t.ok(near(stats?.['mean'], 50.5), `mean of 1..100 is 50.5 (${stats?.['mean']})`);
  t.equal(answer.correlationId, 'conv-42', 'the answer carries the correlation id the agent chose');
  t.same(
    interim.map((a) => a.status),
    ['requested', 'executing'],
    'the agent sees requested, then executing, before the result',
  );

  await socket.waitFor('the terminal notification', () =>
    socket.events().some((n) => n.name === 'tool_completed'),
  );
  const notes = socket.events();
  t.same(
    notes.map((n) => n.name),
    ['tool_requested', 'tool_executing', 'tool_completed'],
    'the socket receives the three notifications, in order',
  );
  t.same(
    notes.map((n) => n.revision),
    [0, 1, 2],
    'revisions are contiguous from 0',
  );
  for (const n of notes) {
    t.equal(n.userId, userId, `${n.name} names the user`);
    t.equal(n.event.metadata.executionId, answer.executionId, `${n.name} is this execution`);
    t.equal(n.event.metadata.correlationId, 'conv-42', `${n.name} carries the correlation id`);
  }
  const executing = notes[1]!.event;
  t.ok(executing.type === 'ToolExecuting' && executing.data.runner.length > 0, 'executing names its runner');
  const completed = notes[2]!.event;
  t.same(completed.type === 'ToolCompleted' ? completed.data.result : null, answer.result, 'same result');
  t.equal(
    notes[2]!.event.metadata.causationId,
    notes[1]!.event.id,
    'the completion was caused by the executing event',
  );

  const stored = await userEvents(s.store, userId);
  t.same(typesOf(stored), ['ToolRequested', 'ToolExecuting', 'ToolCompleted'], 'the store holds the three');
  t.same(
    stored.map((e) => e.event.id),
    notes.map((n) => n.event.id),
    'the socket showed exactly the stored events',
  );
  t.same(stored[0]!.event.data, {
    tool: 'dataset_stats',
    version: '1.0.0',
    args: { columns: { latency: values } },
    redacted: [],
  });
  t.equal(eventsOf(stored, answer.executionId).length, 3, 'one execution');
});

t.test('progress reaches the agent and the socket, then the result', async (t) => {
  const userId = newUserId('progress');
  const token = await s.token(userId);
  const socket = await subscribe(s.url('notifier'), token);
  t.teardown(() => socket.ws.close());

  const interim: InterimAnswer[] = [];
  const answer = terminal(
    await s.agent.execute(
      'progress',
      { steps: 4, delayMs: 150 },
      { token, onProgress: (a) => interim.push(a) },
    ),
  );
  t.equal(answer.status, 'completed');
  t.same(answer.status === 'completed' ? answer.result : null, { steps: 4 });

  const fractions = interim
    .filter((a) => a.status === 'progress')
    .map((a) => (a as { fraction: number }).fraction);
  t.ok(fractions.length >= 1, `the agent saw progress (${fractions.join(', ')})`);
  t.same(
    [...fractions].sort((a, b) => a - b),
    fractions,
    'agent progress only goes up',
  );

  await socket.waitFor('the terminal notification', () =>
    socket.events().some((n) => n.name === 'tool_completed'),
  );
  const progress = socket.received.filter(
    (n): n is Extract<Notification, { kind: 'progress' }> => n.kind === 'progress',
  );
  t.ok(progress.length >= 1, `the socket saw progress (${progress.length})`);
  t.ok(
    progress.every((p) => p.executionId === answer.executionId && p.userId === userId),
    'progress names this execution and user',
  );
  const order = socket.received
    .filter((n) => n.kind === 'progress' || n.kind === 'event')
    .map((n) => (n.kind === 'event' ? n.name : 'progress'));
  const firstProgress = order.indexOf('progress');
  t.ok(
    firstProgress > order.indexOf('tool_executing') &&
      order.lastIndexOf('progress') < order.indexOf('tool_completed'),
    `progress comes between executing and completed (${order.join(' ')})`,
  );
});
