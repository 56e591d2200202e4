import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import type pg from 'pg';
import { USER_STREAM_PREFIX } from '../../contracts/index.ts';
import { loadConfig } from '../../lib/config.ts';
import { createPool, migrate } from '../../lib/db.ts';
import {
  comparePositions,
  formatPosition,
  parsePosition,
  type EventStore,
  type RecordedEvent,
  type RecordedEventText,
} from '../../lib/eventstore/types.ts';
import { createLogger } from '../../lib/log.ts';
import {
  ensureCheckpoint,
  readCheckpoint,
  rebuildLockKey,
  touchCheckpoint,
  writeCheckpoint,
} from './checkpoint.ts';
import { ProjectorStoreEnv } from './config.ts';
import { LIVE_SCHEMA, PROJECTION_NAME, projectorMigrations } from './migrations.ts';
import type { Log } from './runner.ts';
import { incomingFromParsed, incomingFromRecorded, type Incoming } from './model.ts';
import {
  parseText,
  sharedEventThreads,
  THREADED_FROM_EVENTS,
  type EventThreads,
} from '../../lib/threads/events.ts';
import { applyBatch, flushRows, qualified, SoleWriterRows } from './sql.ts';
import { openEventStore } from './store.ts';

/** Statements writing the rows held back at the end of a rebuild at once (they fit the default pool of 10). */
const FLUSH_PARALLEL = 4;

/** Where a rebuild builds, and where the replaced model waits to be dropped. */
export const BUILD_SCHEMA = `${LIVE_SCHEMA}_rebuild`;
export const OLD_SCHEMA = `${LIVE_SCHEMA}_old`;

export interface RebuildOptions {
  pool: pg.Pool;
  store: EventStore;
  logger?: Log;
  batchSize?: number;
  projection?: string;
  /**
   * Where events are parsed: worker threads, or null for this thread. Default: the process's pool
   * (EVENT_THREADS, lib/threads/events.ts).
   */
  threads?: EventThreads | null;
  /**
   * How many of the rows it touched the rebuild keeps in memory (sql.ts `SoleWriterRows`), so that
   * applying a batch rarely reads its rows back from the new schema, and writes a row only once it
   * is forgotten or the build is done. Default 20,000.
   */
  rememberedRows?: number;
  /** Told the events re-projected so far after each batch of the passes before the swap. */
  onProgress?: (events: number) => void;
}

export interface RebuildResult {
  /** Events applied or skipped into the new model. */
  events: number;
  /** The checkpoint the new model was swapped in at. */
  position: string | null;
  durationMs: number;
  /** Rows looked up in the new schema: those the rebuild no longer remembered (`rememberedRows`). */
  rowsReadBack: number;
}

export class RebuildBusyError extends Error {
  readonly code = 'REBUILD_BUSY';
  constructor() {
    super('another rebuild of this projection is running');
    this.name = 'RebuildBusyError';
  }
}

/**
 * Re-projects every user-stream event from position zero into a fresh schema (a copy of the live
 * tables' structure), then swaps it in: in one transaction that holds the checkpoint row (so the
 * live projector is between batches), the new model catches up to the live checkpoint and the two
 * schemas trade names. Readers see the old model or the new one, never a mix or a half.
 */
