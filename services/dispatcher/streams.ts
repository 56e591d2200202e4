import {
  envelopeEvents,
  evolve,
  GENESIS_HASH,
  initialState,
  userStream,
  type ExecutionState,
  type ToolEvent,
  type ToolEventBody,
} from '../../contracts/index.ts';
import {
  WrongExpectedRevisionError,
  type EventStore,
  type RecordedEvent,
} from '../../lib/eventstore/types.ts';
import type { Logger } from '../../lib/log.ts';
import type { NatsConnection } from '../../lib/nats.ts';
import { fromRecorded, toEventData } from '../../lib/toolEvents.ts';
import { publishEvent } from './relay.ts';

/** The last event of a user stream: where the next append goes and what it chains to. */
export interface Tail {
  revision: number;
  hash: string;
}

/**
 * A cached tail, and how far this process has read the stream: every revision after `read` up to
 * the tail was appended by this process, so an execution known up to `read` knows every event of
 * it that another writer may have appended. `own` says, per execution, the last of those revisions
 * that belongs to it: another view of the same execution in this process (a cancel beside a
 * redelivery) may have appended it.
 */
interface CachedTail extends Tail {
  read: number;
  own: Map<string, number>;
  /** When the store last confirmed this tail (performance.now(): read, or appended on). */
  checkedAt: number;
}

/** Executions remembered in `own` per user; beyond it the tail is read again from the store. */
const MAX_OWN = 1_024;

/** What identifies an execution and goes into the metadata of each of its events. */
export interface ExecutionRef {
  userId: string;
  executionId: string;
  requestId: string;
  correlationId: string;
}

/** An execution as far as this dispatcher knows it: folded state and the events behind it. */
export interface Execution {
  ref: ExecutionRef;
  state: ExecutionState;
  /** This execution's events in stream order, as far as known (all of them after a load). */
  events: ToolEvent[];
  /**
   * The stream revision up to which `events` is complete; null for an execution believed new,
   * which never read the stream (its first append is guarded by its deterministic event ids).
   */
  knownRevision: number | null;
}

export const newExecution = (ref: ExecutionRef): Execution => ({
  ref,
  state: initialState(),
  events: [],
  knownRevision: null,
});

export const terminalOf = (e: Execution): ToolEvent | undefined =>
  e.events.findLast((x) => x.type === 'ToolCompleted' || x.type === 'ToolFailed');
export const lastExecutingOf = (e: Execution) =>
  e.events.findLast((x): x is Extract<ToolEvent, { type: 'ToolExecuting' }> => x.type === 'ToolExecuting');

/**
 * Decides the events to append given the execution's current state; none means leave it. The
 * dispatcher passes the decider here through its command handler (commands.ts).
 */
export type Plan = (state: ExecutionState) => ToolEventBody[];

export interface StepResult {
  /** The events this step appended (empty when the plan chose nothing after a re-read). */
  appended: ToolEvent[];
}

export class AppendConflictError extends Error {
  constructor(stream: string, attempts: number) {
    super(`stream ${stream}: still conflicting after ${attempts} attempts`);
    this.name = 'AppendConflictError';
  }
}

const MAX_ATTEMPTS = 25;
const emptyStream = (): CachedTail => ({
  revision: -1,
  hash: GENESIS_HASH,
  read: -1,
  own: new Map(),
  checkedAt: performance.now(),
});

/** For how long after a conflict this process takes it that another writer appends to its users' streams. */
const SHARED_WRITES_MS = 60_000;

export interface UserStreamsOptions {
  store: EventStore;
  nc: NatsConnection;
  log: Logger;
  now: () => Date;
  /** How many users' tails to keep in memory. */
  maxCachedTails?: number;
  onConflict?: () => void;
  /**
   * Publish each appended event on `events.user.<id>` right after the commit (default true);
   * false when only the relay publishes (DISPATCHER_EVENT_PUBLISH=relay).
   */
  publishOnCommit?: boolean;
  /**
   * While another writer appends to the same streams (a conflict in the last minute), a cached
   * tail older than this is read again before an append (default 10 ms; see `step`).
   */
  tailTrustMs?: number;
}

/**
 * Appends to user streams: one queue per user inside this process (so an instance never conflicts
 * with itself), the tail of each stream cached (no read in the happy path), optimistic concurrency
 * with the exact expected revision across instances. Once another writer shows (a conflict), and
 * for a minute after the last one, a tail cached more than `tailTrustMs` ago is read again first. On a conflict the tail and the execution are
 * read again and the plan decides again, since another writer may have moved the very execution.
 * Unless only the relay publishes, every appended event is published on `events.user.<id>` in
 * revision order, after the commit (relay.ts).
 */
export class UserStreams {
  private readonly tails = new Map<string, CachedTail>();
  private readonly lanes = new Map<string, { queue: Promise<unknown>; pending: number }>();
  private readonly maxTails: number;
  private readonly tailTrustMs: number;
  /** When an append of this process last conflicted (performance.now()). */
  private lastConflictAt = -Infinity;

