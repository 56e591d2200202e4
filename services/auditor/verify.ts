import {
  eventProblem,
  GENESIS_HASH,
  initialState,
  evolve,
  isTerminal,
  isTerminalState,
  userStream,
  type ExecutionState,
} from '../../contracts/index.ts';
import type { EventStore, RecordedEvent, RecordedEventText } from '../../lib/eventstore/types.ts';
import {
  checkRecorded,
  checkText,
  sharedEventThreads,
  THREADED_FROM_EVENTS,
  type Audited,
  type AuditedEvent,
  type EventThreads,
} from '../../lib/threads/events.ts';
import { BloomFilter } from '../../lib/bloom.ts';
import type { Checkpoint } from './checkpoint.ts';

/**
 * Verification of one user's history, event by event, in one forward pass:
 *  - revisions run 0, 1, 2... without a gap or a repeat;
 *  - every event parses against its schema (lib/toolEvents `fromRecorded`) and names the stream's user;
 *  - `metadata.prevHash` is the hash of the event before (GENESIS_HASH for revision 0) and
 *    `metadata.hash` covers the event's canonical content (contracts/chain `eventHash`);
 *  - every execution follows its life cycle (contracts/execution `eventProblem`, the rules the
 *    decider decides by): a request first, attempts counted as the decider counts them, no run
 *    before an approval asked for, an approval for the hash asked, one terminal event, nothing
 *    after it;
 *  - against a checkpoint: the event at the checkpoint's revision carries the checkpoint's hash,
 *    and the stream reaches that revision.
 * The first problem stops the walk and is reported exactly (revision, event id, what is wrong).
 *
 * Memory stays flat: only executions not yet ended are held (normally a handful); ended ones go
 * into a fixed-size Bloom filter, and a "maybe ended" is confirmed by reading the stream again.
 */

export type BreakKind = 'revision' | 'schema' | 'link' | 'hash' | 'lifecycle' | 'checkpoint' | 'truncated';

export interface HistoryBreak {
  /** The first revision at which the history is not what it must be. */
  revision: number;
  /** The id of the event found there; null when the event is missing. */
  eventId: string | null;
  kind: BreakKind;
  problem: string;
}

export interface VerifyReport {
  ok: boolean;
  userId: string;
  stream: string;
  /** Events read and found sound (up to the break, if any). */
  events: number;
  /** Revision, hash and id of the last sound event (-1, GENESIS_HASH, null for an empty stream). */
  lastRevision: number;
  lastHash: string;
  lastEventId: string | null;
  executions: { started: number; ended: number; open: number };
  /** Present when checked against a checkpoint. */
  checkpoint: { revision: number; hash: string; issuedAt: string; matched: boolean } | null;
  break: HistoryBreak | null;
  startedAt: string;
  finishedAt: string;
}

/** Where a stored event stands, which is all the verifier reads of it besides its parse. */
type EventAt = Pick<RecordedEvent, 'id' | 'revision'>;

/** Where an ended execution's terminal event is, found by reading the stream before `beforeRevision`. */
export type FindTerminal = (executionId: string, beforeRevision: number) => Promise<number | null>;

interface OpenExecution {
  requestId: string;
  state: ExecutionState;
}

export interface ChainVerifierOptions {
  userId: string;
  findTerminal: FindTerminal;
  checkpoint?: Pick<Checkpoint, 'revision' | 'hash' | 'eventId'> | null;
  bloomBytes?: number;
}

/** The checks, fed one stored event at a time. Knows nothing of where the events come from. */
export class ChainVerifier {
  private expectedRevision = 0;
  private prevHash = GENESIS_HASH;
  private lastEventId: string | null = null;
  private count = 0;
  private started = 0;
  private ended = 0;
  private readonly open = new Map<string, OpenExecution>();
  private readonly endedFilter: BloomFilter;
  private failure: HistoryBreak | null = null;
  private checkpointMatched = false;

  constructor(private readonly options: ChainVerifierOptions) {
    this.endedFilter = new BloomFilter(options.bloomBytes);
  }

  get broken(): HistoryBreak | null {
    return this.failure;
  }

  /**
   * Checks the next event; returns the break it reveals (and every later call returns it too).
   * `checked`: the event already parsed and hashed (`checkRecorded`, perhaps on a worker thread);
   * the verdict is the same either way, only where the parsing and hashing ran differs.
   */
  async accept(recorded: RecordedEvent, checked?: Audited): Promise<HistoryBreak | null>;
  async accept(recorded: EventAt, checked: Audited): Promise<HistoryBreak | null>;
  async accept(recorded: EventAt, checked?: Audited): Promise<HistoryBreak | null> {
    return this.check(recorded, checked ?? checkRecorded(recorded as RecordedEvent));
  }