export async function rebuildReadModels(options: RebuildOptions): Promise<RebuildResult> {
  const { pool, store } = options;
  const projection = options.projection ?? PROJECTION_NAME;
  const batchSize = options.batchSize ?? 1000;
  const log = options.logger;
  const started = Date.now();
  const threads = options.threads !== undefined ? options.threads : sharedEventThreads();

  const session = await pool.connect();
  try {
    const { rows } = await session.query<{ ok: boolean }>(
      'select pg_try_advisory_lock(hashtextextended($1, 0)) as ok',
      [rebuildLockKey(projection)],
    );
    if (!rows[0]?.ok) throw new RebuildBusyError();

    await pool.query(`drop schema if exists ${BUILD_SCHEMA} cascade`);
    await pool.query(`drop schema if exists ${OLD_SCHEMA} cascade`);
    await copySchemaStructure(pool, LIVE_SCHEMA, BUILD_SCHEMA);
    await ensureCheckpoint(pool, projection);

    let position: string | null = null;
    let events = 0;
    let applied = 0;
    // The new schema is the rebuild's alone until the swap: what it wrote, it need not read back.
    const known = new SoleWriterRows(options.rememberedRows);
    const inOwnTransaction = async (batch: Incoming[]) => {
      const client = await pool.connect();
      try {
        // Short transactions: an open one holds back the event store's visibility horizon.
        await client.query('begin');
        await applyBatch(client, BUILD_SCHEMA, batch, known);
        await client.query('commit');
      } catch (e) {
        await client.query('rollback').catch(() => undefined);
        throw e;
      } finally {
        client.release();
      }
      applied += batch.length;
      options.onProgress?.(applied);
    };
    // Catch up outside the swap until a pass finds little new, so the swap itself is short.
    for (let pass = 0; pass < 10; pass++) {
      const r = await project(store, position, null, batchSize, inOwnTransaction, threads);
      position = r.position ?? position;
      events += r.events;
      log?.info({ pass, events, position }, 'rebuild pass done');
      if (r.events < batchSize) break;
    }
    // The rows held back (SoleWriterRows) are written before the swap, which then writes only
    // those its own catch-up touched.
    await flushRows(pool, BUILD_SCHEMA, known, FLUSH_PARALLEL);

    const client = await pool.connect();
    try {
      await client.query('begin');
      const live = await readCheckpoint(client, projection, true);
      if (
        live.position !== null &&
        (position === null || comparePositions(parsePosition(live.position), parsePosition(position)) > 0)
      ) {
        const r = await project(
          store,
          position,
          live.position,
          batchSize,
          (batch) => applyBatch(client, BUILD_SCHEMA, batch, known).then(() => undefined),
          threads,
        );
        position = r.position ?? position;
        events += r.events;
        await flushRows(client, BUILD_SCHEMA, known);
      }
      await client.query(`alter schema ${LIVE_SCHEMA} rename to ${OLD_SCHEMA}`);
      await client.query(`alter schema ${BUILD_SCHEMA} rename to ${LIVE_SCHEMA}`);
      // Written also with nothing projected: a live batch whose rows were read before the swap
      // (from the tables renamed away) compares the row's version, which the lock alone leaves.
      if (position !== null) await writeCheckpoint(client, projection, position, events);
      else await touchCheckpoint(client, projection);
      await client.query('commit');
    } catch (e) {
      await client.query('rollback').catch(() => undefined);
      throw e;
    } finally {
      client.release();
    }
    // Readers still inside a query on the old tables finish first: the drop waits for them.
    await pool.query(`drop schema if exists ${OLD_SCHEMA} cascade`);
    const result = { events, position, durationMs: Date.now() - started, rowsReadBack: known.counts.read };
    log?.info(result, 'read models rebuilt and swapped in');
    return result;
  } finally {
    const unlocked = await session
      .query('select pg_advisory_unlock(hashtextextended($1, 0))', [rebuildLockKey(projection)])
      .then(
        () => true,
        () => false,
      );
    // A session whose unlock failed may still hold the lock: end it rather than pool it.
    session.release(!unlocked);
  }
}

/** Empty copies of every table of `source` (columns, defaults, constraints, indexes) in a new schema. */
export async function copySchemaStructure(
  db: pg.Pool | pg.ClientBase,
  source: string,
  target: string,
): Promise<void> {
  const { rows } = await db.query<{ tablename: string }>(
    'select tablename from pg_tables where schemaname = $1 order by tablename',
    [source],
  );
  if (rows.length === 0)
    throw new Error(`schema ${source} has no tables: run the projector migrations first`);
  await db.query(`create schema ${target}`);
  for (const { tablename } of rows) {
    await db.query(
      `create table ${qualified(target, tablename)} (like ${qualified(source, tablename)} including all)`,
    );
  }
}

/**
 * Feeds user-stream events after `after` (exclusive), up to and including `upTo` when given, to
 * `apply` in batches, parsed. Batches are applied one at a time, in order; while one is written,
 * the next ones are read and parsed (with threads, one per thread at a time). Returns the last position applied and how many events.
 */
function project(
  store: EventStore,
  after: string | null,
  upTo: string | null,
  batchSize: number,
  apply: (batch: Incoming[]) => Promise<void>,
  threads: EventThreads | null,
): Promise<{ position: string | null; events: number }> {
  const from = { fromPosition: after === null ? ('start' as const) : parsePosition(after) };
  // With threads, the JSON is left as text where the store can: the threads parse it, and a
  // string costs this thread little to pass on (where it would parse, then copy, the objects).
  if (threads && store.readAllText)
    return projectFrom(store.readAllText(from), after, upTo, batchSize, apply, {
      here: (events) => events.map((e) => incomingFromParsed(e, parseText(e))),
      threads: async (events) => {
        const parsed = await threads.parseText(events);
        return events.map((e, i) => incomingFromParsed(e, parsed[i]!));
      },
      pool: threads,
    });
  return projectFrom(store.readAll(from), after, upTo, batchSize, apply, {
    here: (events) => events.map(incomingFromRecorded),
    threads: async (events) => {
      const parsed = await threads!.parse(events);
      return events.map((e, i) => incomingFromParsed(e, parsed[i]!));
    },
    pool: threads,
  });
}

/** How a batch of stored events becomes Incoming: in this thread, or on the worker threads. */
interface Parsing<E> {
  here: (events: E[]) => Incoming[];
  threads: (events: E[]) => Promise<Incoming[]>;
  pool: EventThreads | null;
}

