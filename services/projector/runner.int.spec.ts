import t from 'tap';
import pg from 'pg';
import { createPostgresEventStore } from '../../lib/eventstore/postgres.ts';
import type { EventStore } from '../../lib/eventstore/types.ts';
import { recordExecution } from '../../test/support/events.ts';
import { createTestDatabase } from '../../test/support/postgres.ts';
import { startProjector, type Projector, type StartOptions } from './app.ts';
import { readCheckpoint } from './checkpoint.ts';
import { PROJECTION_NAME } from './migrations.ts';
import { compareWithReplay, readUserEvents } from './replay.ts';
import {
  appendUnreadable,
  metricValue,
  testConfig,
  waitFor,
  waitForCatchUp,
  countingStore,
} from './testkit.ts';

type T = Parameters<Parameters<typeof t.test>[0]>[0];

async function setup(t: T, env: Record<string, string> = {}, options: StartOptions = {}) {
  const db = await createTestDatabase(t);
  const store = countingStore(await createPostgresEventStore({ connectionString: db.url }));
  t.teardown(() => store.close());
  const start = async (
    more: Record<string, string> = {},
    opts: StartOptions = options,
  ): Promise<Projector> => {
    const p = await startProjector(testConfig(db.url, { ...env, ...more }), { ...opts, store });
    t.teardown(() => p.close());
    return p;
  };
  return { db, store, start };
}

const tools = ['echo', 'search', 'fetch_url'];
async function writeSome(store: EventStore, n: number, prefix = 'u'): Promise<void> {
  for (let i = 0; i < n; i++) {
    await recordExecution(store, `${prefix}${i % 3}`, {
      tool: tools[i % tools.length]!,
      outcome: (['completed', 'failed', 'refused', 'executing', 'completed'] as const)[i % 5],
      durationMs: 1 + ((i * 37) % 900),
      code: i % 2 ? 'TIMEOUT' : 'TOOL_ERROR',
    });
  }
}

async function assertEqualsReplay(
  t: T,
  p: Projector,
  store: EventStore,
  message = 'the read models equal a replay',
) {
  await waitForCatchUp(p.pool, store);
  const c = await compareWithReplay(p.pool, store);
  t.ok(c.equal, message, { differences: c.differences });
  t.ok(c.replayedEvents > 0, 'events were projected');
  return c;
}

async function metricsText(p: Projector): Promise<string> {
  return (await p.app.inject({ url: '/metrics' })).body;
}

t.test('applies every event once and the read models equal a replay', async (t) => {
  const { store, start } = await setup(t);
  await writeSome(store, 12);
  const p = await start();
  await waitFor(() => p.runner.state === 'active', { what: 'the runner to be active' });
  await writeSome(store, 12, 'v');
  const c = await assertEqualsReplay(t, p, store);
  const events = await readUserEvents(store);
  t.equal(c.checkpointEvents, events.length, 'the checkpoint counts every event once');
  for (const row of c.actual.executions) {
    const own = events.filter((e) => (e.metadata as { executionId: string }).executionId === row.executionId);
    if (row.eventCount !== own.length)
      t.fail(`execution ${row.executionId}: ${row.eventCount} applications of ${own.length} events`);
  }
  t.equal(c.actual.executions.length, 24);
  const text = await metricsText(p);
  const applied = ['ToolRequested', 'ToolExecuting', 'ToolCompleted', 'ToolFailed'].map(
    (type) => metricValue(text, 'toolbus_projector_events_applied_total', { type }) ?? 0,
  );
  t.equal(
    applied.reduce((a, b) => a + b, 0),
    events.length,
    'events applied, by type, add up to the store',
  );
  t.equal(metricValue(text, 'toolbus_projector_events_applied_total', { type: 'ToolRequested' }), 24);
  t.equal(metricValue(text, 'toolbus_projector_active'), 1);
  t.ok(
    (metricValue(text, 'toolbus_projector_batch_duration_seconds_count') ?? 0) > 0,
    'batch durations observed',
  );
});

