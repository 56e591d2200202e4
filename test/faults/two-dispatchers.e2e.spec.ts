import { connectionIdentity } from '../../lib/nats.ts';
import t from 'tap';
import { subjects } from '../../contracts/index.ts';
import { checkNothingLost } from './checker.ts';
import { metric, startFaultStack } from './harness.ts';
import { Ledger, startLoad, type RequestSpec } from './load.ts';
import { makeUsers, rawRequest, runners } from './scenario.ts';
import { startWatchers } from './watchers.ts';

/**
 * Fault 6: two dispatcher processes append to the same user's stream at once: one user hammers
 * with many requests in flight, and some request ids are sent twice at the same moment under two
 * message ids, so that both processes may take the same execution. Appends across processes are
 * serialized only by the expected revision; the loser of each race must read what the winner
 * wrote and decide again. The stream stays one contiguous, chained history with one terminal
 * event per execution.
 */

t.test('two dispatchers appending to one user stream at once keep it whole', async (t) => {
  const fs = await startFaultStack(t, {
    env: {
      USER_CONCURRENCY: '100',
      RATE_LIMIT_PER_SEC: '10000',
      RATE_LIMIT_BURST: '10000',
      DISPATCH_CONCURRENCY: '8',
    },
  });
  const second = await fs.extra('dispatcher');
  const [hammer, quiet] = await makeUsers(fs, 'td', 2);
  const watchers = startWatchers(fs.url('notifier'), [hammer!, quiet!]);
  t.teardown(() => Promise.all(watchers.map((w) => w.stop())));
  const ledger = new Ledger();
  const mix = (i: number, rand: () => number): RequestSpec =>
    rand() < 0.5
      ? { tool: 'noop', args: {} }
      : rand() < 0.5
        ? { tool: 'echo', args: { i } }
        : { tool: 'sleep_idempotent', args: { ms: Math.floor(rand() * 100) } };
  const load = startLoad({
    agent: fs.agent,
    ledger,
    users: [hammer!],
    concurrency: 12,
    seed: 61,
    mix,
    pauseMs: 0,
  });
  const calm = startLoad({ agent: fs.agent, ledger, users: [quiet!], concurrency: 1, seed: 62, prefix: 'q' });

  // The same request id twice at once, under two message ids: JetStream keeps both.
  const twins = await Promise.all(
    Array.from({ length: 20 }, async (_, i) => {
      const requestId = `twin-${i}`;
      ledger.entry(hammer!.userId, requestId, 'echo', { twin: i });
      const both = await Promise.all(
        ['a', 'b'].map((side) =>
          rawRequest(fs.nc, {
            subject: subjects.request(hammer!.userId, connectionIdentity(fs.nc)),
            body: { requestId, tool: 'echo', args: { twin: i } },
            token: hammer!.token,
            msgId: `${hammer!.userId}:${requestId}:${side}`,
            timeoutMs: 30_000,
          }),
        ),
      );
      for (const a of both) if (a) ledger.answer(hammer!.userId, requestId, a);
      return both;
    }),
  );
  t.ok(
    twins.every(([a, b]) => a !== null && b !== null),
    'both deliveries of each twin request are answered',
  );
  await load.answersAfter(300, 90_000);
  await Promise.all([load.stop(), calm.stop()]);

  const ran = await runners(fs.store);
  t.equal(ran.size, 2, `both processes ran tools (${[...ran].map(([r, n]) => `${r}: ${n}`).join(', ')})`);
  const conflicts =
    (await metric(fs.url('dispatcher'), 'toolbus_append_conflicts_total')) +
    (await metric(second.services.dispatcher.url, 'toolbus_append_conflicts_total'));
  t.ok(conflicts > 0, `the two processes really raced for the stream (${conflicts} append conflicts)`);

  await checkNothingLost(t, {
    store: fs.store,
    pool: fs.pool,
    ledger,
    watchers,
  });
  t.strictSame(fs.unexpectedExits(), [], 'no service process ended');
});
