import type pg from 'pg';
import { BloomFilter } from '../../lib/bloom.ts';
import { emptyHistogram, LATENCY_BUCKETS } from './histogram.ts';
import { LIVE_SCHEMA } from './migrations.ts';
import {
  addSample,
  applyEvent,
  emptyToolMetrics,
  minuteKey,
  normalizeDump,
  refusedRow,
  sortKeys,
  type ExecutionRow,
  type ExecutionState,
  type Incoming,
  type ReadModelDump,
  type Sample,
  type SkippedRow,
  type ToolMetricsRow,
  type UserActivityRow,
} from './model.ts';

/**
 * The read-model tables as storage for the rows of model.ts: one spec per table maps columns to
 * row fields, and every read and write goes through it, so a row reads back exactly as written.
 */
export type Queryable = pg.Pool | pg.ClientBase;

type Kind = 'text' | 'int' | 'float' | 'bool' | 'ts' | 'json' | 'ints';
interface Column<R> {
  name: string;
  field: keyof R & string;
  /** The SQL type, for jsonb_to_recordset. */
  type: string;
  kind: Kind;
}
interface TableSpec<R> {
  table: string;
  key: string[];
  columns: Array<Column<R>>;
}

const col = <R>(name: string, field: keyof R & string, type: string, kind: Kind): Column<R> => ({
  name,
  field,
  type,
  kind,
});

const EXECUTIONS: TableSpec<ExecutionRow> = {
  table: 'executions',
  key: ['execution_id'],
  columns: [
    col('execution_id', 'executionId', 'uuid', 'text'),
    col('user_id', 'userId', 'text', 'text'),
    col('request_id', 'requestId', 'text', 'text'),
    col('correlation_id', 'correlationId', 'text', 'text'),
    col('tool', 'tool', 'text', 'text'),
    col('version', 'version', 'text', 'text'),
    col('status', 'status', 'text', 'text'),
    col('attempts', 'attempts', 'int', 'int'),
    col('requested_at', 'requestedAt', 'timestamptz', 'ts'),
    col('started_at', 'startedAt', 'timestamptz', 'ts'),
    col('finished_at', 'finishedAt', 'timestamptz', 'ts'),
    col('duration_ms', 'durationMs', 'double precision', 'float'),
    col('error_code', 'errorCode', 'text', 'text'),
    col('error_message', 'errorMessage', 'text', 'text'),
    col('cached', 'cached', 'boolean', 'bool'),
    col('event_count', 'eventCount', 'int', 'int'),
    col('last_revision', 'lastRevision', 'bigint', 'int'),
    col('cancel_requested_at', 'cancelRequestedAt', 'timestamptz', 'ts'),
    col('state', 'state', 'jsonb', 'json'),
  ],
};

const USER_ACTIVITY: TableSpec<UserActivityRow> = {
  table: 'user_activity',
  key: ['user_id'],
  columns: [
    col('user_id', 'userId', 'text', 'text'),
    col('executions', 'executions', 'bigint', 'int'),
    col('completed', 'completed', 'bigint', 'int'),
    col('failed', 'failed', 'bigint', 'int'),
    col('refused', 'refused', 'bigint', 'int'),
    col('events', 'events', 'bigint', 'int'),
    col('first_activity_at', 'firstActivityAt', 'timestamptz', 'ts'),
    col('last_activity_at', 'lastActivityAt', 'timestamptz', 'ts'),
  ],
};

const metricColumns: Array<Column<ToolMetricsRow>> = [
  col('completed', 'completed', 'bigint', 'int'),
  col('failed', 'failed', 'bigint', 'int'),
  col('refused', 'refused', 'bigint', 'int'),
  col('cached', 'cached', 'bigint', 'int'),
  col('error_codes', 'errorCodes', 'jsonb', 'json'),
  col('latency_count', 'latencyCount', 'bigint', 'int'),
  col('latency_sum_ms', 'latencySumMs', 'double precision', 'float'),
  col('latency_max_ms', 'latencyMaxMs', 'double precision', 'float'),
  col('latency_histogram', 'latencyHistogram', 'bigint[]', 'ints'),
];

const TOOL_MINUTE: TableSpec<ToolMetricsRow> = {
  table: 'tool_metrics_minute',
  key: ['tool', 'minute'],
  columns: [
    col('tool', 'tool', 'text', 'text'),
    col('minute', 'minute', 'timestamptz', 'ts'),
    ...metricColumns,
  ],
};

const TOOL_TOTAL: TableSpec<ToolMetricsRow> = {
  table: 'tool_metrics',
  key: ['tool'],
  columns: [col('tool', 'tool', 'text', 'text'), ...metricColumns],
};

