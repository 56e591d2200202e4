/**
 * What the dispatcher asks of PostgreSQL per dispatch: runs it at one open-loop rate with every
 * statement of its database logged with its duration (log_min_duration_statement = 0 on that
 * database only), then sums the server's log by statement: count and milliseconds per dispatch.
 *
 *   npx tsx bench/pg-work.ts [rate=200] [segmentS=10] [warmupS=segmentS] [log=/var/log/postgresql/postgresql-15-main.log]
 *
 * A longer warm-up puts more history in the store first (3 events per dispatch).
 */
import { readFileSync, statSync } from 'node:fs';
import pg from 'pg';
import { FETCH_AFTER_SQL } from '../lib/eventstore/postgres.ts';
import { BenchContext, QUICK } from './lib/context.ts';
import { decodeHistogram, summarize } from './lib/histogram.ts';
import type { OpenLoopResult } from './lib/openloop.ts';
import { dispatcherEnv, dispatchWorkload } from './suites/dispatch.ts';

const [rateArg, segmentArg, warmupArg, logArg] = process.argv.slice(2);
const rate = Number(rateArg ?? 200);
const segmentMs = Number(segmentArg ?? 10) * 1000;
const warmupMs = Number(warmupArg ?? segmentArg ?? 10) * 1000;
const logFile = logArg ?? '/var/log/postgresql/postgresql-15-main.log';

const ctx = new BenchContext('quick', QUICK);
try {
  await ctx.open();
  const db = await ctx.database();
  const name = new URL(db.url).pathname.slice(1);
  const admin = new pg.Client({ connectionString: db.url });
  await admin.connect();
  await admin.query(`alter database "${name}" set log_min_duration_statement = 0`);
  await admin.end();
  await ctx.service('dispatcher', { role: 'dispatcher', env: dispatcherEnv(ctx, db.url) });
  const loadgen = await ctx.fork('loadgen.ts', 'loadgen-toolbus');
  await loadgen.call('setup', dispatchWorkload(ctx));
  const run = (tag: string, durationMs: number) =>
    loadgen.call<OpenLoopResult>(
      'run',
      { rate, durationMs, warmupMs: 0, drainMs: 15_000, maxOutstanding: rate * 10, tag },
      durationMs + 140_000,
    );
  await run(`${ctx.runId}-warm`, warmupMs);
  const from = statSync(logFile).size;
  const r = await run(`${ctx.runId}-measured`, segmentMs);
  const text = readFileSync(logFile).subarray(from).toString();
  const byStatement = new Map<string, { n: number; ms: number }>();
  const line = new RegExp(`@${name} LOG:  duration: ([0-9.]+) ms  (statement|execute|bind|parse)[^:]*: (.*)`);
  for (const l of text.split('\n')) {
    const m = line.exec(l);
    if (!m) continue;
    const key =
      m[2]! +
      ' ' +
      m[3]!
        .replace(/\s+/g, ' ')
        .replace(/'[^']*'/g, "'…'")
        .slice(0, 110);
    const s = byStatement.get(key) ?? { n: 0, ms: 0 };
    s.n++;
    s.ms += Number(m[1]);
    byStatement.set(key, s);
  }
  const latency = summarize(decodeHistogram(r.histogram));
  console.log(
    `${r.completed} dispatches answered at ${rate}/s (p50 ${latency.p50.toFixed(1)} ms, p99 ${latency.p99.toFixed(1)} ms); per dispatch:`,
  );
  for (const [k, s] of [...byStatement].sort((a, b) => b[1].ms - a[1].ms).slice(0, 25)) {
    console.log(
      `${(s.n / r.completed).toFixed(3).padStart(8)} × ${(s.ms / r.completed).toFixed(3).padStart(7)} ms  ${k}`,
    );
  }
  // The subscription's query as the relay runs it, a little behind the end, and its plan.
  const c = new pg.Client({ connectionString: db.url });
  await c.connect();
  const { rows } = await c.query<{ tx: string; seq: string }>(
    `select tx_id::text as tx, seq from toolbus_events order by tx_id desc, seq desc offset 20 limit 1`,
  );
  const plan = await c.query<{ 'QUERY PLAN': string }>(`explain (analyze, buffers) ${FETCH_AFTER_SQL}`, [
    rows[0]!.tx,
    rows[0]!.seq,
    ['user-%'],
    null,
    500,
    null,
  ]);
  console.log(plan.rows.map((r) => r['QUERY PLAN']).join('\n'));
  // Whole-table reads over the run: a plan kept from when a table was small shows here.
  const scans = await c.query<{ relname: string; seq_scan: string; seq_tup_read: string; idx_scan: string }>(
    `select relname, seq_scan::text, seq_tup_read::text, coalesce(idx_scan, 0)::text as idx_scan
       from pg_stat_user_tables where seq_scan > 0 or idx_scan > 0 order by seq_tup_read desc`,
  );
  console.log('table scans over the run (warm-up included): table, sequential scans, rows they read, index scans');
  for (const r of scans.rows) console.log(`  ${r.relname}: ${r.seq_scan}, ${r.seq_tup_read}, ${r.idx_scan}`);
  await c.end();
} finally {
  await ctx.close();
}
