import { spawn } from 'node:child_process';
import t from 'tap';
import pg from 'pg';
import { createPostgresEventStore } from '../../lib/eventstore/postgres.ts';
import { EventThreads } from '../../lib/threads/events.ts';
import type { EventStore } from '../../lib/eventstore/types.ts';
import { recordExecution } from '../../test/support/events.ts';
import { createTestDatabase } from '../../test/support/postgres.ts';
import { startProjector } from './app.ts';
import { readCheckpoint, rebuildLockKey } from './checkpoint.ts';
import { PROJECTION_NAME } from './migrations.ts';
import { rebuildReadModels, RebuildBusyError } from './rebuild.ts';
import { compareWithReplay } from './replay.ts';
import { dumpReadModels, type Queryable } from './sql.ts';
import { appendUnreadable, testConfig, waitFor, waitForCatchUp, countingStore } from './testkit.ts';

type T = Parameters<Parameters<typeof t.test>[0]>[0];

async function setup(t: T) {
  const db = await createTestDatabase(t);
  const store = countingStore(await createPostgresEventStore({ connectionString: db.url }));
  t.teardown(() => store.close());
  const p = await startProjector(testConfig(db.url), { store });
  t.teardown(() => p.close());
  return { db, store, p };
}

async function writeSome(store: EventStore, n: number, prefix = 'u'): Promise<void> {
  for (let i = 0; i < n; i++) {
    await recordExecution(store, `${prefix}${i % 4}`, {
      tool: ['echo', 'search'][i % 2]!,
      outcome: (['completed', 'failed', 'refused', 'executing'] as const)[i % 4],
      durationMs: 3 + i * 7,
      at: new Date(Date.UTC(2025, 0, 1, 9, i % 7, i % 60)),
    });
  }
}

/** Columns, indexes and constraints of the live schema, with schema names left out. */
async function structure(db: Queryable) {
  const columns = await db.query(
    `select c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod) as type, a.attnotnull
       from pg_attribute a join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
      where n.nspname = 'projection' and a.attnum > 0 and not a.attisdropped and c.relkind in ('r', 'i')
      order by 1, 2`,
  );
  const indexes = await db.query(
    `select indexname, regexp_replace(indexdef, ' ON \\S+\\.', ' ON ') as def from pg_indexes where schemaname = 'projection' order by 1`,
  );
  const constraints = await db.query(
    `select conname, pg_get_constraintdef(oid) as def from pg_constraint where connamespace = 'projection'::regnamespace order by 1`,
  );
  return { columns: columns.rows, indexes: indexes.rows, constraints: constraints.rows };
}

t.test('a rebuild gives the identical model, and the projector goes on with it', async (t) => {
  const { store, p } = await setup(t);
  await writeSome(store, 20);
  await appendUnreadable(store, 'mallory', 'unknown-type');
  await writeSome(store, 8, 'w');
  await waitForCatchUp(p.pool, store);
  const before = await dumpReadModels(p.pool);
  const shape = await structure(p.pool);
  const checkpoint = await readCheckpoint(p.pool, PROJECTION_NAME);

  const progress: number[] = [];
  const result = await rebuildReadModels({
    pool: p.pool,
    store,
    batchSize: 7,
    onProgress: (events) => progress.push(events),
  });
  t.equal(result.events, checkpoint.events, 'every event re-projected');
  t.ok(progress.length > 1, `progress told after each batch (${progress.length})`);
  t.ok(
    progress.every((n, i) => i === 0 || n > progress[i - 1]!),
    'counting up',
  );
  t.equal(progress.at(-1), result.events, 'to every event (none came in during the swap)');
  t.equal(result.position, checkpoint.position);
  const after = await dumpReadModels(p.pool);
  t.strictSame(after, before, 'full table dumps are identical');
  t.equal(after.skipped.length, 1, 'including the skipped event');
  t.strictSame(await structure(p.pool), shape, 'same columns, indexes and constraints');
  const { rows } = await p.pool.query(
    `select nspname from pg_namespace where nspname like 'projection%' order by 1`,
  );
  t.strictSame(rows, [{ nspname: 'projection' }], 'no schema left behind');

  await writeSome(store, 8, 'x');
  await waitForCatchUp(p.pool, store);
  const c = await compareWithReplay(p.pool, store);
  t.ok(c.equal, 'the live projector applies new events to the rebuilt model', { differences: c.differences });
});