const SKIPPED: TableSpec<SkippedRow> = {
  table: 'projection_skipped',
  key: ['stream_id', 'revision'],
  columns: [
    col('stream_id', 'streamId', 'text', 'text'),
    col('revision', 'revision', 'bigint', 'int'),
    col('position', 'position', 'text', 'text'),
    col('event_id', 'eventId', 'text', 'text'),
    col('event_type', 'eventType', 'text', 'text'),
    col('reason', 'reason', 'text', 'text'),
    col('recorded_at', 'recordedAt', 'timestamptz', 'ts'),
  ],
};

const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,62}$/;
export function qualified(schema: string, table: string): string {
  if (!SCHEMA_NAME.test(schema)) throw new Error(`invalid schema name ${JSON.stringify(schema)}`);
  return `${schema}.${table}`;
}

function fromDb(kind: Kind, value: unknown): unknown {
  if (value === null || value === undefined) return null;
  switch (kind) {
    case 'ts':
      return (value instanceof Date ? value : new Date(value as string)).toISOString();
    case 'int':
    case 'float':
      return Number(value);
    case 'ints':
      return (value as unknown[]).map(Number);
    case 'json':
      return sortKeys(value as Record<string, unknown>);
    default:
      return value;
  }
}

const rowFromDb = <R>(spec: TableSpec<R>, r: Record<string, unknown>): R =>
  Object.fromEntries(spec.columns.map((c) => [c.field, fromDb(c.kind, r[c.name])])) as R;

function rowToJson<R>(spec: TableSpec<R>, row: R): Record<string, unknown> {
  const json: Record<string, unknown> = {};
  for (const c of spec.columns) json[c.name] = row[c.field] ?? null;
  return json;
}

const recordsetType = <R>(spec: TableSpec<R>, names: string[] = spec.columns.map((c) => c.name)): string =>
  names.map((n) => `${n} ${spec.columns.find((c) => c.name === n)!.type}`).join(', ');

/** A row's key as one string: its table and key columns' values. */
function keyString<R>(spec: TableSpec<R>, values: unknown[]): string {
  return `${spec.table}\u0000${values.join('\u0000')}`;
}
const keyOfKey = <R>(spec: TableSpec<R>, key: Record<string, unknown>): string =>
  keyString(
    spec,
    spec.key.map((name) => key[name]),
  );
/** Each spec's key fields, in key order (looked up once: a rebuild keys every row it holds). */
const keyFields = new Map<TableSpec<never>, string[]>();
function keyOfRow<R>(spec: TableSpec<R>, row: R): string {
  let fields = keyFields.get(spec);
  if (!fields) {
    fields = spec.key.map((name) => spec.columns.find((c) => c.name === name)!.field);
    keyFields.set(spec, fields);
  }
  let key = spec.table;
  for (const field of fields) key += `\u0000${(row[field as keyof R] as string | number | null) ?? ''}`;
  return key;
}

/**
 * What the only writer of a schema knows of its rows without reading them back: the rows it touched
 * last (up to `capacity`, the least recently touched forgotten first) and, in a Bloom filter, the
 * key of every row it ever touched. A rebuild owns its fresh schema until the swap, so a row held
 * here is the row, a key the filter never saw has no row, and only a forgotten row (or a false
 * "maybe" of the filter) is read from the table: most batches read nothing before they write.
 *
 * Being the only reader too, it also writes behind: a batch's rows are held, not written, and a row
 * is written when it is forgotten (in the statement of the batch that pushed it out) or by `flushRows`,
 * which the rebuild calls before the swap. An execution's row is then written once, after its
 * last event, rather than with each batch that touched it, and a user's or a tool's totals once
 * at the end rather than in every batch (a rebuild wrote about 54,000 rows for 100,000 events
 * without this, 34,000 with).
 *
 * It holds only while every batch applied with it commits; a rebuild abandons it with a failed batch.
 * The rows are the model's own objects (a batch mutates them as it applies events).
 */
export class SoleWriterRows {
  private readonly rows = new Map<string, { spec: TableSpec<unknown>; row: unknown; written: boolean }>();
  private readonly touched: BloomFilter;
  /** Keys answered from memory and keys read from the table, for tests and logs. */
  readonly counts = { remembered: 0, absent: 0, read: 0 };

  constructor(
    readonly capacity = 20_000,
    filterBytes = 4 * 1024 * 1024,
  ) {
    this.touched = new BloomFilter(filterBytes);
  }

