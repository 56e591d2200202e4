import { randomUUID } from 'node:crypto';
import pg from 'pg';
import { createPool, migrate } from '../db.ts';
import { eventStoreMigrations } from './postgres.migrations.ts';
import {
  assertAppendable,
  assertKey,
  assertStreamName,
  EventStoreError,
  WrongExpectedRevisionError,
  type AppendResult,
  type EventData,
  type EventStore,
  type ExpectedRevision,
  type Json,
  type Position,
  type ReadAllOptions,
  type ReadStreamOptions,
  type RecordedEvent,
  type RecordedEventText,
  type StreamInfo,
  type SubscribeOptions,
  type Subscription,
} from './types.ts';
import { backoffMs } from '../retry.ts';
import { GroupCommitter, type GroupCommitOptions, type PendingAppend } from './postgres.groupcommit.ts';

export interface PostgresEventStoreOptions {
  connectionString: string;
  poolSize?: number;
  /** PostgreSQL's application_name of its sessions (default toolbus-eventstore). */
  application?: string;
  /** Rows per read round trip (reads, catch-up). */
  batchSize?: number;
  /** How often a live subscriber looks for new events when no notification arrives. */
  pollIntervalMs?: number;
  /** Told about transient errors that a subscription retries through (a lost connection). */
  onError?: (error: Error) => void;
  /**
   * Group commit (docs/decisions/0028-group-commit.md): appends of different streams made while
   * earlier commits are in flight share one transaction. On by default; `false` commits every
   * append on its own (`EVENTSTORE_GROUP_COMMIT=0` for the services).
   */
  groupCommit?: boolean | GroupCommitOptions;
}

/** A row of toolbus_append. */
interface AppendRow {
  next_revision: number;
  commit_position: string | null;
  prepare_position: number | null;
  written: boolean;
}

const APPEND_COLUMNS = 'next_revision, commit_position, prepare_position, written';

/** A row of toolbus_append_batch: one per member, `conflict` where its expected revision did not hold. */
interface BatchRow extends AppendRow {
  member: number;
  conflict: boolean;
}

/**
 * SQLSTATEs of errors that end the session or may come after the commit (FATAL, PANIC): a
 * connection exception (08), an administrator's or a crash's shutdown, a dropped database, an
 * idle-session timeout (57P), a system or I/O error (58), an internal error (XX), a transaction
 * or idle-in-transaction timeout (25P03, 25P04), insufficient resources (53).
 */
const SESSION_ENDING = /^(08|57P|58|XX|53|25P0[34])/;

/**
 * An error the session survived (severity ERROR): the statement's transaction was rolled back,
 * nothing of it was committed. Not so a lost connection or a session the server ended (FATAL),
 * whose commit may have happened before the answer was lost. Told by the SQLSTATE, never
 * translated, as well as by the severity, which the server words in its lc_messages language
 * ("FEHLER", "ERREUR"): a German server's 23505 must fall back member by member too.
 */
export const refusedWholly = (e: unknown): boolean =>
  e instanceof pg.DatabaseError &&
  e.severity !== 'FATAL' &&
  e.severity !== 'PANIC' &&
  typeof e.code === 'string' &&
  /^[0-9A-Z]{5}$/.test(e.code) &&
  !SESSION_ENDING.test(e.code);

const resultOf = (row: AppendRow): AppendResult => ({
  nextRevision: row.next_revision,
  position:
    row.commit_position === null
      ? null
      : { commit: BigInt(row.commit_position), prepare: BigInt(row.prepare_position!) },
  written: row.written,
});

// created_at as epoch milliseconds: a number is far cheaper to read than timestamptz text.
const COLUMNS = `seq, tx_id::text as tx, stream_id, revision, event_id, event_type, data, metadata,
  (extract(epoch from created_at) * 1000)::float8 as created_ms`;

/**
 * A subscription's page: the events after a position ($1 commit, $2 prepare) below the visibility
 * horizon, filtered by stream prefixes ($3, LIKE patterns), event types ($4) and a snapshot whose
 * committed transactions are left out ($6), at most $5 of them; every row also carries the horizon
 * and whether any event is stored at or past it (`behind`). A subscription runs it at every wake,
 * so each part stays an index lookup whatever the table holds: `behind` reads the newest event
 * (an EXISTS on `tx_id >= horizon` was planned as a scan of the whole table, the horizon being
 * unknown to the planner: most of the database's CPU per dispatch once the table was large).
 */