  /**
   * `accept` without a promise for most events: only one whose execution the Bloom filter may have
   * seen end is answered later, once the stream has been read again (a promise is then returned).
   * A long history's walk checks every event this way, one page of them after another.
   */
  check(recorded: EventAt, checked: Audited): HistoryBreak | null | Promise<HistoryBreak | null> {
    if (this.failure) return this.failure;
    const revision = recorded.revision;
    if (revision !== this.expectedRevision) return this.revisionBreak(recorded);
    if (!checked.ok) return this.fail('schema', checked.reason, recorded);
    if (checked.userId !== this.options.userId) {
      return this.fail(
        'schema',
        `event belongs to user ${checked.userId}, not ${this.options.userId}`,
        recorded,
      );
    }
    const event = checked.event;

    if (event.metadata.prevHash !== this.prevHash) {
      const before =
        revision === 0 ? 'the genesis hash' : `the hash of revision ${revision - 1} (${this.prevHash})`;
      return this.fail(
        'link',
        `prevHash ${event.metadata.prevHash} does not link to ${before}: an event was removed, inserted or moved here`,
        recorded,
      );
    }
    const actual = checked.hash;
    if (actual !== event.metadata.hash) {
      return this.fail(
        'hash',
        `stored hash ${event.metadata.hash} does not cover the event's content (it hashes to ${actual}): the event was altered`,
        recorded,
      );
    }

    const { executionId } = event.metadata;
    if (!this.open.has(executionId) && this.endedFilter.mightContain(executionId)) {
      // Maybe ended already: read the stream again to know (never a wrong verdict, only slower).
      return this.options
        .findTerminal(executionId, revision)
        .then((endedAt) => this.afterLifecycle(recorded, event, endedAt));
    }
    return this.afterLifecycle(recorded, event, null);
  }

  private fail(kind: BreakKind, problem: string, at: { revision: number; id: string | null }): HistoryBreak {
    return (this.failure = { revision: at.revision, eventId: at.id, kind, problem });
  }

  private revisionBreak(recorded: EventAt): HistoryBreak {
    const { revision } = recorded;
    const expected = this.expectedRevision;
    if (revision > expected) {
      const missing =
        revision - expected === 1
          ? `revision ${expected} is missing`
          : `revisions ${expected}..${revision - 1} are missing`;
      return this.fail('revision', `${missing}: the next stored event is at revision ${revision}`, {
        revision: expected,
        id: null,
      });
    }
    return this.fail('revision', `revision ${revision} appears where revision ${expected} was expected`, {
      revision: expected,
      id: recorded.id,
    });
  }

  /** The rest of `check`, once it is known whether the event's execution ended before (`endedAt`). */
  private afterLifecycle(
    recorded: EventAt,
    event: AuditedEvent,
    endedAt: number | null,
  ): HistoryBreak | null {
    const revision = recorded.revision;
    const lifecycle = this.checkLifecycle(event, endedAt);
    if (lifecycle) return this.fail('lifecycle', lifecycle, recorded);

    const cp = this.options.checkpoint;
    if (cp && revision === cp.revision) {
      if (event.metadata.hash !== cp.hash || event.id !== cp.eventId) {
        return this.fail(
          'checkpoint',
          `the checkpoint vouches for event ${cp.eventId} with hash ${cp.hash} at revision ${cp.revision}, ` +
            `but the stream holds event ${event.id} with hash ${event.metadata.hash}: the history was rewritten after the checkpoint`,
          recorded,
        );
      }
      this.checkpointMatched = true;
    }

    this.expectedRevision = revision + 1;
    this.prevHash = event.metadata.hash;
    this.lastEventId = event.id;
    this.count++;
    return null;
  }

  /**
   * Called when the stream has been read to its end. `storeHead` is the last revision the store
   * reported before the walk (events appended during the walk may lie beyond it, never before).
   */
  finish(storeHead: number | null): HistoryBreak | null {
    if (this.failure) return this.failure;
    const last = this.expectedRevision - 1;
    const cp = this.options.checkpoint;
    if (cp && last < cp.revision) {
      return (this.failure = {
        revision: last + 1,
        eventId: null,
        kind: 'truncated',
        problem:
          `the stream ends at revision ${last} but the checkpoint vouches for revision ${cp.revision} ` +
          `(event ${cp.eventId}): ${last + 1 === cp.revision ? `revision ${cp.revision} was` : `revisions ${last + 1}..${cp.revision} were`} removed`,
      });
    }
    if (storeHead !== null && last < storeHead) {
      return (this.failure = {
        revision: last + 1,
        eventId: null,
        kind: 'truncated',
        problem: `the store reports revision ${storeHead} as the stream's last, but reading ends at revision ${last}`,
      });
    }
    return null;
  }