  /** The row, `null` when it certainly does not exist, `undefined` when only the table knows. */
  lookup(key: string): unknown {
    const held = this.rows.get(key);
    if (held !== undefined) {
      this.counts.remembered++;
      return held.row;
    }
    if (!this.touched.mightContain(key)) {
      this.counts.absent++;
      return null;
    }
    this.counts.read++;
    return undefined;
  }

  /**
   * Holds a batch's rows, to be written later; returns the rows to write now: those forgotten to
   * make room that were not written yet.
   */
  hold(writes: readonly Write[]): Write[] {
    for (const { spec, rows } of writes) {
      for (const row of rows) {
        const key = keyOfRow(spec, row);
        // Held already (a user's totals, in every batch): in the filter already too.
        if (!this.rows.delete(key)) this.touched.add(key);
        this.rows.set(key, { spec, row, written: false });
      }
    }
    const due = new Map<TableSpec<unknown>, unknown[]>();
    for (const [key, held] of this.rows) {
      if (this.rows.size <= this.capacity) break;
      this.rows.delete(key);
      if (held.written) continue;
      let rows = due.get(held.spec);
      if (!rows) due.set(held.spec, (rows = []));
      rows.push(held.row);
    }
    return [...due].map(([spec, rows]) => ({ spec, rows }));
  }

  /** The rows held and not written yet, at most `max` (marked written: the caller writes them). */
  unwritten(max: number): Write[] {
    const due = new Map<TableSpec<unknown>, unknown[]>();
    let n = 0;
    for (const held of this.rows.values()) {
      if (held.written) continue;
      if (n++ === max) break;
      held.written = true;
      let rows = due.get(held.spec);
      if (!rows) due.set(held.spec, (rows = []));
      rows.push(held.row);
    }
    return [...due].map(([spec, rows]) => ({ spec, rows }));
  }
}

/** Rows in one statement of `flushRows`. */
const FLUSH_ROWS = 2000;

/**
 * Writes every row `known` holds and has not written, a few thousand rows per statement; with a
 * pool, `parallel` statements at a time (the rows are distinct, each statement its own transaction),
 * so that the rebuild's last writes use more than one backend and one core.
 */
export async function flushRows(
  db: Queryable,
  schema: string,
  known: SoleWriterRows,
  parallel = 1,
  rowsPerStatement = FLUSH_ROWS,
): Promise<number> {
  let written = 0;
  let failed = false;
  const writer = async () => {
    // A writer whose statement failed stops the others before they take more rows: the rebuild
    // is abandoned, and nothing of it may still be writing once its caller has let go.
    while (!failed) {
      const writes = known.unwritten(rowsPerStatement);
      if (writes.length === 0) return;
      written += writes.reduce((n, w) => n + w.rows.length, 0);
      try {
        await writeRows(db, schema, writes, []);
      } catch (e) {
        failed = true;
        throw e;
      }
    }
  };
  const outcomes = await Promise.allSettled(Array.from({ length: Math.max(1, parallel) }, writer));
  const failure = outcomes.find((o) => o.status === 'rejected');
  if (failure) throw failure.reason;
  return written;
}


/** Rows of `spec` whose key is among `keys` (objects with the key columns). */
async function loadByKeys<R>(
  db: Queryable,
  schema: string,
  spec: TableSpec<R>,
  keys: Array<Record<string, unknown>>,
  known?: SoleWriterRows,
): Promise<R[]> {
  const found: R[] = [];
  let ask = keys;
  if (known) {
    ask = [];
    for (const key of keys) {
      const row = known.lookup(keyOfKey(spec, key));
      if (row === undefined) ask.push(key);
      else if (row !== null) found.push(row as R);
    }
  }
  if (ask.length === 0) return found;
  const { rows } = await db.query<Record<string, unknown>>(
    `select t.* from ${qualified(schema, spec.table)} t
       join jsonb_to_recordset($1::jsonb) as k(${recordsetType(spec, spec.key)}) using (${spec.key.join(', ')})`,
    [JSON.stringify(ask)],
  );
  for (const r of rows) found.push(rowFromDb(spec, r));
  return found;
}

/** A data-modifying statement that inserts or replaces whole rows given as a jsonb array in `param`. */
function upsertStatement<R>(schema: string, spec: TableSpec<R>, param: string): string {
  const names = spec.columns.map((c) => c.name);
  const updates = names.filter((n) => !spec.key.includes(n)).map((n) => `${n} = excluded.${n}`);
  return `insert into ${qualified(schema, spec.table)} (${names.join(', ')})
     select ${names.join(', ')} from jsonb_to_recordset(${param}::jsonb) as x(${recordsetType(spec)})
     on conflict (${spec.key.join(', ')}) do update set ${updates.join(', ')}`;
}