  constructor(private readonly options: UserStreamsOptions) {
    this.maxTails = options.maxCachedTails ?? 100_000;
    this.tailTrustMs = options.tailTrustMs ?? 10;
  }

  /** Runs `fn` after every earlier task of the same user in this process. */
  private serialize<T>(userId: string, fn: () => Promise<T>): Promise<T> {
    let lane = this.lanes.get(userId);
    if (!lane) {
      lane = { queue: Promise.resolve(), pending: 0 };
      this.lanes.set(userId, lane);
    }
    const l = lane;
    l.pending++;
    const run = l.queue.then(fn);
    l.queue = run.catch(() => undefined);
    return run.finally(() => {
      if (--l.pending === 0 && this.lanes.get(userId) === l) this.lanes.delete(userId);
    });
  }

  private cacheTail(userId: string, tail: CachedTail | null): void {
    this.tails.delete(userId);
    if (!tail) return;
    this.tails.set(userId, tail);
    if (this.tails.size > this.maxTails) {
      const oldest = this.tails.keys().next();
      if (!oldest.done) this.tails.delete(oldest.value);
    }
  }

  /**
   * Calls `plan` with the execution's state and appends the events it decides, in one append. Mutates
   * `execution` (state and events) to what the stream says afterwards. The plan always sees every
   * event of the execution up to the revision the append expects: when the stream holds events
   * this process has not read since the execution was known, they are read first.
   */
  step(execution: Execution, plan: Plan): Promise<StepResult> {
    const { userId } = execution.ref;
    return this.serialize(userId, async () => {
      const stream = userStream(userId);
      for (let attempt = 1; attempt <= MAX_ATTEMPTS; attempt++) {
        let tail = this.tails.get(userId);
        if (!tail) {
          tail = await this.readTail(userId);
          this.cacheTail(userId, tail);
        } else if (this.sharingStreams() && performance.now() - tail.checkedAt > this.tailTrustMs) {
          // Another writer (a second dispatcher, a tool worker) appends to these streams: its
          // appends since this tail was cached make it stale, and an append on a stale tail
          // conflicts, waits for the commit that holds the stream, reads and goes again. Reading
          // the tail first costs one query. (A lone dispatcher never conflicts and never reads.)
          const stored = await this.readTail(userId);
          tail = stored.revision === tail.revision ? { ...tail, checkedAt: performance.now() } : stored;
          this.cacheTail(userId, tail);
        }
        const known = execution.knownRevision;
        if (
          known !== null &&
          (known < tail.read || (tail.own.get(execution.ref.executionId) ?? -1) > known)
        ) {
          // Another writer may have moved this execution meanwhile: a dispatcher that took it for
          // dead, or another view of it in this process.
          tail = await this.catchUp(execution, known + 1);
        }
        const bodies = plan(execution.state);
        if (bodies.length === 0) return { appended: [] };
        const events = this.build(execution, bodies, tail.hash);
        try {
          const result = await this.options.store.append(
            stream,
            events.map(toEventData),
            tail.revision < 0 ? 'no_stream' : tail.revision,
          );
          if (!result.written) throw new WrongExpectedRevisionError(stream, tail.revision, null);
          const first = result.nextRevision - events.length + 1;
          // The lane is this user's alone: the map goes on with the tail, amended in place.
          const own = tail.own.set(execution.ref.executionId, result.nextRevision);
          this.cacheTail(
            userId,
            own.size > MAX_OWN
              ? null
              : {
                  revision: result.nextRevision,
                  hash: events.at(-1)!.metadata.hash,
                  read: tail.read,
                  own,
                  checkedAt: performance.now(),
                },
          );
          for (const event of events) execution.state = evolve(execution.state, event);
          execution.events.push(...events);
          execution.knownRevision = result.nextRevision;
          this.publish(userId, events, first);
          return { appended: events };
        } catch (e) {
          if (!(e instanceof WrongExpectedRevisionError)) {
            // Whatever happened, the cached tail may be wrong now.
            this.cacheTail(userId, null);
            throw e;
          }
          this.lastConflictAt = performance.now();
          this.options.onConflict?.();
          await this.reload(execution, tail, e);
        }
      }
      this.cacheTail(userId, null);
      throw new AppendConflictError(stream, MAX_ATTEMPTS);
    });
  }

  /** Whether another writer has appended to streams this process appends to, lately. */
  private sharingStreams(): boolean {
    return performance.now() - this.lastConflictAt < SHARED_WRITES_MS;
  }

  /**
   * The execution as stored, found by its id in the store's index (never by reading the user's
   * stream): its events, and the stream's tail revision up to which they are complete. Outside
   * the user's queue: it reads, never appends.
   */
  async load(ref: ExecutionRef): Promise<Execution> {
    const execution = newExecution(ref);
    await this.readExecution(execution, false);
    return execution;
  }

