import { spawn } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import {
  envelopeEvents,
  requestContext,
  GENESIS_HASH,
  userStream,
  type ToolEvent,
  type ToolEventBody,
} from '../../contracts/index.ts';
import { createPostgresEventStore } from '../../lib/eventstore/postgres.ts';
import type { EventStore } from '../../lib/eventstore/types.ts';
import { createTestDatabase } from '../../test/support/postgres.ts';
import { recordExecution } from '../../test/support/events.ts';

/**
 * Test helpers of the auditor's tests (not used by the service): a fresh database with an event
 * store, histories written the way the dispatcher writes them, tampering done the way an attacker
 * with database access would (plain SQL), and the CLI run as a child process.
 */
type Teardown = { teardown(fn: () => Promise<void> | void): void };

export interface TestStore {
  url: string;
  store: EventStore;
  /** A raw connection pool, for tampering. */
  sql: pg.Pool;
}

export async function openTestStore(t: Teardown): Promise<TestStore> {
  const db = await createTestDatabase();
  const store = await createPostgresEventStore({ connectionString: db.url, poolSize: 4 });
  const sql = new pg.Pool({ connectionString: db.url, max: 2 });
  sql.on('error', () => undefined);
  // Everything connected to the database is closed before it is dropped (a drop ends connections).
  t.teardown(async () => {
    await store.close();
    await sql.end();
    await db.drop();
  });
  return { url: db.url, store, sql };
}

export const OUTCOMES = ['completed', 'failed', 'refused', 'completed'] as const;

/** `executions` executions (completed, failed, refused in turn), an hour apart from `start`. */
export async function recordHistory(
  store: EventStore,
  userId: string,
  executions: number,
  start = new Date('2025-03-01T10:00:00.000Z'),
  requestPrefix = 'req',
): Promise<{ events: number; executionIds: string[] }> {
  let events = 0;
  const executionIds: string[] = [];
  for (let i = 0; i < executions; i++) {
    const r = await recordExecution(store, userId, {
      requestId: `${requestPrefix}-${i}`,
      tool: i % 2 === 0 ? 'search' : 'send_mail',
      outcome: OUTCOMES[i % OUTCOMES.length]!,
      at: new Date(start.getTime() + i * 3_600_000),
      args: { query: `question ${i}` },
    });
    events += r.events.length;
    executionIds.push(r.executionId);
  }
  return { events, executionIds };
}

interface Row {
  revision: number;
  event_id: string;
  event_type: string;
  data: string;
  metadata: string;
}

export async function readRow(sql: pg.Pool, userId: string, revision: number): Promise<Row> {
  const { rows } = await sql.query<Row>(
    `select revision::int as revision, event_id::text, event_type, data::text as data, metadata::text as metadata
       from toolbus_events where stream_id = $1 and revision = $2`,
    [userStream(userId), revision],
  );
  if (!rows[0]) throw new Error(`no event at revision ${revision}`);
  return rows[0];
}

/** Changes the stored data of one event, leaving its hash as it was. */
export async function alterData(
  sql: pg.Pool,
  userId: string,
  revision: number,
  change: (data: Record<string, unknown>) => void,
) {
  const row = await readRow(sql, userId, revision);
  const data = JSON.parse(row.data) as Record<string, unknown>;
  change(data);
  await sql.query('update toolbus_events set data = $3::json where stream_id = $1 and revision = $2', [
    userStream(userId),
    revision,
    JSON.stringify(data),
  ]);
}

/** Deletes one row; with `renumber`, closes the gap (later revisions move down, the stream head too). */
export async function deleteEvent(
  sql: pg.Pool,
  userId: string,
  revision: number,
  renumber = false,
): Promise<void> {
  const stream = userStream(userId);
  await sql.query('delete from toolbus_events where stream_id = $1 and revision = $2', [stream, revision]);
  if (renumber) {
    // Two steps, since (stream_id, revision) is unique at every row.
    await sql.query(
      'update toolbus_events set revision = -revision - 1000 where stream_id = $1 and revision > $2',
      [stream, revision],
    );
    await sql.query(
      'update toolbus_events set revision = -(revision + 1000) - 1 where stream_id = $1 and revision < 0',
      [stream],
    );
    await sql.query('update toolbus_streams set revision = revision - 1 where stream_id = $1', [stream]);
  }
}

