import t from 'tap';
import { checkNothingLost } from './checker.ts';
import { sleep, startFaultStack, waitHealthy } from './harness.ts';
import { Ledger, startLoad } from './load.ts';
import { makeUsers } from './scenario.ts';
import { startWatchers } from './watchers.ts';

/**
 * Fault 2b: the NATS server is frozen (SIGSTOP) for 30 s under load, then thawed (SIGCONT). Its
 * sockets stay open but nothing moves: clients see their pings go unanswered and reconnect;
 * JetStream's ack deadlines pass while it is frozen, so requests in flight are delivered again
 * when it wakes, and the dispatchers must answer them from the store instead of running them twice.
 */

t.test('NATS paused for 30 s under load: nothing acknowledged is lost, nothing runs twice', async (t) => {
  const fs = await startFaultStack(t, { env: { ACK_WAIT_MS: '5000' } });
  const users = await makeUsers(fs, 'np', 4);
  const watchers = startWatchers(fs.url('notifier'), users);
  t.teardown(() => Promise.all(watchers.map((w) => w.stop())));
  const ledger = new Ledger();
  const load = startLoad({ agent: fs.agent, ledger, users, concurrency: 2, seed: 22 });

  await load.answersAfter(10);
  await fs.nats!.pause();
  const frozenAt = load.answered;
  await sleep(30_000);
  fs.nats!.resume();
  t.ok(
    load.answered - frozenAt <= 8,
    `nothing but what was already on its way was answered while NATS was frozen (${load.answered - frozenAt})`,
  );
  await load.answersAfter(15, 60_000);
  t.pass('requests are answered again after NATS wakes');
  await load.stop();

  await waitHealthy(fs, ['dispatcher', 'projector', 'notifier']);
  await checkNothingLost(t, { store: fs.store, pool: fs.pool, ledger, watchers });
  t.strictSame(fs.unexpectedExits(), [], 'no service process ended');
});
