import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import {
  envelopeEvents,
  requestContext,
  GENESIS_HASH,
  type ToolEvent,
  type ToolEventBody,
} from '../../contracts/index.ts';
import { toEventData } from '../../lib/toolEvents.ts';

/**
 * The event rows of one `noop` execution as the dispatcher writes them (same types, data and
 * metadata, so the same bytes per row), for the references that write "the same rows" without
 * the dispatcher: step 1 is ToolRequested + ToolExecuting, step 2 the ToolCompleted.
 */
export function noopExecutionEvents(
  userId: string,
  requestId: string,
  prevHash = GENESIS_HASH,
  at = new Date(),
  runner = 'bench-dispatcher',
): ToolEvent[] {
  const bodies: ToolEventBody[] = [
    { type: 'ToolRequested', data: { tool: 'noop', version: '1.0.0', args: {}, redacted: [] } },
    { type: 'ToolExecuting', data: { attempt: 1, runner, timeoutMs: 5000 } },
    { type: 'ToolCompleted', data: { result: {}, redacted: [], durationMs: 0.012, cached: false } },
  ];
  return envelopeEvents(
    bodies,
    requestContext(userId, requestId, () => at.toISOString()),
    prevHash,
  );
}

interface TemplateRow {
  type: string;
  data: string;
  metadata: string;
}

/** Rows shaped like a noop execution's, with fresh event ids, for raw inserts. */
export class RowFactory {
  private readonly steps: TemplateRow[][];
  private revision = 0;

  constructor(private readonly stream: string) {
    const rows = noopExecutionEvents('bench-template', 'template-request')
      .map(toEventData)
      .map((e) => ({
        type: e.type,
        data: JSON.stringify(e.data),
        metadata: JSON.stringify(e.metadata),
      }));
    this.steps = [[rows[0]!, rows[1]!], [rows[2]!]];
  }

  /** The rows of one execution step (0: requested + executing, 1: completed). */
  step(step: 0 | 1): {
    streams: string[];
    revisions: number[];
    ids: string[];
    types: string[];
    data: string[];
    metadata: string[];
  } {
    const rows = this.steps[step]!;
    return {
      streams: rows.map(() => this.stream),
      revisions: rows.map(() => this.revision++),
      ids: rows.map(() => randomUUID()),
      types: rows.map((r) => r.type),
      data: rows.map((r) => r.data),
      metadata: rows.map((r) => r.metadata),
    };
  }
}

/** A table with the event store's columns, constraints and indexes (see lib/eventstore/postgres.migrations.ts). */
export const RAW_EVENTS_DDL = `
  create table if not exists bench_raw_events (
    seq bigint generated always as identity primary key,
    tx_id xid8 not null default pg_current_xact_id(),
    stream_id text not null,
    revision bigint not null,
    event_id uuid not null,
    event_type text not null,
    data json not null,
    metadata json not null,
    created_at timestamptz not null default clock_timestamp(),
    constraint bench_raw_events_stream_revision unique (stream_id, revision),
    constraint bench_raw_events_event_id unique (event_id)
  );
  create index if not exists bench_raw_events_global on bench_raw_events (tx_id, seq);
`;

/** One insert statement, one transaction (autocommit), one synchronous commit. */
export async function insertStep(pool: pg.Pool, rows: ReturnType<RowFactory['step']>): Promise<void> {
  await pool.query(
    `insert into bench_raw_events (stream_id, revision, event_id, event_type, data, metadata)
     select x.s, x.r, x.id, x.t, x.d::json, x.m::json
       from unnest($1::text[], $2::bigint[], $3::uuid[], $4::text[], $5::text[], $6::text[]) as x(s, r, id, t, d, m)`,
    [rows.streams, rows.revisions, rows.ids, rows.types, rows.data, rows.metadata],
  );
}