/** One table's rows to write; `write` keeps the rows' type tied to their table's. */
interface Write {
  spec: TableSpec<unknown>;
  rows: unknown[];
}
const write = <R>(spec: TableSpec<R>, rows: R[]): Write => ({
  spec: spec as TableSpec<unknown>,
  rows,
});

/**
 * Writes a batch's rows in one statement (one round trip, one parse): each table's upsert a
 * data-modifying WITH query of it, the skipped events inserted where they were not already.
 */
async function writeRows(
  db: Queryable,
  schema: string,
  writes: Write[],
  skipped: SkippedRow[],
  checkpoint?: CheckpointMove,
): Promise<string | null> {
  const statements: string[] = [];
  const params: string[] = [];
  const json = <R>(spec: TableSpec<R>, rows: R[]) => JSON.stringify(rows.map((r) => rowToJson(spec, r)));
  for (const w of writes) {
    if (w.rows.length === 0) continue;
    params.push(json(w.spec, w.rows));
    statements.push(upsertStatement(schema, w.spec, `$${params.length}`));
  }
  if (skipped.length > 0) {
    params.push(json(SKIPPED, skipped));
    statements.push(
      `insert into ${qualified(schema, SKIPPED.table)} (${SKIPPED.columns.map((c) => c.name).join(', ')})
       select * from jsonb_to_recordset($${params.length}::jsonb) as x(${recordsetType(SKIPPED)})
       on conflict (stream_id, revision) do nothing`,
    );
  }
  if (!checkpoint) {
    if (statements.length === 1) await db.query(statements[0]!, params);
    else if (statements.length > 1)
      await db.query(`with ${statements.map((sql, i) => `w${i} as (${sql})`).join(', ')} select 1`, params);
    return null;
  }
  // In the same statement, the checkpoint moves only from the version the batch was read after
  // (compare and set: any other write, a rebuild's swap among them, changes it); the caller rolls
  // back when it did not move. The NOTIFY is delivered at the commit.
  const { projection, expected, position, events, notify } = checkpoint;
  const param = (value: string) => `$${params.push(value)}`;
  statements.push(
    `update projector_checkpoints
        set position = ${param(position)}, events = events + ${param(String(events))}::bigint, updated_at = now()
      where projection = ${param(projection)} and xmin::text = ${param(expected)}
      returning xmin::text as version`,
  );
  const { rows } = await db.query<{ version: string | null }>(
    `with ${statements.map((sql, i) => `w${i} as (${sql})`).join(', ')}
     select (select version from w${statements.length - 1}) as version${notify ? `, pg_notify(${param(notify)}, '')` : ''}`,
    params,
  );
  return rows[0]?.version ?? null;
}

/** A live batch's checkpoint, moved in the statement that writes the batch's rows. */
export interface CheckpointMove {
  projection: string;
  /** The checkpoint's version (`Checkpoint.version`) the batch was read after: it moves only from there. */
  expected: string;
  position: string;
  events: number;
  /** A channel to NOTIFY (at the commit), if any. */
  notify?: string;
}

export interface BatchOutcome {
  /** Events applied, by type. */
  applied: Map<string, number>;
  skipped: SkippedRow[];
  /**
   * With a `checkpoint` to move: its new version; null when it was not at the version the batch
   * expected (roll back).
   */
  checkpointed: string | null;
}

/**
 * Applies parsed stored events (`incomingFromRecorded`), in order, to the read models in `schema` through `db` (the caller owns the
 * transaction): loads the rows they touch, runs the pure model, writes the rows back.
 */