t.test(
  'unknown types and newer schema versions are skipped, recorded and counted, and projection goes on',
  async (t) => {
    const { store, start } = await setup(t);
    const p = await start();
    await writeSome(store, 3);
    await appendUnreadable(store, 'mallory', 'unknown-type');
    await appendUnreadable(store, 'mallory', 'newer-version');
    await appendUnreadable(store, 'mallory', 'newer-version');
    await writeSome(store, 3, 'after');
    const c = await assertEqualsReplay(t, p, store);
    t.equal(c.actual.executions.length, 6, 'the events after the unreadable ones were applied');
    t.strictSame(
      c.actual.skipped.map((s) => [s.streamId, s.revision, s.eventType]),
      [
        ['user-mallory', 0, 'ToolTeleported'],
        ['user-mallory', 1, 'ToolCompleted'],
        ['user-mallory', 2, 'ToolCompleted'],
      ],
    );
    t.match(c.actual.skipped[1]!.reason, /schema version 2 is newer/);
    t.ok(
      c.actual.skipped.every((s) => s.position !== null && s.recordedAt !== null),
      'each skip names its position',
    );
    const { rows } = await p.pool.query<{ n: number }>(
      'select count(*)::int as n from projection.projection_skipped',
    );
    t.equal(rows[0]!.n, 3, 'projection_skipped has a row per skipped event');
    const text = await metricsText(p);
    t.equal(metricValue(text, 'toolbus_projector_events_skipped_total', { kind: 'unknown_type' }), 1);
    t.equal(metricValue(text, 'toolbus_projector_events_skipped_total', { kind: 'newer_version' }), 2);
    t.equal(metricValue(text, 'toolbus_projector_batch_failures_total'), 0, 'no batch failed: no crash loop');
    t.equal(
      c.actual.userActivity.find((u) => u.userId === 'mallory'),
      undefined,
      'nothing of them reached the models',
    );
  },
);

t.test('ready events are applied many to a transaction', async (t) => {
  const { store, start } = await setup(t, { PROJECTION_BATCH_SIZE: '100' });
  await writeSome(store, 150);
  const total = store.appended;
  const p = await start();
  await assertEqualsReplay(t, p, store);
  // Not one transaction per event: the events that were ready went in together.
  t.ok(p.runner.batches <= total / 5, `${total} events in ${p.runner.batches} transactions`);
  const text = await metricsText(p);
  t.equal(metricValue(text, 'toolbus_projector_batch_events_sum'), total, 'every event in some batch, once');
  t.ok(
    (metricValue(text, 'toolbus_projector_batch_events_bucket', { le: '100' }) ?? 0) === p.runner.batches,
    'no batch above the configured size',
  );
});

t.test(
  'a batch that dies after writing its rows and checkpoint, before its commit, leaves nothing behind',
  async (t) => {
    let calls = 0;
    let hold: (() => void) | null = null;
    const held = new Promise<void>((resolve) => (hold = resolve));
    let reached: (() => void) | null = null;
    const atCheckpoint = new Promise<void>((resolve) => (reached = resolve));
    const { db, store, start } = await setup(
      t,
      {},
      {
        beforeCommit: async () => {
          calls++;
          if (calls === 1) {
            reached!();
            await held; // the rows and the checkpoint are written, not committed: look from outside
          }
          if (calls <= 4 || calls % 3 === 0) throw new Error('injected crash before the commit');
        },
      },
    );
    await writeSome(store, 10);
    const p = await start();
    await atCheckpoint;
    const outside = new pg.Client({ connectionString: db.url });
    await outside.connect();
    t.teardown(() => outside.end());
    const { rows } = await outside.query<{ n: number }>(
      'select count(*)::int as n from projection.executions',
    );
    t.equal(rows[0]!.n, 0, 'a batch in flight is invisible');
    hold!();
    await writeSome(store, 10, 'w');
    const c = await assertEqualsReplay(
      t,
      p,
      store,
      'after rolled-back batches the models still equal a replay',
    );
    t.ok(calls >= 5, `the hook ran ${calls} times`);
    t.ok(
      (metricValue(await metricsText(p), 'toolbus_projector_batch_failures_total') ?? 0) >= 4,
      'failures counted',
    );
    t.equal(c.checkpointEvents, c.replayedEvents, 'no event counted twice');
  },
);

