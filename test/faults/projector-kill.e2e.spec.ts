import t from 'tap';
import { compareWithReplay } from '../../services/projector/replay.ts';
import { checkNothingLost } from './checker.ts';
import { startFaultStack, waitUntil } from './harness.ts';
import { Ledger, startLoad } from './load.ts';
import { makeUsers } from './scenario.ts';
import { startWatchers } from './watchers.ts';

/**
 * Fault 5: the projector dies between writing the read models and writing its checkpoint (its
 * NODE_ENV=test fault setting PROJECTOR_FAULT_KILL_BEFORE_CHECKPOINT makes it SIGKILL itself
 * inside the batch transaction), again and again under load. Each time the batch must vanish
 * whole: the read models at the stored checkpoint equal a replay up to it, and the next process
 * applies the batch once.
 */

t.test(
  'the projector killed between read-model write and checkpoint loses and repeats nothing',
  async (t) => {
    const fs = await startFaultStack(t);
    const users = await makeUsers(fs, 'pj', 4);
    const watchers = startWatchers(fs.url('notifier'), users);
    t.teardown(() => Promise.all(watchers.map((w) => w.stop())));
    const ledger = new Ledger();
    const load = startLoad({ agent: fs.agent, ledger, users, concurrency: 2, seed: 51 });
    await load.answersAfter(10);

    let selfKills = 0;
    for (let round = 1; round <= 4; round++) {
      await fs.stack.kill('projector', 'SIGTERM');
      fs.expectExit('projector');
      await load.answersAfter(5);
      fs.expectExit('projector');
      try {
        await fs.stack.start('projector', { PROJECTOR_FAULT_KILL_BEFORE_CHECKPOINT: '0.5' });
      } catch {
        // It may kill itself while catching up, before it reports ready: that is the point.
      }
      await waitUntil(
        'the projector to kill itself',
        () => fs.stack.services.projector.process() === null,
        30_000,
      );
      const exits = fs
        .logText('projector')
        .split('\n')
        .filter((l) => l === '[process exited: SIGKILL]');
      selfKills = exits.length;
      const comparison = await compareWithReplay(fs.pool, fs.store);
      t.ok(
        comparison.equal,
        `round ${round}: after the kill the models equal a replay up to the checkpoint (${comparison.checkpointEvents} events)`,
      );
      if (!comparison.equal) t.comment(comparison.differences.slice(0, 10).join('\n'));
    }
    t.equal(selfKills, 4, 'it killed itself inside a batch four times');

    await fs.stack.start('projector');
    await load.answersAfter(10);
    await load.stop();
    await checkNothingLost(t, { store: fs.store, pool: fs.pool, ledger, watchers });
    t.strictSame(fs.unexpectedExits(), [], 'no other service process ended');
  },
);
