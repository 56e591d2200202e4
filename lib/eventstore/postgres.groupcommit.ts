import type { AppendResult, EventData, ExpectedRevision } from './types.ts';

/**
 * Group commit for the PostgreSQL event store (docs/decisions/0028-group-commit.md): appends of
 * different streams that arrive while earlier commits are in flight are committed together, in
 * one transaction and one WAL flush. No timer: an append that finds fewer than `maxInFlight`
 * commits under way goes at the next turn of the event loop (with whatever else arrived in the
 * same turn); otherwise it waits for the first of them to end and goes in the batch sent then.
 */
export interface GroupCommitOptions {
  /** Commits under way at once; appends arriving while this many are in flight gather. Default 2. */
  maxInFlight?: number;
  /** Appends in one batch at most. Default 100. */
  maxAppends?: number;
  /** Events in one batch at most (an append longer than this goes alone). Default 1,000. */
  maxEvents?: number;
}

export const GROUP_COMMIT_DEFAULTS: Required<GroupCommitOptions> = {
  maxInFlight: 2,
  maxAppends: 100,
  maxEvents: 1_000,
};

/** One append waiting for its commit. */
export interface PendingAppend {
  stream: string;
  events: EventData[];
  expected: ExpectedRevision;
  resolve: (result: AppendResult) => void;
  reject: (error: unknown) => void;
}

/**
 * Commits one batch: settles every member's promise (each with its own result or error), and
 * resolves once all are settled. A batch of one goes through the single-append path.
 */
export type CommitBatch = (batch: PendingAppend[]) => Promise<void>;

export class GroupCommitter {
  private readonly options: Required<GroupCommitOptions>;
  private readonly queue: PendingAppend[] = [];
  private inFlight = 0;
  private scheduled = false;
  private drained: Array<() => void> = [];

  constructor(
    private readonly commit: CommitBatch,
    options: GroupCommitOptions = {},
  ) {
    this.options = { ...GROUP_COMMIT_DEFAULTS, ...options };
  }

  append(stream: string, events: EventData[], expected: ExpectedRevision): Promise<AppendResult> {
    return new Promise((resolve, reject) => {
      this.queue.push({ stream, events, expected, resolve, reject });
      this.schedule();
    });
  }

  /** Resolves once nothing is queued or in flight. */
  drain(): Promise<void> {
    if (this.queue.length === 0 && this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.drained.push(resolve));
  }

  /**
   * With room for another commit, the queue goes at the next turn of the event loop, so that the
   * appends made in this turn (a burst of messages handled together) share it.
   */
  private schedule(): void {
    if (this.scheduled || this.inFlight >= this.options.maxInFlight) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.flush();
    });
  }

  private flush(): void {
    while (this.inFlight < this.options.maxInFlight && this.queue.length > 0) {
      const batch = this.take();
      this.inFlight++;
      void this.commit(batch)
        .catch((e: unknown) => batch.forEach((p) => p.reject(e)))
        .finally(() => {
          this.inFlight--;
          // What gathered while this commit was under way has waited enough: it goes now.
          this.flush();
          if (this.queue.length === 0 && this.inFlight === 0) {
            const waiting = this.drained;
            this.drained = [];
            waiting.forEach((resolve) => resolve());
          }
        });
    }
  }

  /**
   * The next batch, in arrival order: at most one append per stream (a second one waits for the
   * next batch, so one transaction never checks a stream's revision twice), within the limits.
   */
  private take(): PendingAppend[] {
    const batch: PendingAppend[] = [];
    const streams = new Set<string>();
    let events = 0;
    const rest: PendingAppend[] = [];
    for (const p of this.queue) {
      const fits =
        batch.length < this.options.maxAppends &&
        !streams.has(p.stream) &&
        (batch.length === 0 || events + p.events.length <= this.options.maxEvents);
      if (fits) {
        batch.push(p);
        streams.add(p.stream);
        events += p.events.length;
      } else {
        rest.push(p);
      }
    }
    this.queue.splice(0, this.queue.length, ...rest);
    return batch;
  }
}