export const FETCH_AFTER_SQL = `with h as (select pg_snapshot_xmin(pg_current_snapshot()) as xmin)
   select ${COLUMNS}, h.xmin::text as horizon,
          coalesce((select b.tx_id from toolbus_events b order by b.tx_id desc, b.seq desc limit 1) >= h.xmin,
                   false) as behind
     from h
     left join lateral (
       select * from toolbus_events
        where (tx_id, seq) > ($1::text::xid8, $2::bigint) and tx_id < h.xmin
          and ($3::text[] is null or stream_id like any($3::text[]))
          and ($4::text[] is null or event_type = any($4::text[]))
          and ($6::text is null or not pg_visible_in_snapshot(tx_id, $6::text::pg_snapshot))
        order by tx_id, seq limit $5) e on true`;

const MAX_SEQ = 9223372036854775807n;
/**
 * The channel that wakes subscriptions: NOTIFYed after appends, and by any writer whose transaction
 * held the visibility horizon back (the projector's batches), since its commit moves the horizon.
 */
export const EVENTS_CHANNEL = 'toolbus_events';
/** How soon a subscription first looks again while committed events wait behind the visibility horizon. */
const BEHIND_HORIZON_POLL_MS = 20;
/** A subscription whose reads fail waits a random time below 100 ms doubling up to 5 s, then reads again. */
const SUBSCRIPTION_RETRY = { minMs: 100, maxMs: 5_000 };

interface Row {
  seq: number;
  tx: string;
  stream_id: string;
  revision: number;
  event_id: string;
  event_type: string;
  data: Json;
  metadata: Json;
  created_ms: number;
}

/** Type parsers that leave json and jsonb values as the text PostgreSQL sends. */
const JSON_OIDS = new Set<number>([pg.types.builtins.JSON, pg.types.builtins.JSONB]);
const asText = (value: string): string => value;
const JSON_AS_TEXT = {
  getTypeParser: (oid: number, format?: 'text' | 'binary'): ((value: string) => unknown) =>
    JSON_OIDS.has(oid) ? asText : (pg.types.getTypeParser(oid, format) as (value: string) => unknown),
};

const positionOf = (r: Row): Position => ({ commit: BigInt(r.tx), prepare: BigInt(r.seq) });

const toRecorded = (r: Row): RecordedEvent => ({
  id: r.event_id,
  type: r.event_type,
  data: r.data,
  metadata: r.metadata,
  streamId: r.stream_id,
  revision: r.revision,
  position: positionOf(r),
  created: new Date(r.created_ms),
});

/**
 * Stored events page by page: `read(cursor, limit, first)` fetches a page, `next(lastRow)` names
 * where the next one starts. From the second page on, the next page is read while the caller
 * handles the current one; most readers stop within the first page and are not read ahead. A
 * reader that stops early waits for the page in flight, so nothing runs behind it.
 */
async function* paged<C>(
  start: C,
  maxCount: number,
  pageSize: number,
  read: (cursor: C, limit: number, first: boolean) => Promise<Row[]>,
  next: (last: Row) => C,
): AsyncGenerator<RecordedEvent> {
  let remaining = maxCount;
  if (remaining <= 0) return;
  const fetch = (cursor: C, first: boolean) => {
    const limit = Math.min(pageSize, remaining);
    const rows = read(cursor, limit, first);
    // A page read ahead that fails while the caller is busy is not an unhandled rejection: the
    // failure is thrown where the page is awaited.
    rows.catch(() => undefined);
    return { limit, rows };
  };
  let pending = fetch(start, true);
  try {
    for (let page = 1; ; page++) {
      const rows = await pending.rows;
      remaining -= rows.length;
      if (rows.length < pending.limit || remaining <= 0) {
        for (const row of rows) yield toRecorded(row);
        return;
      }
      const cursor = next(rows[rows.length - 1]!);
      if (page > 1) pending = fetch(cursor, false);
      for (const row of rows) yield toRecorded(row);
      if (page === 1) pending = fetch(cursor, false);
    }
  } finally {
    await pending.rows.catch(() => undefined);
  }
}

