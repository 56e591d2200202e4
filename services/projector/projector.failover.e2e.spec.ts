import t from 'tap';
import { createPool } from '../../lib/db.ts';
import { createPostgresEventStore } from '../../lib/eventstore/postgres.ts';
import type { EventStore } from '../../lib/eventstore/types.ts';
import { recordExecution } from '../../test/support/events.ts';
import { createTestDatabase } from '../../test/support/postgres.ts';
import { compareWithReplay } from './replay.ts';
import {
  fetchMetrics as metrics,
  metricValue,
  random,
  sleep,
  spawnProjector,
  waitFor,
  waitForCatchUp,
  countingStore,
} from './testkit.ts';

/** Two projector processes: single active instance, lag seen by the standby, takeover. */

async function writeExecutions(
  store: EventStore,
  n: number,
  rand: () => number,
  prefix: string,
): Promise<void> {
  for (let i = 0; i < n; i++) {
    await recordExecution(store, `${prefix}${Math.floor(rand() * 5)}`, {
      tool: ['echo', 'search', 'fetch_url'][Math.floor(rand() * 3)]!,
      outcome: (['completed', 'completed', 'failed', 'refused', 'executing'] as const)[
        Math.floor(rand() * 5)
      ],
      durationMs: Math.round(rand() * 2000),
      code: rand() < 0.5 ? 'TIMEOUT' : 'TOOL_ERROR',
    });
  }
}

t.test('two processes: one applies, the other stands by, sees the lag, and takes over', async (t) => {
  const rand = random(7);
  const db = await createTestDatabase(t);
  const store = countingStore(await createPostgresEventStore({ connectionString: db.url }));
  t.teardown(() => store.close());
  const pool = createPool(db.url, { max: 2 });
  t.teardown(() => pool.end());

  const a = spawnProjector(db.url);
  t.teardown(async () => (a.signal('SIGKILL'), await a.exited));
  const aUrl = await a.ready;
  await waitFor(async () => metricValue(await metrics(aUrl), 'toolbus_projector_active') === 1, {
    what: 'A active',
  });
  const b = spawnProjector(db.url);
  t.teardown(async () => (b.signal('SIGKILL'), await b.exited));
  const bUrl = await b.ready;
  await sleep(500);
  t.equal(metricValue(await metrics(bUrl), 'toolbus_projector_active'), 0, 'B stands by');

  await writeExecutions(store, 10, rand, 'u');
  await waitForCatchUp(pool, store);

  a.signal('SIGSTOP');
  await writeExecutions(store, 10, rand, 'v');
  const lag = await waitFor(
    async () => {
      const text = await metrics(bUrl);
      const events = metricValue(text, 'toolbus_projector_lag_events') ?? 0;
      const seconds = metricValue(text, 'toolbus_projector_lag_seconds') ?? 0;
      return events >= 10 && seconds > 0 ? { events, seconds } : null;
    },
    { what: 'the lag to rise while A is stopped' },
  );
  t.ok(lag.events >= 10, `lag ${lag.events} events, ${lag.seconds} s while A is stopped`);
  t.equal(
    metricValue(await metrics(bUrl), 'toolbus_projector_active'),
    0,
    'a stopped holder keeps the lock: B does not apply',
  );

  a.signal('SIGCONT');
  await waitFor(
    async () => {
      const text = await metrics(bUrl);
      return (
        metricValue(text, 'toolbus_projector_lag_events') === 0 &&
        metricValue(text, 'toolbus_projector_lag_seconds') === 0
      );
    },
    { what: 'the lag to fall once A runs again' },
  );
  t.pass('the lag fell to zero when A resumed');

  a.signal('SIGKILL');
  await a.exited;
  await waitFor(async () => metricValue(await metrics(bUrl), 'toolbus_projector_active') === 1, {
    what: 'B to take over',
  });
  await writeExecutions(store, 10, rand, 'w');
  await waitForCatchUp(pool, store);
  const c = await compareWithReplay(pool, store);
  t.ok(c.equal, 'B carried on where A stopped', { differences: c.differences });
  const applied = await metrics(bUrl);
  t.ok(
    (metricValue(applied, 'toolbus_projector_events_applied_total', { type: 'ToolRequested' }) ?? 0) >= 10,
    'B applied the new events',
  );
  b.signal('SIGTERM');
  t.match(await b.exited, { code: 0 });
});
