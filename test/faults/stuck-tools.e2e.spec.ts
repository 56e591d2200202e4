import t from 'tap';
import { checkNothingLost } from './checker.ts';
import { metric, startFaultStack, waitHealthy, waitUntil } from './harness.ts';
import { Ledger, send, startLoad, type RequestSpec } from './load.ts';
import { makeUsers } from './scenario.ts';
import { startWatchers } from './watchers.ts';

/**
 * Fault 7: tools that misbehave inside the dispatcher. `hang` never settles and ignores its abort
 * signal: it is abandoned at its 1.5 s timeout, recorded TIMEOUT, and its slot is free. `cpu_hog`
 * spins for 10 s without yielding (its manifest timeout is 2 s): the process running it is
 * blocked, so the other dispatcher instance serves everyone else meanwhile; once it yields the
 * execution is recorded TIMEOUT (it finished past its deadline) and the requests it was holding
 * are served.
 */

t.test('a hanging tool and a CPU hog do not stop other users being served', async (t) => {
  // Each instance holds at most two requests: a blocked process cannot sit on the requests it
  // pulled before it froze (they would wait for it), so the other instance gets the traffic.
  const fs = await startFaultStack(t, { env: { DISPATCH_CONCURRENCY: '2' } });
  const second = await fs.extra('dispatcher');
  const users = await makeUsers(fs, 'st', 4);
  const [hog, ...others] = users;
  const watchers = startWatchers(fs.url('notifier'), users);
  t.teardown(() => Promise.all(watchers.map((w) => w.stop())));
  const ledger = new Ledger();
  const mix = (i: number, rand: () => number): RequestSpec =>
    rand() < 0.5 ? { tool: 'echo', args: { i } } : { tool: 'sleep_idempotent', args: { ms: 50 } };
  const load = startLoad({
    agent: fs.agent,
    ledger,
    users: others,
    concurrency: 2,
    seed: 71,
    mix,
    pauseMs: 100,
  });
  await load.answersAfter(10);

  const hangs = await Promise.all(
    Array.from({ length: 6 }, (_, i) =>
      send(fs.agent, ledger, hog!, `hang-${i}`, { tool: 'hang', args: {} }),
    ),
  );
  t.ok(
    hangs.every((a) => a?.status === 'failed' && a.error.code === 'TIMEOUT'),
    'every hanging execution is answered TIMEOUT',
  );

  const othersAnswered = () => ledger.all().filter((e) => e.userId !== hog!.userId && e.answeredAt !== null);
  const hogSentAt = Date.now();
  const hogAnswer = await send(
    fs.agent,
    ledger,
    hog!,
    'cpu-hog',
    { tool: 'cpu_hog', args: { ms: 10_000 } },
    {
      attemptTimeoutMs: 60_000,
    },
  );
  const hogAnsweredAt = Date.now();
  t.match(hogAnswer, { status: 'failed', error: { code: 'TIMEOUT' } }, 'the CPU hog is recorded TIMEOUT');
  const servedMeanwhile = othersAnswered().filter(
    (e) => e.answeredAt! > hogSentAt + 2_000 && e.answeredAt! < hogAnsweredAt - 1_000,
  ).length;
  t.ok(
    servedMeanwhile > 0,
    `other users were served while one process was blocked (${servedMeanwhile} answers)`,
  );

  // Both processes serve again, and nothing is left running.
  await load.answersAfter(10);
  await load.stop();
  await waitHealthy(fs, ['dispatcher']);
  await waitUntil(
    'no execution in flight',
    async () =>
      (await metric(fs.url('dispatcher'), 'toolbus_executions_in_flight')) +
        (await metric(second.services.dispatcher.url, 'toolbus_executions_in_flight')) ===
      0,
  );
  t.pass('no execution is left in flight (the hung tools were abandoned)');

  await checkNothingLost(t, { store: fs.store, pool: fs.pool, ledger, watchers });
  t.strictSame(fs.unexpectedExits(), [], 'no service process ended');
});