/** Creates the store and runs its migrations. */
export async function createPostgresEventStore(options: PostgresEventStoreOptions): Promise<EventStore> {
  const pool = createPool(options.connectionString, {
    max: options.poolSize ?? 10,
    application: options.application ?? 'toolbus-eventstore',
  });
  try {
    await migrate(pool, 'eventstore', eventStoreMigrations);
  } catch (e) {
    await pool.end();
    throw e;
  }
  return new PostgresEventStore(pool, options);
}

class PostgresEventStore implements EventStore {
  readonly kind = 'postgres';
  private readonly batchSize: number;
  private readonly pollIntervalMs: number;
  private readonly listeners = new Set<() => void>();
  private readonly subscriptions = new Set<PostgresSubscription>();
  private listenClient: pg.Client | null = null;
  private listenStarting: Promise<void> | null = null;
  private closed = false;
  /** The payload of this store's NOTIFYs, so that its own come back to it as nothing new. */
  private readonly sender = randomUUID();
  /** The NOTIFY on its way, if any; `announceAgain`: more appends committed since it was sent. */
  private announcing: Promise<void> | null = null;
  private announceAgain = false;
  /** Null when group commit is off: every append is its own transaction. */
  private readonly committer: GroupCommitter | null;

  constructor(
    private readonly pool: pg.Pool,
    private readonly options: PostgresEventStoreOptions,
  ) {
    this.batchSize = options.batchSize ?? 500;
    this.pollIntervalMs = options.pollIntervalMs ?? 100;
    const group = options.groupCommit ?? true;
    this.committer =
      group === false
        ? null
        : new GroupCommitter((batch) => this.commitBatch(batch), group === true ? {} : group);
  }

  async append(stream: string, events: EventData[], expected: ExpectedRevision): Promise<AppendResult> {
    assertAppendable(stream, events, expected);
    return this.committer
      ? this.committer.append(stream, events, expected)
      : this.appendOne(stream, events, expected);
  }

  /** One append, one transaction: `toolbus_append`. */
  private async appendOne(
    stream: string,
    events: EventData[],
    expected: ExpectedRevision,
  ): Promise<AppendResult> {
    try {
      const { rows } = await this.pool.query<AppendRow>({
        // Named: each connection parses and plans it once (two appends per execution). Its columns
        // are listed: a prepared statement's result may not change, and a later migration could give
        // the function another column while running processes hold the statement.
        name: 'toolbus-append',
        text: `select ${APPEND_COLUMNS} from toolbus_append($1, $2, $3, $4, $5, $6, $7)`,
        values: [
          stream,
          String(expected),
          events.map((e) => e.id),
          events.map((e) => e.type),
          events.map((e) => JSON.stringify(e.data)),
          events.map((e) => JSON.stringify(e.metadata)),
          events.map((e) => e.key ?? null),
        ],
      });
      const row = rows[0]!;
      if (row.written) this.announce();
      return resultOf(row);
    } catch (e) {
      const err = e as pg.DatabaseError;
      if (err.code === 'TB001') throw new WrongExpectedRevisionError(stream, expected, Number(err.detail));
      if (err.code === '23505') {
        // An event id already stored in another stream by a concurrent append.
        throw new WrongExpectedRevisionError(stream, expected, null);
      }
      throw e;
    }
  }