  summary(): Omit<
    VerifyReport,
    'userId' | 'stream' | 'checkpoint' | 'startedAt' | 'finishedAt' | 'ok' | 'break'
  > & {
    checkpointMatched: boolean;
  } {
    return {
      events: this.count,
      lastRevision: this.expectedRevision - 1,
      lastHash: this.prevHash,
      lastEventId: this.lastEventId,
      executions: { started: this.started, ended: this.ended, open: this.open.size },
      checkpointMatched: this.checkpointMatched,
    };
  }

  /**
   * Why this event may not happen in its execution's life, or null. `endedAt`: where the execution
   * ended before this event, when it is not running and the stream was read to know (`check`).
   */
  private checkLifecycle(event: AuditedEvent, endedAt: number | null): string | null {
    const { executionId, requestId } = event.metadata;
    const open = this.open.get(executionId);
    let state: ExecutionState = open?.state ?? initialState();
    if (!open) {
      // Not running: new (only a request may start it), or already ended (nothing may follow).
      if (endedAt !== null) {
        return `${event.type} for execution ${executionId}, which already ended at revision ${endedAt}: nothing may follow a terminal event`;
      }
      if (event.type !== 'ToolRequested') {
        return `${event.type} for execution ${executionId}, which was never requested: an execution starts with ToolRequested`;
      }
    } else if (open.requestId !== requestId) {
      return `${event.type} for execution ${executionId} names request ${requestId}, but the execution was requested as ${open.requestId}`;
    }

    const problem = eventProblem(state, event);
    if (problem)
      return `${event.type} is not allowed while execution ${executionId} is ${state.status}: ${problem}`;

    state = evolve(state, event);
    if (event.type === 'ToolRequested') this.started++;
    if (isTerminalState(state)) {
      this.open.delete(executionId);
      this.endedFilter.add(executionId);
      this.ended++;
    } else {
      this.open.set(executionId, { requestId, state });
    }
    return null;
  }
}

/** Reads the stream before `beforeRevision` for the terminal event of one execution. */
export function storeFindTerminal(store: EventStore, stream: string): FindTerminal {
  return async (executionId, beforeRevision) => {
    if (beforeRevision <= 0) return null;
    for await (const r of store.readStream(stream, { fromRevision: 0, maxCount: beforeRevision })) {
      const meta = r.metadata as { executionId?: unknown } | null;
      if (meta && meta.executionId === executionId && isTerminal(r.type)) return r.revision;
    }
    return null;
  };
}

export interface VerifyOptions {
  checkpoint?: Checkpoint | null;
  /** Called after each sound event (for a progress indicator). */
  onEvent?: (revision: number) => void;
  now?: () => Date;
  bloomBytes?: number;
  /**
   * Where events are parsed and hashed: worker threads, or null for the calling thread. By default
   * the process's pool (EVENT_THREADS, lib/threads/events.ts) for a stream longer than
   * THREADED_FROM_EVENTS, the calling thread for a shorter one (starting threads would cost more).
   */
  threads?: EventThreads | null;
}

/** Events per task sent to a thread: the PostgreSQL store's page. */
export const THREAD_PAGE = 500;

/** Walks a user's whole stream page by page and verifies it (see the top of this file). */
export async function verifyHistory(
  store: EventStore,
  userId: string,
  options: VerifyOptions = {},
): Promise<VerifyReport> {
  const now = options.now ?? (() => new Date());
  const stream = userStream(userId);
  const startedAt = now().toISOString();
  const cp = options.checkpoint ?? null;
  const verifier = new ChainVerifier({
    userId,
    findTerminal: storeFindTerminal(store, stream),
    checkpoint: cp,
    ...(options.bloomBytes ? { bloomBytes: options.bloomBytes } : {}),
  });
  const head = await store.streamInfo(stream);
  const threads =
    options.threads !== undefined
      ? options.threads
      : (head?.revision ?? -1) + 1 >= THREADED_FROM_EVENTS
        ? sharedEventThreads()
        : null;
  let failure: HistoryBreak | null = null;
  // The store's JSON as text where it can give it: parsed once, where the rest of the check runs.
  const pages: AsyncIterable<CheckedPage<EventAt>> = store.readStreamText
    ? checkedPages(store.readStreamText(stream), threads, TEXT)
    : checkedPages(store.readStream(stream), threads, PARSED);
  walk: for await (const { recorded, checked } of pages) {
    for (let i = 0; i < recorded.length; i++) {
      const verdict = verifier.check(recorded[i]!, checked[i]!);
      failure = verdict instanceof Promise ? await verdict : verdict;
      if (failure) break walk;
      options.onEvent?.(recorded[i]!.revision);
    }
  }
  failure ??= verifier.finish(head?.revision ?? null);
  const { checkpointMatched, ...summary } = verifier.summary();
  return {
    ok: failure === null,
    userId,
    stream,
    ...summary,
    checkpoint: cp
      ? { revision: cp.revision, hash: cp.hash, issuedAt: cp.issuedAt, matched: checkpointMatched }
      : null,
    break: failure,
    startedAt,
    finishedAt: now().toISOString(),
  };
}

