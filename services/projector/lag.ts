import { USER_STREAM_PREFIX } from '../../contracts/index.ts';
import { formatPosition, parsePosition, type EventStore } from '../../lib/eventstore/types.ts';
import { readCheckpoint } from './checkpoint.ts';
import type { ProjectorMetrics } from './metrics.ts';
import { PROJECTION_NAME } from './migrations.ts';
import type { Log } from './runner.ts';
import type { Queryable } from './sql.ts';

export interface Lag {
  /** User-stream events after the checkpoint, counted up to `cap`. */
  events: number;
  /** Age of the oldest of them in seconds; 0 when there are none. */
  seconds: number;
  /** True when the count stopped at the cap (the lag is at least `events`). */
  capped: boolean;
}

/**
 * How far the committed checkpoint is behind the store. Reads at most `cap` events after the
 * checkpoint, so its cost is bounded however far behind the projection is. Any instance can
 * measure it, the active one or a standby, since it reads the checkpoint from the database.
 */
export async function measureLag(
  db: Queryable,
  store: EventStore,
  options: { cap: number; projection?: string; now?: () => number },
): Promise<Lag> {
  const checkpoint = await readCheckpoint(db, options.projection ?? PROJECTION_NAME);
  let events = 0;
  let oldest: Date | null = null;
  let scanned = 0;
  const from = checkpoint.position === null ? 'start' : parsePosition(checkpoint.position);
  for await (const e of store.readAll({ fromPosition: from, maxCount: options.cap + 1 })) {
    scanned++;
    if (formatPosition(e.position) === checkpoint.position) continue; // readAll's start is inclusive
    if (e.streamId.startsWith(USER_STREAM_PREFIX)) {
      events++;
      oldest ??= e.created;
    }
    if (events >= options.cap || scanned > options.cap) break;
  }
  const now = (options.now ?? Date.now)();
  return {
    events,
    seconds: oldest === null ? 0 : Math.max(0, (now - oldest.getTime()) / 1000),
    capped: events >= options.cap || scanned > options.cap,
  };
}

/** Refreshes the lag gauges every `intervalMs`. */
export class LagMonitor {
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private stopped = false;
  last: Lag | null = null;

  constructor(
    private readonly options: {
      db: Queryable;
      store: EventStore;
      metrics: ProjectorMetrics;
      logger: Log;
      intervalMs: number;
      cap: number;
      projection?: string;
    },
  ) {}

  start(): void {
    this.schedule(0);
  }

  /** Measures now and updates the gauges. */
  async refresh(): Promise<Lag | null> {
    try {
      const lag = await measureLag(this.options.db, this.options.store, {
        cap: this.options.cap,
        ...(this.options.projection ? { projection: this.options.projection } : {}),
      });
      this.options.metrics.lagEvents.set(lag.events);
      this.options.metrics.lagSeconds.set(lag.seconds);
      this.last = lag;
      return lag;
    } catch (e) {
      this.options.logger.warn({ err: e as Error }, 'cannot measure the projection lag');
      return null;
    }
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.running = this.refresh().then(() => this.schedule(this.options.intervalMs));
    }, ms);
    this.timer.unref();
  }

  async close(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.running;
  }
}