export async function applyBatch(
  db: pg.ClientBase,
  schema: string,
  incoming: Incoming[],
  known?: SoleWriterRows,
  checkpoint?: CheckpointMove,
): Promise<BatchOutcome> {
  const executionIds = new Set<string>();
  const userIds = new Set<string>();
  for (const i of incoming) {
    if (!i.ok) continue;
    executionIds.add(i.event.metadata.executionId);
    userIds.add(i.event.metadata.userId);
  }
  const state: ExecutionState = { executions: new Map(), users: new Map() };
  const executions = await loadByKeys(
    db,
    schema,
    EXECUTIONS,
    [...executionIds].map((id) => ({ execution_id: id })),
    known,
  );
  const users = await loadByKeys(
    db,
    schema,
    USER_ACTIVITY,
    [...userIds].map((id) => ({ user_id: id })),
    known,
  );
  for (const r of executions) state.executions.set(r.executionId, r);
  for (const r of users) state.users.set(r.userId, r);

  const outcome: BatchOutcome = { applied: new Map(), skipped: [], checkpointed: null };
  const samples: Sample[] = [];
  const touched = new Set<string>();
  for (const i of incoming) {
    if (!i.ok) {
      outcome.skipped.push(i.row);
      continue;
    }
    const result = applyEvent(state, i.event, i.revision);
    if (!result.applied) {
      outcome.skipped.push(refusedRow(i, result.reason));
      continue;
    }
    touched.add(i.event.metadata.executionId);
    outcome.applied.set(i.event.type, (outcome.applied.get(i.event.type) ?? 0) + 1);
    if (result.sample) samples.push(result.sample);
  }

  const minutes = new Map<string, ToolMetricsRow>();
  const totals = new Map<string, ToolMetricsRow>();
  if (samples.length > 0) {
    const minuteKeys = new Map(
      samples.map((s) => [minuteKey(s.tool, s.minute), { tool: s.tool, minute: s.minute }]),
    );
    const tools = new Set(samples.map((s) => s.tool));
    const m = await loadByKeys(db, schema, TOOL_MINUTE, [...minuteKeys.values()], known);
    const tt = await loadByKeys(
      db,
      schema,
      TOOL_TOTAL,
      [...tools].map((tool) => ({ tool })),
      known,
    );
    for (const r of m)
      minutes.set(minuteKey(r.tool, r.minute!), { ...r, latencyHistogram: padded(r.latencyHistogram) });
    for (const r of tt)
      totals.set(r.tool, { ...r, minute: null, latencyHistogram: padded(r.latencyHistogram) });
    for (const s of samples) {
      const mk = minuteKey(s.tool, s.minute);
      minutes.set(mk, addSample(minutes.get(mk) ?? emptyToolMetrics(s.tool, s.minute), s));
      totals.set(s.tool, addSample(totals.get(s.tool) ?? emptyToolMetrics(s.tool, null), s));
    }
  }

  const touchedUsers = new Set([...touched].map((id) => state.executions.get(id)!.userId));
  const writes = [
    write(
      EXECUTIONS,
      [...touched].map((id) => state.executions.get(id)!),
    ),
    write(
      USER_ACTIVITY,
      [...touchedUsers].map((id) => state.users.get(id)!),
    ),
    write(TOOL_MINUTE, [...minutes.values()]),
    write(TOOL_TOTAL, [...totals.values()]),
  ];
  // The only writer holds its rows and writes those it forgets (SoleWriterRows); others write all.
  const due = known ? known.hold(writes) : writes;
  outcome.checkpointed = await writeRows(db, schema, due, outcome.skipped, checkpoint);
  return outcome;
}

/** A histogram written by an older build with fewer buckets reads as full length. */
function padded(h: number[]): number[] {
  if (h.length >= LATENCY_BUCKETS) return h;
  const out = emptyHistogram();
  h.forEach((n, i) => (out[i] = n));
  return out;
}

/** Every row of every read model in `schema`, in dump order. Use one snapshot for a consistent dump. */
export async function dumpReadModels(db: Queryable, schema: string = LIVE_SCHEMA): Promise<ReadModelDump> {
  const all = async <R>(spec: TableSpec<R>): Promise<R[]> => {
    const { rows } = await db.query<Record<string, unknown>>(
      `select * from ${qualified(schema, spec.table)}`,
    );
    return rows.map((r) => rowFromDb(spec, r));
  };
  const executions = await all(EXECUTIONS);
  const userActivity = await all(USER_ACTIVITY);
  const toolMetricsByMinute = await all(TOOL_MINUTE);
  const toolMetrics = (await all(TOOL_TOTAL)).map((r) => ({ ...r, minute: null }));
  const skipped = await all(SKIPPED);
  return normalizeDump({ executions, userActivity, toolMetricsByMinute, toolMetrics, skipped });
}

/** Row mapping for the query API. */
export const rowMappers = {
  execution: (r: Record<string, unknown>): ExecutionRow => rowFromDb(EXECUTIONS, r),
  userActivity: (r: Record<string, unknown>): UserActivityRow => rowFromDb(USER_ACTIVITY, r),
  toolMetrics: (r: Record<string, unknown>): ToolMetricsRow => ({
    ...rowFromDb(TOOL_TOTAL, r),
    minute: null,
  }),
  toolMinute: (r: Record<string, unknown>): ToolMetricsRow => rowFromDb(TOOL_MINUTE, r),
};
