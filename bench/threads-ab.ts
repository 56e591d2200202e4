/**
 * `npx tsx bench/threads-ab.ts`: audit verification and read-model rebuild with 0, 1 and 2 event
 * threads (decision 0029), in alternating rounds in one process, each beside its reference of the
 * same round (the raw read of benchmark 5, the bare upsert of benchmark 3b); prints every round and
 * the best-of ratios. AUDIT, REBUILD (events), ROUNDS and SIZES (thread counts, "0,1,2") override.
 * On a machine whose cores are all busy, threads cannot help: compare on a quiet one.
 */
import { createPool, migrate } from '../lib/db.ts';
import { createPostgresEventStore } from '../lib/eventstore/postgres.ts';
import { verifyHistory } from '../services/auditor/verify.ts';
import { rebuildReadModels } from '../services/projector/rebuild.ts';
import { projectorMigrations } from '../services/projector/migrations.ts';
import { EventThreads } from '../lib/threads/events.ts';
import { seedHistory } from './lib/seed.ts';
import { bareUpsert } from './suites/projection.ts';
import { createTestDatabase } from '../test/support/postgres.ts';
import { userStream } from '../contracts/index.ts';

const AUDIT = Number(process.env.AUDIT ?? 60000);
const REBUILD = Number(process.env.REBUILD ?? 30000);
const ROUNDS = Number(process.env.ROUNDS ?? 4);
const sizes = (process.env.SIZES ?? '0,1,2').split(',').map(Number);
const adb = await createTestDatabase();
const astore = await createPostgresEventStore({ connectionString: adb.url, poolSize: 4 });
const apool = createPool(adb.url, { max: 2, application: 'ab' });
await seedHistory(apool, { users: ['u'], events: AUDIT });
await apool.query('vacuum analyze toolbus_events');
const rdb = await createTestDatabase();
const rstore = await createPostgresEventStore({ connectionString: rdb.url });
const rpool = createPool(rdb.url, { max: 10, application: 'ab-r' });
await migrate(rpool, 'projector', projectorMigrations);
await seedHistory(rpool, { users: Array.from({ length: 100 }, (_, k) => `r${k}`), events: REBUILD });
await rpool.query('vacuum analyze toolbus_events');
const pools = new Map<number, EventThreads | null>(sizes.map((n) => [n, n ? new EventThreads(n) : null]));
for (const p of pools.values()) await p?.warm();
const raw = async () => {
  const client = await apool.connect();
  let n = 0;
  let from = 0;
  try {
    for (;;) {
      const { rows } = await client.query(
        `select seq, tx_id::text as tx, stream_id, revision, event_id, event_type, data, metadata, created_at from toolbus_events where stream_id = $1 and revision >= $2 order by revision limit 500`,
        [userStream('u'), from],
      );
      n += rows.length;
      if (rows.length < 500) break;
      from = rows.at(-1).revision + 1;
    }
  } finally {
    client.release();
  }
  return n;
};
const rate = async (fn: () => Promise<number>) => {
  const s = performance.now();
  const n = await fn();
  return n / ((performance.now() - s) / 1000);
};
const best: Record<string, number> = {};
const keep = (k: string, v: number) => {
  best[k] = Math.max(best[k] ?? 0, v);
  return v.toFixed(0);
};
for (let round = 0; round < ROUNDS; round++) {
  const line = [`round ${round + 1}: raw ${keep('raw', await rate(raw))}`];
  for (const [n, threads] of pools)
    line.push(
      `verify/${n} ${keep(`verify/${n}`, await rate(async () => (await verifyHistory(astore, 'u', { threads })).events))}`,
    );
  line.push(`bare ${keep('bare', await rate(() => bareUpsert(rpool)))}`);
  for (const [n, threads] of pools)
    line.push(
      `rebuild/${n} ${keep(`rebuild/${n}`, await rate(async () => (await rebuildReadModels({ pool: rpool, store: rstore, batchSize: 500, threads })).events))}`,
    );
  console.log(line.join(', '));
}
console.log(
  'best ratios:',
  Object.entries(best)
    .filter(([k]) => k !== 'raw' && k !== 'bare')
    .map(([k, v]) => `${k} ${(v / (k.startsWith('verify') ? best.raw! : best.bare!)).toFixed(3)}x`)
    .join(', '),
);
for (const p of pools.values()) await p?.close();
await astore.close();
await apool.end();
await rstore.close();
await rpool.end();
await adb.drop();
await rdb.drop();
