import { userStream } from '../../contracts/index.ts';
import { createPool } from '../../lib/db.ts';
import { createPostgresEventStore } from '../../lib/eventstore/postgres.ts';
import { replayHistory } from '../../services/auditor/replay.ts';
import { verifyHistory } from '../../services/auditor/verify.ts';
import type { BenchContext } from '../lib/context.ts';
import { figure, target, type BenchResult } from '../lib/report.ts';
import { seedHistory } from '../lib/seed.ts';

/** Benchmark 5: replay and verification of a long history, beside a raw read of the same rows. */

/** The PostgreSQL store's page size (lib/eventstore/postgres.ts default batchSize). */
const PAGE = 500;
const USER = 'bench-audit';

export async function auditReplay(ctx: BenchContext): Promise<BenchResult> {
  const started = performance.now();
  const db = await ctx.database();
  // As the auditor opens it (services/auditor/store.ts): 4 connections, default page size.
  const store = await createPostgresEventStore({ connectionString: db.url, poolSize: 4 });
  const pool = createPool(db.url, { max: 2, application: 'bench-audit' });
  try {
    const t0 = performance.now();
    const { events } = await seedHistory(pool, { users: [USER], events: ctx.d.auditEvents });
    ctx.log(`seeded a ${events}-event history in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    await pool.query('vacuum analyze toolbus_events');

    const raw = async () => {
      const client = await pool.connect();
      let n = 0;
      let from = 0;
      try {
        for (;;) {
          const { rows } = await client.query<{ revision: number; data: unknown; metadata: unknown }>(
            `select seq, tx_id::text as tx, stream_id, revision, event_id, event_type, data, metadata, created_at
               from toolbus_events where stream_id = $1 and revision >= $2 order by revision limit ${PAGE}`,
            [userStream(USER), from],
          );
          n += rows.length;
          if (rows.length < PAGE) break;
          from = rows.at(-1)!.revision + 1;
        }
      } finally {
        client.release();
      }
      return n;
    };
    const replay = async () => {
      let n = 0;
      for await (const item of replayHistory(store, USER)) if (!('invalid' in item)) n++;
      return n;
    };
    const verify = async () => {
      const report = await verifyHistory(store, USER);
      if (!report.ok) throw new Error(`verification failed: ${JSON.stringify(report.break)}`);
      return report.events;
    };
    const timed = async (fn: () => Promise<number>) => {
      const s = performance.now();
      const n = await fn();
      if (n !== events) throw new Error(`read ${n} of ${events} events`);
      return n / ((performance.now() - s) / 1000);
    };
    const rounds: Array<{ raw: number; replay: number; verify: number }> = [];
    for (let round = 0; round < ctx.d.auditRounds; round++) {
      const r = { raw: await timed(raw), replay: await timed(replay), verify: await timed(verify) };
      rounds.push(r);
      ctx.log(
        `audit round ${round + 1}: raw ${r.raw.toFixed(0)}/s, replay ${r.replay.toFixed(0)}/s, verify ${r.verify.toFixed(0)}/s`,
      );
    }
    const best = (k: 'raw' | 'replay' | 'verify') => Math.max(...rounds.map((r) => r[k]));
    const ref = { name: 'raw SELECT + JSON parse', value: best('raw') };
    return {
      id: 'audit',
      title: '5. Audit replay and verification',
      figures: [
        figure(`replay of ${events.toLocaleString('en-US')} events`, 'events/s', best('replay'), ref),
        figure(`verification of ${events.toLocaleString('en-US')} events`, 'events/s', best('verify'), ref),
      ],
      targets: [
        target(
          'audit replay at least half the raw read rate',
          'events/s',
          best('replay'),
          best('raw') / 2,
          'higher',
        ),
        target(
          'audit verification at least half the raw read rate',
          'events/s',
          best('verify'),
          best('raw') / 2,
          'higher',
        ),
      ],
      notes: [
        `One user's history of ${events.toLocaleString('en-US')} events (noop executions, chained as the dispatcher chains them), in the PostgreSQL event store.`,
        'Replay: services/auditor/replay.ts `replayHistory` (each event parsed against its schema). Verification: services/auditor/verify.ts `verifyHistory` (schema, revision, hash chain, life cycle).',
        `Reference: the same rows read with pg in pages of ${PAGE} (the store's page size), the JSON columns parsed by the driver, nothing else.`,
        `Best of ${ctx.d.auditRounds} round(s), each round reference, replay, verification.`,
      ],
      details: { events, rounds },
      seconds: (performance.now() - started) / 1000,
    };
  } finally {
    await store.close().catch(() => undefined);
    await pool.end().catch(() => undefined);
  }
}