async function projectFrom<E extends RecordedEvent | RecordedEventText>(
  read: AsyncIterable<E>,
  after: string | null,
  upTo: string | null,
  batchSize: number,
  apply: (batch: Incoming[]) => Promise<void>,
  parsing: Parsing<E>,
): Promise<{ position: string | null; events: number }> {
  const limit = upTo === null ? null : parsePosition(upTo);
  let batch: E[] = [];
  let last: string | null = null;
  let events = 0;
  const parse = parser(parsing);
  // Batches parsed and waiting to be written, in order: with threads, one per thread and one more
  // (so each thread has a batch while one is written); without, the one being written.
  const depth = parsing.pool ? parsing.pool.size + 1 : 1;
  const queued: Array<Promise<void>> = [];
  let writing: Promise<void> = Promise.resolve();
  const flush = async () => {
    if (batch.length === 0) return;
    const full = batch;
    const end = formatPosition(full[full.length - 1]!.position);
    batch = [];
    const parsed = parse(full);
    parsed.catch(() => undefined); // handled through `writing`
    // Written one after the other, in order; a failed write fails every write queued after it.
    writing = writing
      .then(() => parsed)
      .then(apply)
      .then(() => {
        events += full.length;
        last = end;
      });
    writing.catch(() => undefined); // handled when awaited: below, or at the end
    queued.push(writing);
    if (queued.length > depth) await queued.shift(); // an older batch written (or its failure, thrown here)
  };
  try {
    for await (const e of read) {
      if (after !== null && formatPosition(e.position) === after) continue;
      if (limit && comparePositions(e.position, limit) > 0) break;
      if (!e.streamId.startsWith(USER_STREAM_PREFIX)) continue;
      batch.push(e);
      if (batch.length >= batchSize) await flush();
    }
    await flush();
  } finally {
    // A failed read never leaves a batch being written behind it (its client, its lock).
    await writing.catch(() => undefined);
  }
  await writing;
  return { position: last, events };
}

/**
 * Parses a batch (schema validation, the CPU-heavy part of reading) on the worker threads once they
 * have started, and in this thread until then or without threads. Both give the same Incoming. The
 * threads are started once THREADED_FROM_EVENTS events have been parsed here.
 */
function parser<E>(parsing: Parsing<E>): (events: E[]) => Promise<Incoming[]> {
  const threads = parsing.pool;
  let started = false;
  let parsedHere = 0;
  const start = () =>
    threads?.warm().then(
      () => (started = true),
      () => undefined, // threads that cannot start leave the parsing here
    );
  return async (events) => {
    if (!threads || !(started || threads.isWarm)) {
      // A short rebuild (a test, a young store) never pays for starting the threads.
      if (parsedHere < THREADED_FROM_EVENTS && (parsedHere += events.length) >= THREADED_FROM_EVENTS)
        void start();
      return parsing.here(events);
    }
    return parsing.threads(events);
  };
}

/** How often the CLI says how far it is (stderr), while events are re-projected. */
const PROGRESS_INTERVAL_MS = 2_000;

/**
 * `npx tsx services/projector/rebuild.ts [--json]` (or `npm run rebuild`): rebuild with the
 * projector's configuration. Says how far it is on stderr every 2 s, then what it did in one line
 * on stdout; `--json` prints the `RebuildResult` instead. The store's own log (JSON) says only
 * warnings and errors unless LOG_LEVEL is set.
 */
export async function rebuildCli(args = process.argv.slice(2)): Promise<void> {
  const json = args.includes('--json');
  const unknown = args.filter((a) => a !== '--json');
  if (unknown.length > 0) {
    process.stderr.write(`error: unknown argument ${unknown[0]}\nusage: npm run rebuild [-- --json]\n`);
    process.exitCode = 2;
    return;
  }
  const config = loadConfig(ProjectorStoreEnv);
  const logger = createLogger('projector-rebuild', process.env['LOG_LEVEL'] ?? 'warn');
  const pool = createPool(config.DATABASE_URL, { application: 'toolbus-projector-rebuild' });
  const store = await openEventStore(config, logger);
  const started = Date.now();
  let toldAt = started;
  const onProgress = (events: number) => {
    const now = Date.now();
    if (now - toldAt < PROGRESS_INTERVAL_MS) return;
    toldAt = now;
    const rate = Math.round(events / ((now - started) / 1000));
    process.stderr.write(
      `rebuild: ${events.toLocaleString('en')} events re-projected (${rate.toLocaleString('en')}/s)\n`,
    );
  };
  try {
    await migrate(pool, 'projector', projectorMigrations);
    const result = await rebuildReadModels({
      pool,
      store,
      batchSize: Math.max(config.PROJECTION_BATCH_SIZE, 100),
      onProgress,
    });
    process.stdout.write(
      json
        ? `${JSON.stringify(result)}\n`
        : `rebuilt the read models from ${result.events.toLocaleString('en')} events in ` +
            `${(result.durationMs / 1000).toFixed(1)} s and swapped them in` +
            `${result.position === null ? ' (the store has no events)' : ` at position ${result.position}`}\n`,
    );
  } finally {
    await store.close();
    await pool.end();
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) {
  rebuildCli().catch((e: unknown) => {
    process.stderr.write(`rebuild failed: ${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  });
}