  /**
   * Several appends (of different streams), one transaction: `toolbus_append_batch`. A member
   * whose expected revision does not hold fails alone. When the server refuses the whole
   * transaction (an event id that a concurrent transaction of another stream holds, 23505; a
   * deadlock on such ids; any other error the session survives), nothing of it was committed:
   * every member is appended again on its own, so that only the one at fault fails. A lost
   * connection or a session the server ended (FATAL) may have committed or not: every member fails,
   * as each append would have failed on its own, and its caller's retry is recognised as one.
   */
  private async commitBatch(batch: PendingAppend[]): Promise<void> {
    if (batch.length === 1) {
      const p = batch[0]!;
      await this.appendOne(p.stream, p.events, p.expected).then(p.resolve, p.reject);
      return;
    }
    let rows: BatchRow[];
    try {
      const events = batch.flatMap((p) => p.events);
      ({ rows } = await this.pool.query<BatchRow>({
        name: 'toolbus-append-batch',
        text: `select member, ${APPEND_COLUMNS}, conflict from toolbus_append_batch($1, $2, $3, $4, $5, $6, $7, $8)`,
        values: [
          batch.map((p) => p.stream),
          batch.map((p) => String(p.expected)),
          batch.map((p) => p.events.length),
          events.map((e) => e.id),
          events.map((e) => e.type),
          events.map((e) => JSON.stringify(e.data)),
          events.map((e) => JSON.stringify(e.metadata)),
          events.map((e) => e.key ?? null),
        ],
      }));
    } catch (e) {
      if (!refusedWholly(e)) throw e;
      await Promise.all(
        batch.map((p) => this.appendOne(p.stream, p.events, p.expected).then(p.resolve, p.reject)),
      );
      return;
    }
    if (rows.length !== batch.length) {
      throw new EventStoreError(
        `toolbus_append_batch answered ${rows.length} rows for ${batch.length} appends`,
        'BATCH_MISMATCH',
      );
    }
    if (rows.some((r) => r.written)) this.announce();
    for (const row of rows) {
      const p = batch[row.member - 1]!;
      if (row.conflict) p.reject(new WrongExpectedRevisionError(p.stream, p.expected, row.next_revision));
      else p.resolve(resultOf(row));
    }
  }

  readStream(stream: string, options: ReadStreamOptions = {}): AsyncIterable<RecordedEvent> {
    return this.readStreamAs(stream, options, undefined);
  }

  readStreamText(stream: string, options: ReadStreamOptions = {}): AsyncIterable<RecordedEventText> {
    // The same rows, the json columns not parsed: their strings are what toRecorded carries.
    return this.readStreamAs(
      stream,
      options,
      JSON_AS_TEXT,
    ) as AsyncIterable<unknown> as AsyncIterable<RecordedEventText>;
  }

  private async *readStreamAs(
    stream: string,
    options: ReadStreamOptions,
    types: pg.CustomTypesConfig | undefined,
  ): AsyncIterable<RecordedEvent> {
    assertStreamName(stream);
    const forwards = (options.direction ?? 'forwards') === 'forwards';
    const from: number =
      options.fromRevision === undefined || options.fromRevision === 'start' || options.fromRevision === 'end'
        ? (options.fromRevision ?? (forwards ? 'start' : 'end')) === 'start'
          ? 0
          : Number.MAX_SAFE_INTEGER
        : options.fromRevision;
    const sql = forwards
      ? `select ${COLUMNS} from toolbus_events where stream_id = $1 and revision >= $2 order by revision limit $3`
      : `select ${COLUMNS} from toolbus_events where stream_id = $1 and revision <= $2 order by revision desc limit $3`;
    yield* paged(
      from,
      options.maxCount ?? Infinity,
      this.batchSize,
      (at, limit) =>
        this.pool
          .query<Row>({ text: sql, values: [stream, at, limit], ...(types ? { types } : {}) })
          .then((r) => r.rows),
      (last) => last.revision + (forwards ? 1 : -1),
    );
  }

  /** Through the partial index on (stream_id, event_key, revision), page by page. */
  async *readByKey(stream: string, key: string): AsyncIterable<RecordedEvent> {
    assertStreamName(stream);
    assertKey(key);
    yield* paged(
      0,
      Infinity,
      this.batchSize,
      (from, limit) =>
        this.pool
          .query<Row>(
            `select ${COLUMNS} from toolbus_events
              where stream_id = $1 and event_key = $2 and revision >= $3
              order by revision limit $4`,
            [stream, key, from, limit],
          )
          .then((r) => r.rows),
      (last) => last.revision + 1,
    );
  }

  readAll(options: ReadAllOptions = {}): AsyncIterable<RecordedEvent> {
    return this.readAllAs(options, undefined);
  }

  readAllText(options: ReadAllOptions = {}): AsyncIterable<RecordedEventText> {
    return this.readAllAs(
      options,
      JSON_AS_TEXT,
    ) as AsyncIterable<unknown> as AsyncIterable<RecordedEventText>;
  }