t.test('a rebuild parsing on worker threads gives the same model as one parsing here', async (t) => {
  const threads = new EventThreads(2);
  t.teardown(() => threads.close());
  await threads.warm(); // so that every batch goes to the threads, none is parsed here meanwhile
  const { store, p } = await setup(t);
  await writeSome(store, 30);
  await appendUnreadable(store, 'mallory', 'unknown-type');
  await writeSome(store, 30, 'w');
  await waitForCatchUp(p.pool, store);
  const live = await dumpReadModels(p.pool);

  // Batches of 5: many batches in flight on the two threads at once, written in order.
  const threaded = await rebuildReadModels({ pool: p.pool, store, batchSize: 5, threads });
  t.ok(threads.tasks >= threaded.events / 5, `every batch parsed on the threads (${threads.tasks} tasks)`);
  t.strictSame(await dumpReadModels(p.pool), live, 'rebuilt on threads: identical to the live model');
  const here = await rebuildReadModels({ pool: p.pool, store, batchSize: 5, threads: null });
  t.strictSame(await dumpReadModels(p.pool), live, 'rebuilt in this thread: identical too');
  t.equal(threaded.events, here.events, 'the same events re-projected');
  t.equal(threaded.position, here.position);
  t.equal(live.skipped.length, 1, 'the unreadable event is skipped alike');
});

t.test(
  'a rebuild that remembers only a few rows reads the others back and gives the same model',
  async (t) => {
    const { store, p } = await setup(t);
    await writeSome(store, 24);
    await appendUnreadable(store, 'mallory', 'unknown-type');
    await writeSome(store, 24, 'w');
    await waitForCatchUp(p.pool, store);
    const live = await dumpReadModels(p.pool);

    // Batches of 2 split executions across batches; 3 rows remembered forgets most of them in between.
    const forgetful = await rebuildReadModels({ pool: p.pool, store, batchSize: 2, rememberedRows: 3 });
    t.ok(forgetful.rowsReadBack > 0, `rows read back from the new schema (${forgetful.rowsReadBack})`);
    t.strictSame(await dumpReadModels(p.pool), live, 'identical to the live model');
    const remembering = await rebuildReadModels({ pool: p.pool, store, batchSize: 2 });
    t.equal(remembering.rowsReadBack, 0, 'remembering every row, it reads none back');
    t.strictSame(await dumpReadModels(p.pool), live, 'identical too');
  },
);

t.test('readers never see a half model while a rebuild runs next to live writes', async (t) => {
  const { db, store, p } = await setup(t);
  await writeSome(store, 60);
  await waitForCatchUp(p.pool, store);

  const reader = new pg.Client({ connectionString: db.url });
  await reader.connect();
  t.teardown(() => reader.end());
  let stop = false;
  const problems: string[] = [];
  let reads = 0;
  let last = 0;
  const reading = (async () => {
    while (!stop) {
      const { rows } = await reader.query<{
        executions: number;
        requested: number;
        events: number;
        applied: number;
      }>(
        `select (select count(*) from projection.executions)::int as executions,
                (select coalesce(sum(executions), 0) from projection.user_activity)::int as requested,
                (select coalesce(sum(event_count), 0) from projection.executions)::int as events,
                (select coalesce(sum(events), 0) from projection.user_activity)::int as applied`,
      );
      const r = rows[0]!;
      reads++;
      if (r.executions !== r.requested)
        problems.push(`executions ${r.executions} but users requested ${r.requested}`);
      if (r.events !== r.applied) problems.push(`execution events ${r.events} but user events ${r.applied}`);
      if (r.executions < last) problems.push(`executions went back from ${last} to ${r.executions}`);
      last = r.executions;
    }
  })();
  const writing = (async () => {
    for (let i = 0; i < 30 && !stop; i++) await writeSome(store, 1, `live${i}`);
  })();
  const first = await rebuildReadModels({ pool: p.pool, store, batchSize: 10 });
  const second = await rebuildReadModels({ pool: p.pool, store, batchSize: 50 });
  await writing;
  stop = true;
  await reading;
  t.ok(reads > 10, `${reads} reads during two rebuilds`);
  t.strictSame(problems.slice(0, 5), [], 'every read saw a whole model');
  t.ok(second.events >= first.events);
  await waitForCatchUp(p.pool, store);
  const c = await compareWithReplay(p.pool, store);
  t.ok(c.equal, 'the model equals a replay afterwards', { differences: c.differences });
});

