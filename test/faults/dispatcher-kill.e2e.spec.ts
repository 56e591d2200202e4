import t from 'tap';
import { checkNothingLost } from './checker.ts';
import { sleep, startFaultStack, waitUntil } from './harness.ts';
import { Ledger, startLoad, type RequestSpec } from './load.ts';
import { executions, makeUsers, running } from './scenario.ts';
import { startWatchers } from './watchers.ts';

/**
 * Fault 1: the dispatcher is SIGKILLed while tools run, twice, and started again. JetStream
 * redelivers what it had not acked after ACK_WAIT_MS; the new process finds the executions left
 * in `ToolExecuting`, re-runs the idempotent tools (attempt 2) and fails the others INTERRUPTED.
 */

t.test('a dispatcher killed mid-tool and restarted loses nothing and runs nothing twice', async (t) => {
  const fs = await startFaultStack(t, { env: { ACK_WAIT_MS: '3000' } });
  const users = await makeUsers(fs, 'dk', 4);
  const watchers = startWatchers(fs.url('notifier'), users);
  t.teardown(() => Promise.all(watchers.map((w) => w.stop())));
  const ledger = new Ledger();
  const load = startLoad({
    agent: fs.agent,
    ledger,
    users,
    concurrency: 2,
    seed: 11,
    // Slow tools, so that a kill lands while several run.
    mix: (i, rand): RequestSpec =>
      rand() < 0.6
        ? { tool: rand() < 0.5 ? 'sleep_idempotent' : 'sleep', args: { ms: 400 + Math.floor(rand() * 1200) } }
        : rand() < 0.5
          ? { tool: 'echo', args: { i } }
          : { tool: 'noop', args: {} },
  });

  const left: Array<{ executionId: string; tool: string }> = [];
  for (let round = 1; round <= 2; round++) {
    await load.answersAfter(8);
    await waitUntil('several tools running', async () => (await running(fs.store)).length >= 3, 30_000, 50);
    await fs.stack.kill('dispatcher');
    fs.expectExit('dispatcher');
    // A commit the dead process sent just before it died still completes in PostgreSQL: wait
    // until its sessions are gone. Then nothing writes: what is executing was left by it.
    await waitUntil(
      "the dead dispatcher's database sessions to end",
      async () =>
        (
          await fs.pool.query<{ n: number }>(
            `select count(*)::int as n from pg_stat_activity
              where application_name = 'toolbus-dispatcher' and datname = current_database()`,
          )
        ).rows[0]!.n === 0,
      30_000,
      50,
    );
    // Nothing writes now: what is still executing was left by the dead process.
    const orphans = await running(fs.store);
    t.ok(orphans.length > 0, `round ${round}: the kill left ${orphans.length} execution(s) mid-tool`);
    left.push(...orphans);
    await sleep(1_000);
    await fs.stack.start('dispatcher');
  }
  await load.answersAfter(8);
  await load.stop();

  const report = await checkNothingLost(t, { store: fs.store, pool: fs.pool, ledger, watchers });
  t.ok(report.events > 0);

  // What became of the executions the kills interrupted.
  const all = await executions(fs.store);
  let reran = 0;
  let interrupted = 0;
  for (const o of left) {
    const events = all.get(o.executionId)?.events ?? [];
    const terminal = events.at(-1);
    if (o.tool === 'sleep') {
      t.match(
        terminal,
        { type: 'ToolFailed', data: { error: { code: 'INTERRUPTED' } } },
        `${o.executionId} (not idempotent) is INTERRUPTED, not run again`,
      );
      interrupted++;
    } else {
      const attempts = events.filter((e) => e.type === 'ToolExecuting').length;
      t.ok(
        terminal?.type === 'ToolCompleted' && attempts >= 2,
        `${o.executionId} (${o.tool}, idempotent) ran again and completed (${attempts} attempts)`,
      );
      reran++;
    }
  }
  t.comment(`interrupted executions: ${interrupted} failed INTERRUPTED, ${reran} re-run to completion`);
  t.strictSame(fs.unexpectedExits(), [], 'no service process ended on its own');
});