  private async *readAllAs(
    options: ReadAllOptions,
    types: pg.CustomTypesConfig | undefined,
  ): AsyncIterable<RecordedEvent> {
    const forwards = (options.direction ?? 'forwards') === 'forwards';
    const from = options.fromPosition ?? (forwards ? 'start' : 'end');
    const start: Position =
      from === 'start'
        ? { commit: 0n, prepare: 0n }
        : from === 'end'
          ? { commit: MAX_SEQ, prepare: MAX_SEQ }
          : from;
    const order = forwards ? 'asc' : 'desc';
    yield* paged(
      start,
      options.maxCount ?? Infinity,
      this.batchSize,
      (at, limit, first) => {
        // The first page includes the starting position; the next ones start after the last row.
        const op = forwards ? (first ? '>=' : '>') : first ? '<=' : '<';
        return this.pool
          .query<Row>({
            text: `select ${COLUMNS} from toolbus_events
              where (tx_id, seq) ${op} ($1::text::xid8, $2::bigint)
                and tx_id < pg_snapshot_xmin(pg_current_snapshot())
              order by tx_id ${order}, seq ${order} limit $3`,
            values: [at.commit.toString(), at.prepare.toString(), limit],
            ...(types ? { types } : {}),
          })
          .then((r) => r.rows);
      },
      positionOf,
    );
  }

  subscribe(options: SubscribeOptions): Subscription {
    const subscription = new PostgresSubscription(this, options, () =>
      this.subscriptions.delete(subscription),
    );
    if (this.closed) void subscription.close();
    else this.subscriptions.add(subscription);
    return subscription;
  }

  /**
   * The server's current snapshot (as text) and its xmin. A subscriber from 'end' starts at xmin and
   * leaves out the transactions that the snapshot sees as committed: exactly the events that were
   * there when it started, even when older transactions are still running somewhere on the server.
   */
  async currentSnapshot(): Promise<{ snapshot: string; xmin: bigint }> {
    const { rows } = await this.pool.query<{ snapshot: string; xmin: string }>(
      `select s::text as snapshot, pg_snapshot_xmin(s)::text as xmin from pg_current_snapshot() s`,
    );
    const row = rows[0]!;
    return { snapshot: row.snapshot, xmin: BigInt(row.xmin) };
  }

  /** The transaction id of the last committed event, or null when the store is empty. */
  async lastTransaction(): Promise<bigint | null> {
    const { rows } = await this.pool.query<{ tx: string }>(
      `select tx_id::text as tx from toolbus_events order by tx_id desc, seq desc limit 1`,
    );
    return rows[0] ? BigInt(rows[0].tx) : null;
  }

  /**
   * One batch after `after` (exclusive), up to the visibility horizon, and the horizon itself;
   * without the events of the transactions that `exclude` (a snapshot) sees as committed.
   */
  async fetchAfter(
    after: Position,
    filter: SubscribeOptions['filter'],
    limit: number,
    exclude: string | null = null,
  ): Promise<{ rows: RecordedEvent[]; horizon: bigint; behind: boolean }> {
    const prefixes = filter?.streamPrefixes?.map((p) => `${p.replace(/[\\%_]/g, (c) => `\\${c}`)}%`) ?? null;
    const types = filter?.eventTypes ?? null;
    const { rows } = await this.pool.query<Row & { horizon: string; behind: boolean }>({
      // Named: parsing and planning it cost ten times its execution, at every wake of every subscription.
      name: 'toolbus-fetch-after',
      text: FETCH_AFTER_SQL,
      values: [after.commit.toString(), after.prepare.toString(), prefixes, types, limit, exclude],
    });
    const horizon = BigInt(rows[0]!.horizon);
    return {
      rows: rows.filter((r) => r.event_id !== null).map(toRecorded),
      horizon,
      behind: rows[0]!.behind,
    };
  }

  async streamInfo(stream: string): Promise<StreamInfo | null> {
    assertStreamName(stream);
    const { rows } = await this.pool.query<{ revision: number; tx: string; seq: number }>(
      `select e.revision, e.tx_id::text as tx, e.seq from toolbus_streams s
         join toolbus_events e on e.stream_id = s.stream_id and e.revision = s.revision
        where s.stream_id = $1`,
      [stream],
    );
    const row = rows[0];
    return row
      ? { revision: row.revision, position: { commit: BigInt(row.tx), prepare: BigInt(row.seq) } }
      : null;
  }

