import type pg from 'pg';
import { userStream, type ToolEvent } from '../../contracts/index.ts';
import { toEventData } from '../../lib/toolEvents.ts';
import { noopExecutionEvents } from './rows.ts';

/**
 * Writes a large, valid history fast: executions of `noop` (requested, executing, completed),
 * chained per user exactly as the dispatcher chains them, inserted with multi-row statements
 * straight into the event store's tables (the store's migrations must have run). Users take turns,
 * so the global order interleaves them as live traffic would.
 */
export async function seedHistory(
  pool: pg.Pool,
  options: { users: string[]; events: number; start?: Date; spacingMs?: number; requestPrefix?: string },
): Promise<{ events: number }> {
  const { users } = options;
  const start = options.start ?? new Date(Date.now() - 3_600_000);
  const spacing = options.spacingMs ?? 20;
  const prefix = options.requestPrefix ?? 'seed';
  const tails = new Map<string, { revision: number; hash: string | undefined }>(
    users.map((u) => [u, { revision: -1, hash: undefined }]),
  );
  const executions = Math.ceil(options.events / 3);
  let batch: Array<{ stream: string; revision: number; event: ToolEvent }> = [];
  let written = 0;

  const flush = async () => {
    if (batch.length === 0) return;
    const rows = batch.map((b) => ({ ...b, data: toEventData(b.event) }));
    await pool.query(
      `insert into toolbus_events (stream_id, revision, event_id, event_type, data, metadata, event_key)
       select x.s, x.r, x.id, x.t, x.d::json, x.m::json, x.k
         from unnest($1::text[], $2::bigint[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[]) with ordinality as x(s, r, id, t, d, m, k, o)
        order by x.o`,
      [
        rows.map((r) => r.stream),
        rows.map((r) => r.revision),
        rows.map((r) => r.data.id),
        rows.map((r) => r.data.type),
        rows.map((r) => JSON.stringify(r.data.data)),
        rows.map((r) => JSON.stringify(r.data.metadata)),
        rows.map((r) => r.data.key ?? null),
      ],
    );
    written += batch.length;
    batch = [];
  };

  for (let i = 0; i < executions; i++) {
    const user = users[i % users.length]!;
    const tail = tails.get(user)!;
    const events = noopExecutionEvents(
      user,
      `${prefix}-${i}`,
      tail.hash,
      new Date(start.getTime() + i * spacing),
    );
    for (const event of events) {
      tail.revision++;
      batch.push({ stream: userStream(user), revision: tail.revision, event });
    }
    tail.hash = events.at(-1)!.metadata.hash;
    if (batch.length >= 3_000) await flush();
  }
  await flush();
  await pool.query(
    `insert into toolbus_streams (stream_id, revision) select * from unnest($1::text[], $2::bigint[])
     on conflict (stream_id) do update set revision = excluded.revision`,
    [users.map((u) => userStream(u)), users.map((u) => tails.get(u)!.revision)],
  );
  return { events: written };
}