  /**
   * The execution's events as stored, through the index only: one query, no tail. For readers
   * that need what happened, not a revision to append at (the answer lookups: many, under overload,
   * of requests still queued; each is a query that appends wait behind).
   */
  async recorded(ref: ExecutionRef): Promise<Execution> {
    const execution = newExecution(ref);
    execution.events = await this.eventsOf(ref.userId, ref.executionId);
    execution.state = execution.events.reduce(evolve, initialState());
    return execution;
  }

  private async eventsOf(userId: string, executionId: string): Promise<ToolEvent[]> {
    const found: ToolEvent[] = [];
    for await (const r of this.options.store.readByKey(userStream(userId), executionId)) {
      const parsed = fromRecorded(r);
      if (parsed.ok && parsed.event.metadata.executionId === executionId) found.push(parsed.event);
    }
    return found;
  }

  private build(execution: Execution, bodies: ToolEventBody[], prevHash: string): ToolEvent[] {
    const { ref } = execution;
    const at = this.options.now().toISOString();
    return envelopeEvents(
      bodies,
      { ...ref, causationId: execution.events.at(-1)?.id ?? ref.requestId, occurredAt: () => at },
      prevHash,
    );
  }

  private publish(userId: string, events: ToolEvent[], firstRevision: number): void {
    if (this.options.publishOnCommit === false) return;
    events.forEach((event, i) => {
      try {
        publishEvent(this.options.nc, userId, firstRevision + i, event);
      } catch (e) {
        // The event is committed: the relay (when it runs) publishes it, and a notifier fills a gap from the store.
        this.options.log.warn({ err: e, userId, revision: firstRevision + i }, 'event publish failed');
      }
    });
  }

  private async readTail(userId: string): Promise<CachedTail> {
    for await (const r of this.options.store.readStream(userStream(userId), {
      direction: 'backwards',
      maxCount: 1,
    })) {
      return this.tailOf(r);
    }
    return emptyStream();
  }

  /** The tail at a stored event, read from the store. */
  private tailOf(r: RecordedEvent): CachedTail {
    const hash = (r.metadata as { hash?: unknown } | null)?.hash;
    if (typeof hash !== 'string') {
      this.options.log.error(
        { stream: r.streamId, revision: r.revision },
        'stream tail has no hash; chaining to genesis',
      );
      return {
        revision: r.revision,
        hash: GENESIS_HASH,
        read: r.revision,
        own: new Map(),
        checkedAt: performance.now(),
      };
    }
    return { revision: r.revision, hash, read: r.revision, own: new Map(), checkedAt: performance.now() };
  }

  /**
   * Reads the stream forwards from `from`, folds in this execution's events, and caches the tail
   * it ends at (in the user's queue: nothing of this process appends meanwhile).
   */
  private async catchUp(execution: Execution, from: number): Promise<CachedTail> {
    const { userId } = execution.ref;
    let last: RecordedEvent | undefined;
    for await (const r of this.options.store.readStream(userStream(userId), { fromRevision: from })) {
      last = r;
      const parsed = fromRecorded(r);
      if (parsed.ok && parsed.event.metadata.executionId === execution.ref.executionId) {
        if (!execution.events.some((e) => e.id === parsed.event.id)) {
          execution.events.push(parsed.event);
          execution.state = evolve(execution.state, parsed.event);
        }
      }
    }
    // Nothing after `from`: the stream ends before it (read again from the end).
    const tail = last ? this.tailOf(last) : await this.readTail(userId);
    // One believed new stays so: what is before `from` was never read for it.
    if (execution.knownRevision !== null) execution.knownRevision = tail.revision;
    this.cacheTail(userId, tail);
    return tail;
  }

  /**
   * After a conflict: when the stream only grew past a known tail, the new events are read forwards
   * (a few); otherwise (the tail was right, so an event id of this step is already stored; or no
   * tail was known) the execution is read again through the index, with the tail.
   */
  private async reload(
    execution: Execution,
    tail: Tail,
    conflict: WrongExpectedRevisionError,
  ): Promise<void> {
    const grew = conflict.actual !== null && conflict.actual > tail.revision;
    if (grew) {
      // Up to the tail, the execution is known (`step` caught it up; what follows the last read is ours).
      await this.catchUp(execution, tail.revision + 1);
      return;
    }
    this.cacheTail(execution.ref.userId, null);
    await this.readExecution(execution);
  }

  /**
   * Reads the execution's events through the store's index by execution id (`readByKey`): the cost
   * follows the execution, not the user's history. The tail is read first (one event, backwards),
   * so every event of the execution up to it is among those read; one appended meanwhile may be
   * too (a later catch-up skips it by id). Refreshes the cached tail when asked.
   */
  private async readExecution(execution: Execution, updateTail = true): Promise<void> {
    const { userId, executionId } = execution.ref;
    const tail = await this.readTail(userId);
    const found = await this.eventsOf(userId, executionId);
    if (updateTail) this.cacheTail(userId, tail);
    execution.knownRevision = tail.revision;
    // Continue the execution under the correlation id it was recorded with.
    if (found[0]) execution.ref = { ...execution.ref, correlationId: found[0].metadata.correlationId };
    execution.events = found;
    execution.state = found.reduce(evolve, initialState());
  }
}
