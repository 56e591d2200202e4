import t from 'tap';
import { executionIdFor, type Notification } from '../../contracts/index.ts';
import type { InterimAnswer } from '../../lib/clients/agent.ts';
import { loadConfig } from '../../lib/config.ts';
import { startNotifier } from '../notifier/app.ts';
import { NotifierEnv } from '../notifier/config.ts';
import { subscribe } from '../notifier/test-client.ts';
import { harness } from './test/harness.ts';

/**
 * Progress end to end: a tool's `ctx.progress` reaches the agent that asked for it (interim
 * answers on its inbox) and the user's WebSocket clients (the notifier, started in process, fed by
 * `toolbus.progress.<userId>`), in order, tied to the execution and its correlation id, and never
 * another user's sockets. Progress is not stored: a client that connects afterwards sees the
 * events, not the progress.
 */

type Progress = Extract<Notification, { kind: 'progress' }>;
const progressOf = (received: Notification[]) => received.filter((n): n is Progress => n.kind === 'progress');

t.test('progress reaches the agent and the user’s sockets, in order, and no one else’s', async (t) => {
  const h = await harness(t);
  await h.start({}, { progressIntervalMs: 50 });
  const notifier = await startNotifier(
    loadConfig(NotifierEnv, {
      NODE_ENV: 'test',
      LOG_LEVEL: 'warn',
      NATS_URL: h.nats.url,
      REDIS_URL: h.redis.url,
      DATABASE_URL: h.databaseUrl,
      JWT_SECRET: h.config.JWT_SECRET,
      NOTIFIER_PORT: '0',
    }),
    { store: h.store, logStream: { write: () => true } },
  );
  t.teardown(() => notifier.close());

  const alice = await h.token('alice');
  const bob = await h.token('bob');
  const aliceTab1 = await subscribe(notifier.address, alice);
  const aliceTab2 = await subscribe(notifier.address, alice);
  const bobTab = await subscribe(notifier.address, bob);
  t.teardown(() => [aliceTab1, aliceTab2, bobTab].forEach((c) => c.ws.close()));

  const interim: InterimAnswer[] = [];
  const answer = await h.agent.execute(
    'progress',
    { steps: 6, delayMs: 120 },
    { token: alice, requestId: 'p-1', correlationId: 'corr-p', onProgress: (a) => interim.push(a) },
  );
  t.match(answer, { status: 'completed', result: { steps: 6 } });
  const executionId = executionIdFor('alice', 'p-1');
  const expected = [1, 2, 3, 4, 5, 6].map((i) => ({
    kind: 'progress' as const,
    userId: 'alice',
    executionId,
    correlationId: 'corr-p',
    fraction: i / 6,
    message: `step ${i} of 6`,
  }));

  // The agent: requested, executing, then every step in order, before the terminal answer.
  t.strictSame(
    interim.map((a) => a.status),
    ['requested', 'executing', 'progress', 'progress', 'progress', 'progress', 'progress', 'progress'],
  );
  t.strictSame(
    interim.filter((a) => a.status === 'progress'),
    expected.map(({ fraction, message }) => ({
      status: 'progress',
      requestId: 'p-1',
      executionId,
      correlationId: 'corr-p',
      fraction,
      message,
    })),
    'each step, in order, tied to the execution and its correlation id',
  );

  // Both of alice's sockets: the same progress, in order, and the events.
  for (const tab of [aliceTab1, aliceTab2]) {
    await tab.waitFor('the terminal event', () =>
      tab.events().some((e) => e.name === 'tool_completed' && e.event.metadata.executionId === executionId),
    );
    t.strictSame(progressOf(tab.received), expected, 'each step, in order, once');
  }
  // Bob's socket: nothing of alice's.
  const bobsOwn = await h.agent.execute(
    'progress',
    { steps: 2, delayMs: 60 },
    { token: bob, requestId: 'p-bob' },
  );
  t.equal(bobsOwn.status, 'completed');
  await bobTab.waitFor('bob’s own terminal event', () =>
    bobTab.events().some((e) => e.name === 'tool_completed'),
  );
  t.ok(
    bobTab.received.every((n) => !('userId' in n) || n.userId === 'bob' || n.kind === 'ready'),
    'bob receives only his own notifications',
  );
  t.strictSame(
    progressOf(bobTab.received).map((p) => [p.userId, p.fraction]),
    [
      ['bob', 0.5],
      ['bob', 1],
    ],
    "bob's socket got his own progress and none of alice's",
  );
  t.notOk(
    progressOf(aliceTab1.received).some((p) => p.userId !== 'alice'),
    "alice's socket got none of bob's",
  );

  // Progress is not stored: a socket opened afterwards gets the events replayed, no progress.
  const late = await subscribe(notifier.address, alice);
  t.teardown(() => late.ws.close());
  t.equal(late.events().filter((e) => e.event.metadata.executionId === executionId).length, 3);
  t.equal(progressOf(late.received).length, 0, 'no past progress is replayed');
});

t.test('the rate limit keeps progress increasing and delivers the last step', async (t) => {
  const h = await harness(t);
  await h.start({}, { progressIntervalMs: 1_000 });
  const token = await h.token('rita');
  const fractions: number[] = [];
  const answer = await h.agent.execute(
    'progress',
    { steps: 20, delayMs: 5 },
    { token, requestId: 'rl-1', onProgress: (a) => a.status === 'progress' && fractions.push(a.fraction) },
  );
  t.equal(answer.status, 'completed');
  t.ok(fractions.length < 20, `fewer updates than steps (${fractions.length})`);
  t.ok(
    fractions.every((f, i) => i === 0 || f > fractions[i - 1]!),
    'strictly increasing',
  );
  t.equal(fractions.at(-1), 1, 'the final 1.0 is not lost to the rate limit');
});