t.test('the lag rises while the runner is paused and falls to zero when it resumes', async (t) => {
  const { store, start } = await setup(t);
  await writeSome(store, 3);
  const p = await start();
  await waitForCatchUp(p.pool, store);
  await waitFor(async () => metricValue(await metricsText(p), 'toolbus_projector_lag_events') === 0, {
    what: 'lag 0',
  });
  await p.runner.pause();
  const before = await readCheckpoint(p.pool, PROJECTION_NAME);
  await writeSome(store, 5);
  const lagged = await waitFor(
    async () => {
      const text = await metricsText(p);
      const events = metricValue(text, 'toolbus_projector_lag_events') ?? 0;
      const seconds = metricValue(text, 'toolbus_projector_lag_seconds') ?? 0;
      return events >= 13 && seconds > 0 ? { events, seconds } : null;
    },
    { what: 'the lag gauges to rise' },
  );
  t.ok(lagged.events >= 13, `lag ${lagged.events} events, ${lagged.seconds} s while paused`);
  t.equal(
    (await readCheckpoint(p.pool, PROJECTION_NAME)).position,
    before.position,
    'nothing applied while paused',
  );
  p.runner.resume();
  await waitFor(
    async () => {
      const text = await metricsText(p);
      return (
        metricValue(text, 'toolbus_projector_lag_events') === 0 &&
        metricValue(text, 'toolbus_projector_lag_seconds') === 0
      );
    },
    { what: 'the lag gauges to fall to zero' },
  );
  await assertEqualsReplay(t, p, store);
});

t.test(
  'a checkpoint someone else wrote, even at the same position, rolls the next batch back; it goes on from the stored one',
  async (t) => {
    const { store, start } = await setup(t);
    await writeSome(store, 3);
    const p = await start();
    await waitForCatchUp(p.pool, store);
    await p.runner.pause();
    const before = await readCheckpoint(p.pool, PROJECTION_NAME);
    // What a rebuild's swap that ended where the live projector stood leaves: the same position,
    // written by another transaction (the read models behind it may be other tables).
    await p.pool.query('update projector_checkpoints set updated_at = now() where projection = $1', [
      PROJECTION_NAME,
    ]);
    const after = await readCheckpoint(p.pool, PROJECTION_NAME);
    t.equal(after.position, before.position, 'the position did not move');
    t.not(after.version, before.version, 'the version did');
    p.runner.resume();
    await writeSome(store, 4, 'v');
    const c = await assertEqualsReplay(t, p, store);
    t.ok(
      (metricValue(await metricsText(p), 'toolbus_projector_batch_failures_total') ?? 0) >= 1,
      'the batch after the foreign write was rolled back',
    );
    t.equal(c.checkpointEvents, c.replayedEvents, 'no event counted twice');
  },
);

t.test('one active instance: the second stands by and takes over when the first stops', async (t) => {
  const { store, start } = await setup(t);
  const a = await start();
  await waitFor(() => a.runner.state === 'active', { what: 'a active' });
  const b = await start();
  await waitFor(() => b.runner.state === 'standby', { what: 'b on standby' });
  await writeSome(store, 6);
  await waitForCatchUp(a.pool, store);
  t.equal(b.runner.batches, 0, 'the standby applied nothing');
  t.equal(metricValue(await metricsText(b), 'toolbus_projector_active'), 0);
  await a.close();
  await waitFor(() => b.runner.state === 'active', { what: 'b to take over' });
  await writeSome(store, 6, 'x');
  await assertEqualsReplay(t, b, store);
  t.ok(b.runner.batches > 0, 'the new active instance applied the rest');
});

t.test('a lost lock session stops the runner; it takes the lock again and goes on', async (t) => {
  const { store, start } = await setup(t);
  const p = await start();
  await writeSome(store, 3);
  await waitForCatchUp(p.pool, store);
  const { rows } = await p.pool.query<{ n: number }>(
    `select count(pg_terminate_backend(pid))::int as n from pg_stat_activity
      where application_name = 'toolbus-projector-lock' and datname = current_database()`,
  );
  t.equal(rows[0]!.n, 1, 'the lock session was terminated');
  await waitFor(() => p.runner.state === 'standby' || p.runner.state === 'active', {
    what: 'the runner to notice',
  });
  await writeSome(store, 6, 'y');
  await waitFor(() => p.runner.state === 'active', { what: 'the lock to be held again' });
  await assertEqualsReplay(t, p, store);
});