  async ping(): Promise<void> {
    await this.pool.query('select 1');
  }

  /**
   * Tells every process's subscriptions that events were committed: this process's at once, the
   * others through NOTIFY, sent after the commit and outside its transaction (one per burst of
   * appends, and one at a time), so that appends never queue on PostgreSQL's notification lock.
   * A lost NOTIFY costs a subscriber one poll interval, nothing more.
   */
  private announce(): void {
    this.listeners.forEach((l) => l());
    this.notifyOthers();
  }

  /** One NOTIFY at a time; appends committed while one is on its way ask for one more after it. */
  private notifyOthers(): void {
    if (this.closed) return;
    if (this.announcing) {
      this.announceAgain = true;
      return;
    }
    this.announcing = new Promise<void>((resolve) => setImmediate(resolve))
      // Its own short transaction, which need not wait for the disk: it records nothing.
      .then(() =>
        this.pool.query(
          `begin; set local synchronous_commit = off; select pg_notify('${EVENTS_CHANNEL}', '${this.sender}'); commit`,
        ),
      )
      .then(
        () => undefined,
        (e: unknown) => this.reportError(e as Error),
      )
      .finally(() => {
        this.announcing = null;
        if (this.announceAgain) {
          this.announceAgain = false;
          this.notifyOthers();
        }
      });
  }

  /** Registers a callback run on every committed append (via LISTEN); returns its removal. */
  onAppend(listener: () => void): () => void {
    this.listeners.add(listener);
    void this.ensureListening();
    return () => this.listeners.delete(listener);
  }

  /** Resolves once LISTEN is active (or its attempt failed and a retry is scheduled). */
  listening(): Promise<void> {
    return this.ensureListening();
  }

  private async ensureListening(): Promise<void> {
    if (this.listenClient || this.listenStarting || this.closed) return this.listenStarting ?? undefined;
    this.listenStarting = (async () => {
      const client = new pg.Client({ connectionString: this.options.connectionString });
      try {
        await client.connect();
        // Its own NOTIFY comes back too: this process's subscriptions were woken at the commit.
        client.on('notification', (n) => n.payload !== this.sender && this.listeners.forEach((l) => l()));
        client.on('error', (e) => this.reconnectListener(client, e));
        client.on('end', () => this.reconnectListener(client, new Error('LISTEN connection ended')));
        await client.query(`listen ${EVENTS_CHANNEL}`);
        if (this.closed) await client.end();
        else this.listenClient = client;
      } catch (e) {
        await client.end().catch(() => undefined);
        this.options.onError?.(e as Error);
        setTimeout(() => void this.ensureListening(), 1000).unref();
      } finally {
        this.listenStarting = null;
      }
    })();
    return this.listenStarting;
  }

  private reconnectListener(client: pg.Client, error: Error): void {
    if (this.listenClient !== client) return;
    this.listenClient = null;
    void client.end().catch(() => undefined);
    if (this.closed) return;
    this.options.onError?.(error);
    // Subscribers keep polling meanwhile; wake them so they notice what they missed.
    this.listeners.forEach((l) => l());
    setTimeout(() => void this.ensureListening(), 500).unref();
  }

  get pollInterval(): number {
    return this.pollIntervalMs;
  }
  get batch(): number {
    return this.batchSize;
  }
  reportError(e: Error): void {
    this.options.onError?.(e);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    // Appends already accepted are committed (or fail) before the pool goes.
    await this.committer?.drain();
    await Promise.all([...this.subscriptions].map((s) => s.close()));
    const client = this.listenClient;
    this.listenClient = null;
    await this.listenStarting;
    await client?.end().catch(() => undefined);
    await this.announcing;
    await this.pool.end();
  }
}

class PostgresSubscription implements Subscription {
  readonly caughtUp: Promise<void>;
  private markCaughtUp!: () => void;
  private closed = false;
  private dirty = true;
  private wake: (() => void) | null = null;
  /** Ends the current wait, whichever it is (close). */
  private interrupt: (() => void) | null = null;
  private started = false;

  /** Set when subscribing from 'end': the snapshot whose committed transactions are left out. */
  private exclude: string | null = null;

