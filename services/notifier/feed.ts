import type { EventStore } from '../../lib/eventstore/types.ts';
import type { Logger } from '../../lib/log.ts';
import { readLast, readNotifications, type StoredItem } from './replay.ts';
import { backoffMs } from '../../lib/retry.ts';

/** Most events read from the store in one go; a longer backlog is read in several. */
export const FEED_BATCH = 256;
/** Events read back when a feed starts: its starting revision, and which executions are running. */
export const FEED_START_WINDOW = 256;
/** Progress messages that wait for a store read to learn whether their execution runs. */
const MAX_WAITING_PROGRESS = 64;
/** NATS announcements kept to compare with the store once it is read (forgery detection only). */
const MAX_ANNOUNCED = 256;
/** Reads of the store that failed are retried after a random wait below 1 s doubling up to 15 s. */
const RETRY = { minMs: 1_000, maxMs: 15_000 };

export class FeedUnavailableError extends Error {
  constructor(readonly userId: string) {
    super(`the event store could not be read for user ${userId}`);
    this.name = 'FeedUnavailableError';
  }
}

export interface FeedMetrics {
  /** NATS event messages whose event id is not the stored event of their revision. */
  mismatched: { inc(): void };
  /** Progress messages for an execution that the store does not show as running. */
  progressDropped: { inc(): void };
}

export interface FeedDeps {
  store: EventStore;
  log: Logger;
  metrics: FeedMetrics;
  /** Where the feed's stored events and accepted progress go (every socket watching the user). */
  onEvent(item: StoredItem): void;
  onProgress(text: string): void;
  /** Resolves once NATS has a subscription that carries this user's events. */
  subscribed(): Promise<void>;
}

/**
 * One user's events as the event store holds them, shared by every socket watching that user
 * (their own sockets and admins watching everyone). Nothing that arrives over NATS is sent: an
 * event message only wakes the feed, which reads the user's stream forward from the last revision
 * it read and hands on the store's copies. So a forged event is never shown, and it cannot take
 * the place of the real event of its revision: that one is read from the store when it is there.
 *
 * Reads are one at a time per user: wake-ups that arrive while one runs are folded into one more
 * read, and each read takes at most `FEED_BATCH` events.
 *
 * Progress (not stored) is passed on only for an execution whose ToolExecuting the feed has read
 * and whose ToolCompleted/ToolFailed it has not.
 */
export class UserFeed {
  /** The last revision read from the store (-1: empty stream); null until the feed has started. */
  private verified: number | null = null;
  private draining: Promise<void> | null = null;
  private again = false;
  private closed = false;
  private retryTimer: NodeJS.Timeout | undefined;
  /** Failed reads in a row: the backoff's attempt. */
  private failures = 0;
  /** Executions the stream shows started and not ended, with the last progress passed on for each. */
  private readonly running = new Map<string, string | null>();
  /** Progress for an execution not known to run yet: decided after the next read. */
  private waiting: Array<{ executionId: string; text: string }> = [];
  /** Event ids announced on NATS for revisions not read yet; and the ids of the last revisions read. */
  private announced: Array<{ revision: number; id: string }> = [];
  private readonly recent = new Map<number, string>();

  constructor(
    readonly userId: string,
    private readonly deps: FeedDeps,
    /** For a feed started by an admin's live event: the stored events from this revision on are sent. */
    private readonly firstRevision: number | null = null,
  ) {}

  /** Resolves once the feed knows where the stream ends (reading it if needed); rejects if the store failed. */
  async ready(): Promise<void> {
    if (this.verified === null) await this.wake();
    if (this.verified === null) throw new FeedUnavailableError(this.userId);
  }

  /** A NATS event message for this user: a hint that the stream may have grown. */
  onAnnounced(revision: number, eventId: string): void {
    if (this.verified !== null && revision <= this.verified) {
      this.compare(revision, eventId);
      return;
    }
    if (this.announced.length >= MAX_ANNOUNCED) this.announced.shift();
    this.announced.push({ revision, id: eventId });
    void this.wake();
  }

