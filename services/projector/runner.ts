import pg from 'pg';
import { USER_STREAM_PREFIX } from '../../contracts/index.ts';
import {
  formatPosition,
  parsePosition,
  type EventStore,
  type RecordedEvent,
} from '../../lib/eventstore/types.ts';
import { EVENTS_CHANNEL } from '../../lib/eventstore/postgres.ts';
import type { Logger } from '../../lib/log.ts';
import { ensureCheckpoint, lockKey, readCheckpoint } from './checkpoint.ts';
import type { ProjectorMetrics } from './metrics.ts';
import { LIVE_SCHEMA, PROJECTION_NAME } from './migrations.ts';
import { incomingFromRecorded, skipKind } from './model.ts';
import { applyBatch } from './sql.ts';
import { backoffMs } from '../../lib/retry.ts';

export type Log = Pick<Logger, 'info' | 'warn' | 'error' | 'debug'>;

export interface RunnerOptions {
  /** Read models and checkpoints. */
  pool: pg.Pool;
  /** The same database, for the session that holds the projection lock. */
  connectionString: string;
  store: EventStore;
  logger: Log;
  metrics: ProjectorMetrics;
  projection?: string;
  batchSize?: number;
  batchWaitMs?: number;
  lockPollMs?: number;
  /**
   * Runs inside every batch transaction after the read models and the checkpoint are written and
   * before the commit: a hook for fault injection in tests. Throwing rolls the batch back.
   */
  beforeCommit?: (batch: { events: number; position: string }) => Promise<void> | void;
}

export type RunnerState = 'idle' | 'standby' | 'active' | 'stopped';

/**
 * Pool clients that have an 'error' listener of their own. While a client is checked out the pool
 * does not listen to it, and an error the server sends between two queries (PostgreSQL dying:
 * "terminating connection due to unexpected postmaster exit") would be an unhandled 'error'
 * event that kills the process. With a listener the next query fails instead and the batch is
 * rolled back and retried like any other failure.
 */
const guarded = new WeakSet<pg.PoolClient>();
function guard(client: pg.PoolClient): pg.PoolClient {
  if (!guarded.has(client)) {
    client.on('error', () => undefined);
    guarded.add(client);
  }
  return client;
}

/** What this instance last wrote to the checkpoint: the position, and the row's version with it. */
interface Written {
  position: string | null;
  version: string;
}

/** The checkpoint row no longer says what this instance last wrote: someone else moved it. */
export class CheckpointMovedError extends Error {
  readonly code = 'CHECKPOINT_MOVED';
  constructor(
    readonly expected: { position: string | null; version: string | null },
    readonly actual: { position: string | null; version: string | null },
  ) {
    // The position may well be the same: a rebuild's swap writes a new version at the position it
    // rebuilt to, which is where this instance was when it was idle.
    super(
      `checkpoint moved: this instance wrote version ${expected.version ?? 'none'} at ${expected.position ?? 'the start'}, ` +
        `found version ${actual.version ?? 'none'} at ${actual.position ?? 'the start'} (a rebuild's swap, or another writer)`,
    );
    this.name = 'CheckpointMovedError';
  }
}

/**
 * Runs the projection: waits for the projection's advisory lock (one active instance; the others
 * stand by and take over when its session ends), then follows the event store's user streams from
 * the checkpoint and applies them in batches, each batch and its checkpoint in one transaction.
 */
export class ProjectionRunner {
  private readonly projection: string;
  private readonly batchSize: number;
  private readonly batchWaitMs: number;
  private readonly lockPollMs: number;
  private currentState: RunnerState = 'idle';
  private closed = false;
  private paused = false;
  private lockClient: pg.Client | null = null;
  private holding = false;
  private loop: Promise<void> | null = null;
  private interruptWait: (() => void) | null = null;
  private wakeSleep: (() => void) | null = null;
  private resumeWaiters: Array<() => void> = [];
  private committing: Promise<unknown> | null = null;
  /** The last position this instance committed (or read from the checkpoint on taking over). */
  position: string | null = null;
  /** Batches this instance has committed. */
  batches = 0;

  constructor(private readonly options: RunnerOptions) {
    this.projection = options.projection ?? PROJECTION_NAME;
    this.batchSize = options.batchSize ?? 500;
    this.batchWaitMs = options.batchWaitMs ?? 1;
    this.lockPollMs = options.lockPollMs ?? 500;
  }

  get state(): RunnerState {
    return this.currentState;
  }
  get isPaused(): boolean {
    return this.paused;
  }

  start(): void {
    this.loop ??= this.run();
  }

  /** Stops applying after the batch in flight (resolved once it is committed). Keeps the lock. */
  async pause(): Promise<void> {
    this.paused = true;
    this.interruptWait?.();
    await this.committing?.catch(() => undefined);
  }

