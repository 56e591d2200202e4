import t from 'tap';
import { checkNothingLost } from './checker.ts';
import { sleep, startFaultStack, waitHealthy } from './harness.ts';
import { Ledger, startLoad } from './load.ts';
import { makeUsers } from './scenario.ts';
import { startWatchers } from './watchers.ts';

/**
 * Fault 2a: the NATS server is SIGKILLed under load and started again 3 s later (same port, same
 * JetStream directory). Every client reconnects on its own; requests in the intake survive in
 * JetStream's files; answers and event publishes lost with the connection are made good by the
 * agents' retries (same request id) and the notifier's tail check.
 */

t.test('NATS killed under load and restarted: nothing acknowledged is lost', async (t) => {
  const fs = await startFaultStack(t);
  const users = await makeUsers(fs, 'nk', 4);
  const watchers = startWatchers(fs.url('notifier'), users);
  t.teardown(() => Promise.all(watchers.map((w) => w.stop())));
  const ledger = new Ledger();
  const load = startLoad({ agent: fs.agent, ledger, users, concurrency: 2, seed: 21 });

  for (let round = 1; round <= 2; round++) {
    await load.answersAfter(10);
    await fs.nats!.kill('SIGKILL');
    await sleep(3_000);
    await fs.nats!.start();
    await load.answersAfter(10, 60_000);
    t.pass(`round ${round}: requests are answered again after the restart`);
  }
  await load.stop();

  await waitHealthy(fs, ['dispatcher', 'projector', 'notifier']);
  await checkNothingLost(t, { store: fs.store, pool: fs.pool, ledger, watchers });
  t.ok(
    watchers.every((w) => w.readies >= 1),
    'every client subscribed (and resumed when its socket closed)',
  );
  t.strictSame(fs.unexpectedExits(), [], 'no service process ended');
});