  /**
   * Progress for `executionId`: passed on if the execution runs. If it is not known to run, the
   * feed reads the store once more (its ToolExecuting may be committed and not read yet) and
   * decides then.
   */
  onProgress(executionId: string, text: string): void {
    if (this.running.has(executionId)) return this.passProgress(executionId, text);
    if (this.waiting.length >= MAX_WAITING_PROGRESS) return this.deps.metrics.progressDropped.inc();
    this.waiting.push({ executionId, text });
    void this.wake();
  }

  /**
   * Passes progress on once: the same message comes twice while a socket watches this user and
   * another watches every user (both NATS subscriptions carry it). A tool's fractions only
   * increase (services/dispatcher/progress.ts), so a message equal to the last one is a copy.
   */
  private passProgress(executionId: string, text: string): void {
    if (this.running.get(executionId) === text) return;
    this.running.set(executionId, text);
    this.deps.onProgress(text);
  }

  /** Reads what the store has beyond the last revision read; resolves when that read is done. */
  wake(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.again = true;
    this.draining ??= this.drain();
    return this.draining;
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.retryTimer);
    this.waiting = [];
  }

  private async drain(): Promise<void> {
    // Progress that arrived before a read is decided by it; later progress waits for the next one.
    let deciding: typeof this.waiting = [];
    try {
      while (this.again && !this.closed) {
        this.again = false;
        deciding = this.waiting;
        this.waiting = [];
        if (this.verified === null) await this.start();
        else if (await this.readForward()) this.again = true; // a full batch: there may be more
        this.decide(deciding);
        deciding = [];
      }
      this.failures = 0;
    } catch (err) {
      this.deps.log.warn({ err, userId: this.userId }, 'could not read the event store; retrying');
      this.decide(deciding);
      if (!this.closed)
        this.retryTimer = setTimeout(() => void this.wake(), backoffMs(this.failures++, RETRY)).unref();
    } finally {
      this.draining = null;
    }
  }

  /**
   * The first read: the end of the stream (later events are announced on NATS, whose subscription
   * the server has by now), and, from the last events, which executions are running.
   */
  private async start(): Promise<void> {
    await this.deps.subscribed();
    const items = await readLast(this.deps.store, this.userId, FEED_START_WINDOW);
    for (const item of items) {
      this.track(item);
      if (this.firstRevision !== null && item.revision >= this.firstRevision) this.deps.onEvent(item);
    }
    this.verified = items.at(-1)?.revision ?? -1;
    this.checkAnnounced();
  }

  /** Sends the stored events after the last one read; true when the batch was full. */
  private async readForward(): Promise<boolean> {
    const from = this.verified! + 1;
    let count = 0;
    for await (const item of readNotifications(this.deps.store, this.userId, from, from + FEED_BATCH - 1)) {
      if (this.closed) return false;
      count++;
      this.verified = item.revision;
      this.track(item);
      this.deps.onEvent(item);
    }
    this.checkAnnounced();
    return count === FEED_BATCH;
  }

  /** Follows which executions run, and remembers the ids of the last revisions read. */
  private track(item: StoredItem): void {
    if (!('event' in item)) return;
    this.recent.set(item.revision, item.event.id);
    this.recent.delete(item.revision - MAX_ANNOUNCED);
    const { executionId } = item.event.metadata;
    if (item.event.type === 'ToolExecuting' && !this.running.has(executionId))
      this.running.set(executionId, null);
    else if (item.event.type === 'ToolCompleted' || item.event.type === 'ToolFailed')
      this.running.delete(executionId);
  }

  private decide(progress: Array<{ executionId: string; text: string }>): void {
    for (const p of progress) {
      if (this.running.has(p.executionId)) this.passProgress(p.executionId, p.text);
      else this.deps.metrics.progressDropped.inc();
    }
  }

  private checkAnnounced(): void {
    const verified = this.verified ?? -1;
    const due = this.announced.filter((a) => a.revision <= verified);
    this.announced = this.announced.filter((a) => a.revision > verified);
    for (const a of due) this.compare(a.revision, a.id);
  }

  /** An announcement that names another event than the store holds at its revision is logged and counted. */
  private compare(revision: number, eventId: string): void {
    const stored = this.recent.get(revision);
    if (stored === undefined || stored === eventId) return;
    this.deps.metrics.mismatched.inc();
    this.deps.log.warn(
      { userId: this.userId, revision, announced: eventId, stored },
      'a NATS event is not the stored event of its revision; it was not shown',
    );
  }
}