  resume(): void {
    this.paused = false;
    const waiters = this.resumeWaiters;
    this.resumeWaiters = [];
    waiters.forEach((w) => w());
  }

  /** Finishes the batch in flight, stops, and releases the lock. */
  async close(): Promise<void> {
    this.closed = true;
    this.interruptWait?.();
    this.wakeSleep?.();
    this.resume();
    await this.loop;
    await this.dropLock();
    this.setState('stopped');
  }

  private setState(state: RunnerState): void {
    if (this.currentState === state) return;
    this.currentState = state;
    this.options.metrics.active.set(state === 'active' ? 1 : 0);
    if (state === 'active')
      this.options.logger.info(
        { projection: this.projection },
        'projector active: holds the projection lock',
      );
    if (state === 'standby') {
      this.options.logger.info(
        { projection: this.projection },
        'projector on standby: another instance holds the projection lock',
      );
    }
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.closed) {
      try {
        if (!(await this.acquire())) break;
        this.setState('active');
        await this.project();
        failures = 0;
      } catch (e) {
        const error = e as Error;
        if (error instanceof CheckpointMovedError)
          // Expected after `npm run rebuild`: said once, without a stack.
          this.options.logger.info({ reason: error.message }, 'checkpoint moved; resuming from it');
        else
          this.options.logger.error({ err: error }, 'projection interrupted; retrying from the checkpoint');
        await this.sleep(backoffMs(failures++, { minMs: 100, maxMs: 5_000 }));
      }
    }
  }

  /** Holds the lock when it resolves true; false when closed first. */
  private async acquire(): Promise<boolean> {
    while (!this.closed) {
      if (this.holding && this.lockClient) return true;
      if (!this.lockClient) {
        const client = new pg.Client({
          connectionString: this.options.connectionString,
          application_name: 'toolbus-projector-lock',
          keepAlive: true,
        });
        client.on('error', (e) => this.lockLost(client, e));
        client.on('end', () => this.lockLost(client, new Error('lock session ended')));
        try {
          await client.connect();
          this.lockClient = client;
        } catch (e) {
          client.removeAllListeners();
          client.on('error', () => undefined);
          await client.end().catch(() => undefined);
          this.options.logger.warn({ err: e as Error }, 'cannot open the lock session; retrying');
          await this.sleep(this.lockPollMs);
          continue;
        }
      }
      const client = this.lockClient;
      try {
        const { rows } = await client.query<{ ok: boolean }>(
          'select pg_try_advisory_lock(hashtextextended($1, 0)) as ok',
          [lockKey(this.projection)],
        );
        if (rows[0]?.ok && this.lockClient === client) {
          this.holding = true;
          return true;
        }
        this.setState('standby');
      } catch (e) {
        this.lockLost(client, e as Error);
      }
      await this.sleep(this.lockPollMs);
    }
    return false;
  }

  private lockLost(client: pg.Client, error: Error): void {
    if (this.lockClient !== client) return;
    const wasHolding = this.holding;
    this.lockClient = null;
    this.holding = false;
    client.removeAllListeners();
    client.on('error', () => undefined);
    void client.end().catch(() => undefined);
    if (this.closed) return;
    if (wasHolding)
      this.options.logger.error({ err: error }, 'lost the projection lock session; standing by');
    this.setState('standby');
    this.interruptWait?.();
  }

  private async dropLock(): Promise<void> {
    const client = this.lockClient;
    this.lockClient = null;
    this.holding = false;
    if (!client) return;
    client.removeAllListeners();
    client.on('error', () => undefined);
    await client.end().catch(() => undefined);
  }

  private sleep(ms: number): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        if (this.wakeSleep === done) this.wakeSleep = null;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wakeSleep = done;
    });
  }

  /** Applies events from the checkpoint on, until closed, paused for good, or the lock is lost. */
  private async project(): Promise<void> {
    const { pool, store } = this.options;
    await ensureCheckpoint(pool, this.projection);
    const checkpoint = await readCheckpoint(pool, this.projection);
    if (checkpoint.version === null) throw new Error(`checkpoint ${this.projection} missing`);
    let expected: Written = { position: checkpoint.position, version: checkpoint.version };
    this.position = expected.position;
    this.options.logger.info({ from: expected.position ?? 'start' }, 'projecting from the checkpoint');
    const subscription = store.subscribe({
      from: expected.position === null ? 'start' : parsePosition(expected.position),
      filter: { streamPrefixes: [USER_STREAM_PREFIX] },
    });
    const iterator = subscription[Symbol.asyncIterator]();
    let pending: Promise<IteratorResult<RecordedEvent>> | null = null;
    const next = (): Promise<IteratorResult<RecordedEvent>> => {
      if (!pending) {
        pending = iterator.next();
        pending.catch(() => undefined);
      }
      return pending;
    };
    // Events taken from the subscription but not yet committed (a pause came while they filled).
    let carried: RecordedEvent[] = [];
    try {
      while (!this.closed && this.holding) {
        if (this.paused) {
          await new Promise<void>((resolve) => this.resumeWaiters.push(resolve));
          continue;
        }
        let batch: RecordedEvent[];
        if (carried.length > 0) {
          batch = carried;
          carried = [];
        } else {
          const interrupted = new Promise<'interrupted'>(
            (resolve) => (this.interruptWait = () => resolve('interrupted')),
          );
          if (this.closed || !this.holding || this.paused) continue;
          const first = await Promise.race([next(), interrupted]);
          this.interruptWait = null;
          if (first === 'interrupted') continue;
          pending = null;
          if (first.done) throw new Error('the subscription ended');
          batch = [first.value];
        }
        let timer: NodeJS.Timeout | undefined;
        const deadline = new Promise<'deadline'>(
          (resolve) => (timer = setTimeout(() => resolve('deadline'), this.batchWaitMs)),
        );
        try {
          while (batch.length < this.batchSize) {
            const r = await Promise.race([next(), deadline]);
            if (r === 'deadline') break;
            pending = null;
            if (r.done) break;
            batch.push(r.value);
          }
        } finally {
          clearTimeout(timer);
        }
        // Paused (or stopped) while the batch was filling: keep it for later, commit nothing now.
        // No await lies between this check and `this.committing`, so pause() sees one or the other.
        if (this.paused || this.closed || !this.holding) {
          carried = batch;
          continue;
        }
        const committing = this.commit(batch, expected);
        this.committing = committing;
        try {
          expected = await committing;
        } finally {
          this.committing = null;
        }
      }
    } finally {
      this.interruptWait = null;
      await subscription.close();
    }
  }

  /** One transaction: read the rows, write them and move the checkpoint if it is still ours. */
  private async commit(batch: RecordedEvent[], expected: Written): Promise<Written> {
    const { pool, metrics, logger } = this.options;
    const last = formatPosition(batch[batch.length - 1]!.position);
    const stopTimer = metrics.batchDuration.startTimer();
    const client = guard(await pool.connect());
    let broken: Error | undefined;
    try {
      // Read models are derived: a batch lost with the server's last moments goes together with its
      // checkpoint (one transaction), and is projected again from the event store. So a batch need
      // not wait for the disk, and readers see it a flush sooner.
      await client.query('begin; set local synchronous_commit = off');
      // The rows the batch touches are read before anything is written: until a transaction writes,
      // it holds no transaction id, and so not the event store's visibility horizon (decision
      // 0001), which every append committed meanwhile waits behind. The rows, the checkpoint
      // (moved only from the version this instance wrote: any other write, a rebuild's swap among
      // them, changes it and the batch is rolled back) and a NOTIFY are one statement; the horizon
      // is held from it to the commit, two round trips. The NOTIFY, delivered at the commit,
      // wakes the subscriptions (this projector's included) that found those appends not yet
      // readable; they would look again only after 20-100 ms. (Harmless where the events are not
      // in this database.)
      const outcome = await applyBatch(client, LIVE_SCHEMA, batch.map(incomingFromRecorded), undefined, {
        projection: this.projection,
        expected: expected.version,
        position: last,
        events: batch.length,
        notify: EVENTS_CHANNEL,
      });
      const version = outcome.checkpointed;
      if (version === null) {
        const actual = await readCheckpoint(client, this.projection);
        throw new CheckpointMovedError(expected, actual);
      }
      await this.options.beforeCommit?.({ events: batch.length, position: last });
      await client.query('commit');
      stopTimer();
      metrics.batchSize.observe(batch.length);
      for (const [type, n] of outcome.applied) metrics.applied.inc({ type }, n);
      for (const s of outcome.skipped) {
        metrics.skipped.inc({ kind: skipKind(s.reason, s.eventType) });
        logger.warn(
          {
            stream: s.streamId,
            revision: s.revision,
            position: s.position,
            type: s.eventType,
            reason: s.reason,
          },
          'skipped an event the read models cannot apply',
        );
      }
      this.position = last;
      this.batches++;
      return { position: last, version };
    } catch (e) {
      broken = e as Error;
      await client.query('rollback').catch(() => undefined);
      metrics.batchFailures.inc();
      throw e;
    } finally {
      // A connection that failed mid-transaction is not reused.
      client.release(broken && !(broken instanceof CheckpointMovedError) ? broken : undefined);
    }
  }
}