  constructor(
    private readonly store: PostgresEventStore,
    private readonly options: SubscribeOptions,
    private readonly onClose: () => void,
  ) {
    this.caughtUp = new Promise((resolve) => (this.markCaughtUp = resolve));
  }

  async *[Symbol.asyncIterator](): AsyncIterator<RecordedEvent> {
    if (this.started) throw new EventStoreError('a subscription can be iterated once', 'ALREADY_ITERATED');
    this.started = true;
    const unlisten = this.store.onAppend(() => {
      this.dirty = true;
      this.wake?.();
    });
    try {
      // LISTEN first: an append that commits after `caughtUp` must wake this subscription, not
      // wait for the poll (a loaded machine once connected the listener after such an append).
      await this.store.listening();
      const start = await this.start();
      let cursor = start.cursor;
      let failures = 0;
      /** Looks in a row that found committed events behind the horizon and nothing to read. */
      let stuck = 0;
      const settleMs = this.options.settleMs ?? 0;
      while (!this.closed) {
        this.dirty = false;
        let batch: { rows: RecordedEvent[]; horizon: bigint; behind: boolean };
        try {
          batch = await this.store.fetchAfter(cursor, this.options.filter, this.store.batch, this.exclude);
          failures = 0;
        } catch (e) {
          // The database went away: keep the cursor, wait, try again. Nothing is skipped.
          this.store.reportError(e as Error);
          await this.idle(backoffMs(failures++, SUBSCRIPTION_RETRY));
          continue;
        }
        for (const event of batch.rows) {
          if (this.closed) return;
          yield event;
          cursor = event.position;
        }
        if (batch.rows.length < this.store.batch) {
          // Every matching row below the horizon has been seen: skip the rest of that range.
          const scanned = { commit: batch.horizon - 1n, prepare: MAX_SEQ };
          if (scanned.commit > cursor.commit) cursor = scanned;
          // Caught up once the transactions of everything stored at the start have ended and been read.
          if (start.lastStored === null || batch.horizon > start.lastStored) this.markCaughtUp();
          // Events committed behind the horizon (an older transaction, of any database on the
          // server, still runs) wake nobody when it ends: look again soon rather than at the poll,
          // twice as late each time nothing moves (an idle session can hold the horizon long).
          const poll = this.store.pollInterval;
          const wait = batch.behind
            ? Math.min(BEHIND_HORIZON_POLL_MS * 2 ** Math.min(stuck, 10), poll)
            : poll;
          stuck = batch.behind && batch.rows.length === 0 ? stuck + 1 : 0;
          if (!this.dirty) await this.idle(wait);
          // Appends that come meanwhile only mark it dirty: they are read together after the pause.
          if (settleMs > 0 && !this.closed) await this.idle(settleMs, { wakeable: false });
        }
      }
    } finally {
      unlisten();
      this.onClose();
    }
  }

  /**
   * Where to start, and the transaction id of the last event stored when the subscription started
   * (null when there is nothing to catch up on). That event may still be behind the visibility
   * horizon (an older transaction is open somewhere): `caughtUp` waits for it.
   */
  private async start(): Promise<{ cursor: Position; lastStored: bigint | null }> {
    const from = this.options.from;
    for (let failures = 0; !this.closed; failures++) {
      try {
        if (from === 'end') {
          const { snapshot, xmin } = await this.store.currentSnapshot();
          this.exclude = snapshot;
          return { cursor: { commit: xmin - 1n, prepare: MAX_SEQ }, lastStored: null };
        }
        const lastStored = await this.store.lastTransaction();
        return { cursor: from === 'start' ? { commit: 0n, prepare: 0n } : from, lastStored };
      } catch (e) {
        this.store.reportError(e as Error);
        await this.idle(backoffMs(failures, SUBSCRIPTION_RETRY));
      }
    }
    return { cursor: { commit: MAX_SEQ, prepare: MAX_SEQ }, lastStored: null };
  }

  /** Waits `ms`, or less: until an append wakes it (unless `wakeable` is false) or it is closed. */
  private idle(ms: number, { wakeable = true } = {}): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wake = wakeable
        ? () => {
            this.wake = null;
            done();
          }
        : null;
      this.interrupt = () => {
        this.interrupt = null;
        done();
      };
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    this.onClose();
    this.wake?.();
    this.interrupt?.();
  }
}