t.test(
  'a rebuild ahead of a paused projector moves its checkpoint; it resumes from there, counting nothing twice',
  async (t) => {
    const { store, p } = await setup(t);
    await writeSome(store, 8);
    await waitForCatchUp(p.pool, store);
    await p.runner.pause();
    await writeSome(store, 8, 'p');
    const result = await rebuildReadModels({ pool: p.pool, store });
    const checkpoint = await readCheckpoint(p.pool, PROJECTION_NAME);
    t.equal(checkpoint.position, result.position, 'the checkpoint is the rebuilt position');
    p.runner.resume();
    await writeSome(store, 4, 'r');
    await waitForCatchUp(p.pool, store);
    const c = await compareWithReplay(p.pool, store);
    t.ok(c.equal, 'equal to a replay', { differences: c.differences });
    t.equal(c.checkpointEvents, c.replayedEvents);
  },
);

t.test('a swap writes the checkpoint row also with nothing to project: live batches see it', async (t) => {
  const { p, store } = await setup(t);
  await waitFor(() => p.runner.state === 'active', { what: 'the projector active' });
  const before = await readCheckpoint(p.pool, PROJECTION_NAME);
  t.equal(before.position, null, 'nothing projected yet');
  await rebuildReadModels({ pool: p.pool, store });
  const after = await readCheckpoint(p.pool, PROJECTION_NAME);
  t.equal(after.position, null, 'still nothing');
  // A live batch compares this version: one whose rows were read from the tables the swap renamed
  // away must not find the version it read (it rolls back and starts again on the new tables).
  t.not(after.version, before.version, 'the row has a new version');
  await writeSome(store, 4);
  await waitForCatchUp(p.pool, store);
  const c = await compareWithReplay(p.pool, store);
  t.ok(c.equal, 'the live projector goes on with the new tables');
});

t.test('one rebuild at a time', async (t) => {
  const { db, store, p } = await setup(t);
  const other = new pg.Client({ connectionString: db.url });
  await other.connect();
  t.teardown(() => other.end());
  await other.query('select pg_advisory_lock(hashtextextended($1, 0))', [rebuildLockKey(PROJECTION_NAME)]);
  await t.rejects(rebuildReadModels({ pool: p.pool, store }), RebuildBusyError);
  await other.query('select pg_advisory_unlock(hashtextextended($1, 0))', [rebuildLockKey(PROJECTION_NAME)]);
  await t.resolves(rebuildReadModels({ pool: p.pool, store }), 'and it runs once the other is done');
});

t.test('the rebuild command: npx tsx services/projector/rebuild.ts --json', async (t) => {
  const { db, store, p } = await setup(t);
  await writeSome(store, 10);
  await waitForCatchUp(p.pool, store);
  const before = await dumpReadModels(p.pool);
  const out = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    const child = spawn('npx', ['tsx', 'services/projector/rebuild.ts', '--json'], {
      cwd: new URL('../../', import.meta.url).pathname,
      env: { ...process.env, DATABASE_URL: db.url, LOG_LEVEL: 'warn', NODE_ENV: 'test' },
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
  t.equal(out.code, 0, out.stderr);
  const checkpoint = await readCheckpoint(p.pool, PROJECTION_NAME);
  t.match(
    JSON.parse(out.stdout),
    { events: checkpoint.events, position: checkpoint.position },
    'stdout is the result',
  );
  t.equal(checkpoint.events, 26, '10 executions, 26 events');
  t.strictSame(await dumpReadModels(p.pool), before, 'identical model after the command');
  await waitFor(() => p.runner.state === 'active');
});
