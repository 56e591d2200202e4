import t from 'tap';
import type { OwnedServer } from '../support/processes.ts';
import { checkNothingLost, readStreams } from './checker.ts';
import { sleep, startFaultStack, waitHealthy, waitUntil, type FaultStack } from './harness.ts';
import { Ledger, startLoad } from './load.ts';
import { makeUsers } from './scenario.ts';
import { startWatchers } from './watchers.ts';

/**
 * Fault 3: the PostgreSQL server (the event store and the read models; the test's own server) is
 * SIGKILLed, once while the dispatchers append under load, once while the projector works through
 * a backlog, and started again (crash recovery from its WAL). Appends that failed are retried
 * (the terminal one in place, the rest through redelivery), the projector rolls back the batch
 * in flight and goes on from its checkpoint, the notifier closes sockets whose replay failed and
 * the clients resume.
 */

/** Starts PostgreSQL again; the old server's backends may take a moment to notice their parent died. */
async function restart(pg: OwnedServer): Promise<void> {
  for (let i = 0; ; i++) {
    try {
      await pg.start();
      return;
    } catch (e) {
      if (i >= 10) throw e;
      await sleep(1_000);
    }
  }
}

async function projected(fs: FaultStack): Promise<number> {
  const { rows } = await fs.pool.query<{ events: number }>('select events from projector_checkpoints');
  return Number(rows[0]?.events ?? 0);
}

const stored = async (fs: FaultStack) =>
  [...(await readStreams(fs.store)).values()].reduce((n, l) => n + l.length, 0);

t.test('PostgreSQL killed during appends and during projection: nothing is lost', async (t) => {
  const fs = await startFaultStack(t, {
    ownPostgres: true,
    // One event per projection transaction, so that a backlog takes a while to work through.
    env: { ACK_WAIT_MS: '5000', PROJECTION_BATCH_SIZE: '1' },
  });
  const pg = fs.postgres!;
  const users = await makeUsers(fs, 'pk', 4);
  const watchers = startWatchers(fs.url('notifier'), users);
  t.teardown(() => Promise.all(watchers.map((w) => w.stop())));
  const ledger = new Ledger();
  const load = startLoad({ agent: fs.agent, ledger, users, concurrency: 2, seed: 31 });

  // During appends.
  await load.answersAfter(15);
  await pg.kill('SIGKILL');
  await sleep(3_000);
  await restart(pg);
  await load.answersAfter(15, 90_000);
  t.pass('requests are answered again after PostgreSQL came back');

  // During projection: the projector stops, a backlog builds, it starts, and PostgreSQL dies
  // while it works through the backlog.
  await fs.stack.kill('projector', 'SIGTERM');
  fs.expectExit('projector');
  await load.answersAfter(40, 60_000);
  await load.stop();
  const backlogFrom = await projected(fs);
  const total = await stored(fs);
  t.ok(total - backlogFrom >= 60, `a backlog of ${total - backlogFrom} events waits for the projector`);
  await fs.stack.start('projector');
  await waitUntil(
    'the projector to be part way through the backlog',
    async () => {
      const done = await projected(fs);
      return done > backlogFrom && done < total - 10;
    },
    30_000,
    10,
  );
  const before = await projected(fs);
  await pg.kill('SIGKILL');
  t.ok(before < total, `killed while projecting (${before} of ${total} events projected)`);
  await sleep(3_000);
  await restart(pg);

  // More traffic after the second restart, then the checks.
  const after = startLoad({ agent: fs.agent, ledger, users, concurrency: 2, seed: 32, prefix: 'after' });
  await after.answersAfter(15, 90_000);
  await after.stop();
  await waitHealthy(fs, ['dispatcher', 'projector', 'notifier'], 90_000);
  await checkNothingLost(t, { store: fs.store, pool: fs.pool, ledger, watchers, timeoutMs: 90_000 });
  t.strictSame(fs.unexpectedExits(), [], 'no service process ended on its own');
});
