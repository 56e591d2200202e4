import t from 'tap';
import { createPool } from '../../lib/db.ts';
import { createPostgresEventStore } from '../../lib/eventstore/postgres.ts';
import type { EventStore } from '../../lib/eventstore/types.ts';
import { recordExecution } from '../../test/support/events.ts';
import { createTestDatabase } from '../../test/support/postgres.ts';
import { compareWithReplay, readUserEvents } from './replay.ts';
import {
  appendUnreadable,
  random,
  sleep,
  spawnProjector,
  waitFor,
  waitForCatchUp,
  type ProjectorProcess,
  countingStore,
} from './testkit.ts';

/** Projector processes SIGKILLed at random points while events are written. */

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

t.test(
  'killed at random points while events are written, the read models still equal a replay',
  async (t) => {
    const seed = Number(process.env['PROJECTOR_TEST_SEED'] ?? Date.now() % 100_000);
    t.comment(`seed ${seed}`);
    const rand = random(seed);
    const db = await createTestDatabase(t);
    const store = countingStore(await createPostgresEventStore({ connectionString: db.url }));
    t.teardown(() => store.close());
    const pool = createPool(db.url, { max: 2 });
    t.teardown(() => pool.end());

    const running = new Set<ProjectorProcess>();
    t.teardown(async () => {
      for (const p of running) p.signal('SIGKILL');
      await Promise.all([...running].map((p) => p.exited));
    });

    // At least four kill cycles, more while the time budget (about 20 s) lasts.
    let cycles = 0;
    const started = Date.now();
    let done = false;
    const writers = [0, 1].map(async (w) => {
      for (let round = 0; !done; round++) {
        await writeExecutions(store, 2, rand, `w${w}u`);
        await sleep(10);
        if (round % 10 === 5 && round <= 25) {
          await appendUnreadable(store, `odd${w}`, round % 20 === 5 ? 'unknown-type' : 'newer-version');
        }
      }
    });
    const written = Promise.all(writers);

    // First, a process that SIGKILLs itself in its first batch, after writing the read models and
    // before writing the checkpoint: none of that batch may be visible.
    await waitFor(async () => (await readUserEvents(store)).length > 0, { what: 'some events' });
    const doomed = spawnProjector(db.url, { PROJECTOR_FAULT_KILL_BEFORE_CHECKPOINT: '1' });
    running.add(doomed);
    t.match(await doomed.exited, { signal: 'SIGKILL' }, 'it died in its first batch');
    running.delete(doomed);
    t.ok(doomed.log().includes('projecting from the checkpoint'), 'after it had started projecting');
    const left = await pool.query<{ position: string | null; executions: number }>(
      'select position, (select count(*) from projection.executions)::int as executions from projector_checkpoints',
    );
    t.strictSame(
      left.rows,
      [{ position: null, executions: 0 }],
      'no checkpoint, no rows: the batch was rolled back',
    );

    let kills = 0;
    let selfKills = 0;
    let beforeReady = 0;
    let spawned = 0;
    for (; cycles < 4 || (cycles < 8 && Date.now() - started < 20_000); cycles++) {
      // One or two processes at a time; some kill themselves between model write and checkpoint.
      const n = rand() < 0.4 ? 2 : 1;
      const batch: ProjectorProcess[] = [];
      for (let i = 0; i < n; i++) {
        const p = spawnProjector(
          db.url,
          rand() < 0.6 ? { PROJECTOR_FAULT_KILL_BEFORE_CHECKPOINT: '0.15' } : {},
        );
        spawned++;
        running.add(p);
        void p.exited.then(({ signal }) => {
          running.delete(p);
          if (signal === 'SIGKILL') kills++;
        });
        batch.push(p);
      }
      if (rand() < 0.25) {
        // Killed while starting: migrations, lock, first subscription read.
        await sleep(300 + rand() * 1200);
      } else {
        await Promise.race([Promise.all(batch.map((p) => p.ready)).catch(() => undefined), sleep(15_000)]);
        await sleep(200 + rand() * 1200);
      }
      for (const p of batch) {
        if (p.child.exitCode !== null || p.child.signalCode !== null) selfKills++;
        else if (!p.log().includes('projector ready')) beforeReady++;
        p.signal('SIGKILL');
      }
      await Promise.all(batch.map((p) => p.exited));
    }
    done = true;
    await written;
    t.comment(
      `${spawned} processes, ${kills} SIGKILLed: ${selfKills} by their own fault injection, ${beforeReady} before ready`,
    );
    t.ok(kills >= 4, `${kills} kills`);

    t.comment(`writing stopped after ${Date.now() - started} ms`);
    const final = spawnProjector(db.url, { PROJECTION_BATCH_SIZE: '500' });
    running.add(final);
    await final.ready;
    await waitForCatchUp(pool, store, 45_000);
    t.comment(`caught up after ${Date.now() - started} ms`);
    const c = await compareWithReplay(pool, store);
    t.ok(c.equal, 'the read models equal a from-scratch replay', { differences: c.differences });
    const events = await readUserEvents(store, c.position);
    t.comment(`${events.length} events`);
    t.equal(c.checkpointEvents, events.length, 'the checkpoint counts each event exactly once');
    const perExecution = new Map<string, number>();
    for (const e of events) {
      const id = (e.metadata as { executionId?: string }).executionId;
      if (id && (e.metadata as { schemaVersion?: number }).schemaVersion === 1)
        perExecution.set(id, (perExecution.get(id) ?? 0) + 1);
    }
    const wrong = c.actual.executions.filter((r) => r.eventCount !== perExecution.get(r.executionId));
    t.strictSame(
      wrong,
      [],
      'every execution row applied each of its events once (no process applied one twice)',
    );
    t.equal(c.actual.executions.length, perExecution.size);
    const unreadable = events.filter(
      (e) => (e.metadata as { schemaVersion?: number }).schemaVersion !== 1 || e.type === 'ToolTeleported',
    );
    t.ok(unreadable.length > 0);
    t.equal(c.actual.skipped.length, unreadable.length, 'the unreadable events are skipped, once each');

    final.signal('SIGTERM');
    t.match(await final.exited, { code: 0 }, 'SIGTERM stops it cleanly');
  },
);