/** Swaps two events: id, type, data and metadata change rows, revisions stay. */
export async function swapEvents(sql: pg.Pool, userId: string, a: number, b: number): Promise<void> {
  const stream = userStream(userId);
  const [ra, rb] = [await readRow(sql, userId, a), await readRow(sql, userId, b)];
  const put = (rev: number, r: Pick<Row, 'event_id' | 'event_type' | 'data' | 'metadata'>) =>
    sql.query(
      `update toolbus_events set event_id = $3::uuid, event_type = $4, data = $5::json, metadata = $6::json
        where stream_id = $1 and revision = $2`,
      [stream, rev, r.event_id, r.event_type, r.data, r.metadata],
    );
  await put(a, { ...ra, event_id: randomUUID() });
  await put(b, ra);
  await put(a, rb);
}

/** Deletes every event from `fromRevision` on and sets the stream head to match. */
export async function truncateTail(sql: pg.Pool, userId: string, fromRevision: number): Promise<void> {
  const stream = userStream(userId);
  await sql.query('delete from toolbus_events where stream_id = $1 and revision >= $2', [
    stream,
    fromRevision,
  ]);
  await sql.query('update toolbus_streams set revision = $2 where stream_id = $1', [
    stream,
    fromRevision - 1,
  ]);
}

/**
 * One execution's three events (requested, executing, completed) with `pad` bytes of arguments and
 * result, chained after `prevHash` (chain them again to place them elsewhere).
 */
export function executionEvents(userId: string, i: number, at: number, pad: number, prevHash?: string) {
  const requestId = `bulk-${i}`;
  const filler = 'x'.repeat(pad);
  const bodies: ToolEventBody[] = [
    {
      type: 'ToolRequested',
      data: { tool: 'search', version: '1.0.0', args: { query: `q${i}`, filler }, redacted: [] },
    },
    { type: 'ToolExecuting', data: { attempt: 1, runner: 'bulk', timeoutMs: 1000 } },
    {
      type: 'ToolCompleted',
      data: { result: { hits: i, filler }, redacted: [], durationMs: 3, cached: false },
    },
  ];
  const occurredAt = (k: number) => new Date(at + k).toISOString();
  return envelopeEvents(bodies, requestContext(userId, requestId, occurredAt), prevHash);
}

/**
 * Writes `executions` chained executions (3 events each) straight into toolbus_events with bulk
 * inserts, as the dispatcher would have appended them one by one, but in seconds.
 */
export async function bulkInsertHistory(
  sql: pg.Pool,
  userId: string,
  executions: number,
  options: { pad?: number; batch?: number } = {},
): Promise<{ events: number; lastHash: string }> {
  const stream = userStream(userId);
  const batch = options.batch ?? 2000;
  let prevHash = GENESIS_HASH;
  let revision = 0;
  const t0 = Date.parse('2025-01-01T00:00:00.000Z');
  for (let start = 0; start < executions; start += batch) {
    const events: ToolEvent[] = [];
    for (let i = start; i < Math.min(executions, start + batch); i++) {
      events.push(...executionEvents(userId, i, t0 + i * 1000, options.pad ?? 200, prevHash));
      prevHash = events[events.length - 1]!.metadata.hash;
    }
    await sql.query(
      `insert into toolbus_events (stream_id, revision, event_id, event_type, data, metadata)
       select $1, x.rev, x.id, x.type, x.data::json, x.meta::json
         from unnest($2::bigint[], $3::uuid[], $4::text[], $5::text[], $6::text[]) as x(rev, id, type, data, meta)`,
      [
        stream,
        events.map((_, k) => revision + k),
        events.map((e) => e.id),
        events.map((e) => e.type),
        events.map((e) => JSON.stringify(e.data)),
        events.map((e) => JSON.stringify({ schemaVersion: e.schemaVersion, ...e.metadata })),
      ],
    );
    revision += events.length;
  }
  await sql.query(
    `insert into toolbus_streams (stream_id, revision) values ($1, $2)
       on conflict (stream_id) do update set revision = excluded.revision`,
    [stream, revision - 1],
  );
  return { events: revision, lastHash: prevHash };
}

export const CLI = fileURLToPath(new URL('./cli.ts', import.meta.url));
/** The CLI's signing key in tests: random per run (no key has a default). */
export const SIGNING_KEY = randomBytes(32).toString('hex');

export interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI as a child process (node + tsx), with the test database (never the shared default) and key. */
export function runCli(
  args: string[],
  env: { DATABASE_URL: string } & Record<string, string>,
  options: { onStdout?: (chunk: Buffer) => void; keepStdout?: boolean; onSpawn?: (pid: number) => void } = {},
): Promise<CliRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', CLI, ...args], {
      env: { PATH: process.env['PATH'] ?? '', AUDIT_SIGNING_KEY: SIGNING_KEY, LOG_LEVEL: 'warn', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    if (child.pid !== undefined) options.onSpawn?.(child.pid);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      options.onStdout?.(d);
      if (options.keepStdout !== false) stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}