/** How stored events of one form are parsed and hashed: here, one by one, or a page on the threads. */
export interface EventChecker<E> {
  here: (event: E) => Audited;
  onThreads: (threads: EventThreads, page: readonly E[]) => Promise<Audited[]>;
}

export const PARSED: EventChecker<RecordedEvent> = {
  here: checkRecorded,
  onThreads: (threads, page) => threads.audit(page),
};

export const TEXT: EventChecker<RecordedEventText> = {
  here: checkText,
  onThreads: (threads, page) => threads.auditText(page),
};

/** Events read, in order, and their parses and hashes: one page of them. */
export interface CheckedPage<E> {
  recorded: E[];
  checked: Audited[];
}

/**
 * The events of a read with their parses and hashes, page by page (a page costs one step of the
 * async iteration rather than each of its events). With threads, pages of THREAD_PAGE events are
 * checked on worker threads while the next pages are read, at most two pages per thread in flight
 * (so memory stays flat however long the stream), and handed on in the order read. Leaving the loop
 * early stops the read; the pages still in flight are dropped.
 */
export async function* checkedPages<E extends EventAt>(
  events: AsyncIterable<E>,
  threads: EventThreads | null,
  checker: EventChecker<E>,
): AsyncGenerator<CheckedPage<E>> {
  // Until the threads have started (a second or so), pages are checked here rather than waited for.
  let started = threads?.isWarm ?? false;
  threads?.warm().then(
    () => (started = true),
    () => undefined, // a thread that cannot start fails the first page sent to it
  );
  const maxInFlight = 2 * (threads?.size ?? 0);
  const inFlight: Array<{ recorded: E[]; checked: Promise<Audited[]> }> = [];
  let page: E[] = [];
  // A read that fails part way still hands on what it read (a break found there is the answer).
  let failed: { error: unknown } | null = null;
  try {
    for await (const recorded of events) {
      page.push(recorded);
      if (page.length < THREAD_PAGE) continue;
      if (threads && (started || inFlight.length > 0)) {
        const checked = checker.onThreads(threads, page);
        checked.catch(() => undefined); // awaited in order below, or dropped when the loop ends early
        inFlight.push({ recorded: page, checked });
        if (inFlight.length >= maxInFlight) {
          const done = inFlight.shift()!;
          yield { recorded: done.recorded, checked: await done.checked };
        }
      } else {
        yield { recorded: page, checked: page.map(checker.here) };
      }
      page = [];
    }
  } catch (error) {
    failed = { error };
  }
  if (page.length > 0 && threads && inFlight.length > 0) {
    const checked = checker.onThreads(threads, page);
    checked.catch(() => undefined);
    inFlight.push({ recorded: page, checked });
    page = [];
  }
  while (inFlight.length > 0) {
    const done = inFlight.shift()!;
    yield { recorded: done.recorded, checked: await done.checked };
  }
  if (page.length > 0) yield { recorded: page, checked: page.map(checker.here) };
  if (failed) throw failed.error;
}

/** One line for people: "OK ..." or "BROKEN at revision N ...". */
export function describeReport(report: VerifyReport): string {
  const ex = report.executions;
  const cp = report.checkpoint
    ? `; checkpoint at revision ${report.checkpoint.revision} ${report.checkpoint.matched ? 'matched' : 'not matched'}`
    : '';
  if (report.ok && report.events === 0) {
    // Sound, but only because there is nothing: a mistyped user id must not read as a clean audit.
    return `NOTHING TO VERIFY ${report.stream}: no events (this user has run no tool, or the user id is mistyped)${cp}`;
  }
  if (report.ok) {
    const range = `revisions 0..${report.lastRevision}`;
    return (
      `OK ${report.stream}: ${report.events} events (${range}), ${ex.started} executions ` +
      `(${ex.ended} ended, ${ex.open} open), last hash ${report.lastHash}${cp}`
    );
  }
  const b = report.break!;
  return (
    `BROKEN ${report.stream} at revision ${b.revision}` +
    `${b.eventId ? ` (event ${b.eventId})` : ''}: [${b.kind}] ${b.problem}. ` +
    `${report.events} events before it are sound${cp}`
  );
}
