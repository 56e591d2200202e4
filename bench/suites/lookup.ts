import { pino } from 'pino';
import { executionIdFor, userStream } from '../../contracts/index.ts';
import { createPool } from '../../lib/db.ts';
import { createPostgresEventStore } from '../../lib/eventstore/postgres.ts';
import type { EventStore } from '../../lib/eventstore/types.ts';
import type { NatsConnection } from '../../lib/nats.ts';
import { UserStreams, terminalOf } from '../../services/dispatcher/streams.ts';
import type { BenchContext } from '../lib/context.ts';
import { newHistogram, recordMs, summarize } from '../lib/histogram.ts';
import { figure, target, type BenchResult } from '../lib/report.ts';
import { seedHistory } from '../lib/seed.ts';

/**
 * Benchmark 8: what it costs to find one execution, for a user with a short history and one with
 * a long one, in the same database and the same run. The lookup is `UserStreams.load`, the store
 * work behind the answers lookup, GET /executions/:id and a cancel: the stream's tail (one event)
 * and the execution's events through the index by execution id. The execution looked up is the
 * user's oldest, the worst place for a read that walks the stream backwards (the path before).
 */

const SHORT = 10;
const LONG = 100_000;
const TARGET_RATIO = 2;
const USERS = { short: 'bench-lookup-short', long: 'bench-lookup-long' } as const;

const lookups = (ctx: BenchContext) => (ctx.mode === 'quick' ? 300 : 2_000);

/** The old path, for the record: the stream read backwards until the execution's ToolRequested. */
async function backwardRead(store: EventStore, userId: string, executionId: string): Promise<number> {
  let n = 0;
  for await (const r of store.readStream(userStream(userId), { direction: 'backwards' })) {
    n++;
    const meta = r.metadata as { executionId?: unknown };
    if (meta.executionId === executionId && r.type === 'ToolRequested') break;
  }
  return n;
}

export async function lookupCost(ctx: BenchContext): Promise<BenchResult> {
  const started = performance.now();
  const db = await ctx.database();
  const store = await createPostgresEventStore({ connectionString: db.url, poolSize: 2 });
  const pool = createPool(db.url, { max: 2, application: 'bench-lookup' });
  try {
    const t0 = performance.now();
    const short = await seedHistory(pool, { users: [USERS.short], events: SHORT, requestPrefix: 'seed' });
    const long = await seedHistory(pool, { users: [USERS.long], events: LONG, requestPrefix: 'seed' });
    ctx.log(
      `seeded ${short.events} + ${long.events} events in ${((performance.now() - t0) / 1000).toFixed(1)} s`,
    );
    await pool.query('vacuum analyze toolbus_events');

    // `load` reads and never publishes: no NATS connection is needed.
    const streams = new UserStreams({
      store,
      nc: undefined as unknown as NatsConnection,
      log: pino({ level: 'silent' }),
      now: () => new Date(),
    });
    const refOf = (userId: string) => {
      const executionId = executionIdFor(userId, 'seed-0');
      return { userId, executionId, requestId: 'seed-0', correlationId: executionId };
    };
    const lookup = async (userId: string) => {
      const s = performance.now();
      const execution = await streams.load(refOf(userId));
      const ms = performance.now() - s;
      if (!terminalOf(execution)) throw new Error(`${userId}: the oldest execution has no terminal event`);
      return ms;
    };

    // Warm both (plans, buffers), then alternate so that both sizes see the same machine.
    for (let i = 0; i < 20; i++) await Promise.all([lookup(USERS.short), lookup(USERS.long)]);
    const histograms = { short: newHistogram(), long: newHistogram() };
    const n = lookups(ctx);
    for (let i = 0; i < n; i++) {
      recordMs(histograms.short, await lookup(USERS.short));
      recordMs(histograms.long, await lookup(USERS.long));
    }
    const shortMs = summarize(histograms.short);
    const longMs = summarize(histograms.long);
    const ratio = longMs.p50 / shortMs.p50;
    ctx.log(
      `lookup p50: ${shortMs.p50.toFixed(3)} ms at ${short.events} events, ${longMs.p50.toFixed(3)} ms at ${long.events} events (ratio ${ratio.toFixed(2)})`,
    );

    // The path before, once per size: how many events it read and how long it took.
    const before = async (userId: string) => {
      const s = performance.now();
      const read = await backwardRead(store, userId, refOf(userId).executionId);
      return { read, ms: performance.now() - s };
    };
    const beforeShort = await before(USERS.short);
    const beforeLong = await before(USERS.long);

    return {
      id: 'lookup',
      title: '8. Lookup cost against history length',
      figures: [
        figure(`lookup p50, ${short.events} events of history`, 'ms', shortMs.p50),
        figure(`lookup p50, ${long.events.toLocaleString('en-US')} events of history`, 'ms', longMs.p50, {
          name: `the same at ${short.events} events`,
          value: shortMs.p50,
        }),
        figure(`lookup p99, ${long.events.toLocaleString('en-US')} events of history`, 'ms', longMs.p99, {
          name: `the same at ${short.events} events`,
          value: shortMs.p99,
        }),
        figure(
          `backward read (the path before), ${long.events.toLocaleString('en-US')} events`,
          'ms',
          beforeLong.ms,
          { name: `the same at ${short.events} events`, value: beforeShort.ms },
          `${beforeLong.read.toLocaleString('en-US')} events read, once`,
        ),
      ],
      targets: [
        target(
          `lookup time at ${LONG.toLocaleString('en-US')} events / at ${SHORT} events`,
          '×',
          ratio,
          TARGET_RATIO,
          'lower',
        ),
      ],
      notes: [
        `Two users in one database: ${short.events} and ${long.events.toLocaleString('en-US')} events (noop executions, seeded straight into the tables as bench/lib/seed.ts does, keys included).`,
        "The lookup: services/dispatcher/streams.ts `UserStreams.load` of the user's oldest execution (the tail: one event backwards; the execution: `readByKey`, the index on (stream, key)).",
        `${n} lookups per size after 20 warm-up pairs, alternating the sizes; ratio of the medians.`,
        'The backward read is measured once per size, for the record: the cost the index removes.',
      ],
      details: {
        events: { short: short.events, long: long.events },
        lookupMs: { short: shortMs, long: longMs },
        ratio,
        before: { short: beforeShort, long: beforeLong },
      },
      seconds: (performance.now() - started) / 1000,
    };
  } finally {
    await store.close().catch(() => undefined);
    await pool.end().catch(() => undefined);
  }
}
