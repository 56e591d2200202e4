/**
 * The event store: one interface, two adapters (PostgreSQL and KurrentDB), one conformance suite
 * (test/conformance/eventstore.ts). Semantics follow EventStoreDB: per-stream revisions from 0,
 * an expected revision on append, idempotent appends by event id, one global order, catch-up
 * subscriptions that go live.
 */

export type Json = string | number | boolean | null | Json[] | { [key: string]: Json };

/** What the stream must look like for an append to go ahead. A number is the revision of its last event. */
export type ExpectedRevision = 'any' | 'no_stream' | 'stream_exists' | number;

export interface EventData {
  /** A UUID. Appending an id that is already in the stream is a no-op (see `append`). */
  id: string;
  type: string;
  data: Json;
  metadata: Json;
  /**
   * Optional secondary key (1 to 128 characters, no whitespace or control characters) under which
   * `readByKey` finds the event within its stream, whatever the stream's length. Toolbus sets it
   * to the execution id. Written in the same append as the event (see docs/decisions/0013-execution-index.md).
   */
  key?: string;
}

/**
 * A place in the global order. PostgreSQL: `commit` is the writing transaction's id (xid8) and
 * `prepare` the row's sequence number; KurrentDB: its commit and prepare positions. Compare with
 * `comparePositions`; store with `formatPosition` and `parsePosition`.
 */
export interface Position {
  commit: bigint;
  prepare: bigint;
}

export interface RecordedEvent {
  id: string;
  type: string;
  data: Json;
  metadata: Json;
  streamId: string;
  revision: number;
  position: Position;
  created: Date;
}

/** A stored event with `data` and `metadata` as the JSON text the store holds (`readStreamText`). */
export type RecordedEventText = Omit<RecordedEvent, 'data' | 'metadata'> & { data: string; metadata: string };

export interface AppendResult {
  /** The revision of the stream's last event after the append. */
  nextRevision: number;
  /** Global position of the last event appended; null when nothing was written. */
  position: Position | null;
  /** False when every event was already in the stream (an idempotent retry). */
  written: boolean;
}

export interface ReadStreamOptions {
  direction?: 'forwards' | 'backwards';
  /** Inclusive. Defaults to the start (forwards) or the end (backwards). */
  fromRevision?: number | 'start' | 'end';
  maxCount?: number;
}

export interface ReadAllOptions {
  direction?: 'forwards' | 'backwards';
  /** Inclusive. Defaults to the start (forwards) or the end (backwards). */
  fromPosition?: Position | 'start' | 'end';
  maxCount?: number;
}

export interface SubscriptionFilter {
  /** Only streams whose names start with one of these. */
  streamPrefixes?: string[];
  /** Only these event types. */
  eventTypes?: string[];
}

export interface SubscribeOptions {
  /** Exclusive: the first event delivered comes after this position. */
  from: Position | 'start' | 'end';
  filter?: SubscriptionFilter;
  /**
   * For a subscriber to whom a few milliseconds do not matter (the dispatchers' relay, a safety
   * net behind the publish on commit): once caught up, it reads again at most this often, so that
   * the appends of that time come in one read instead of one read each. PostgreSQL store only
   * (KurrentDB pushes events to its subscriptions); default 0, every wake reads at once.
   */
  settleMs?: number;
}

/**
 * A catch-up subscription: iterate it to receive events in global order, first the stored ones,
 * then live ones as they are committed. Pull-based: nothing is read ahead of the consumer beyond
 * one batch. `caughtUp` resolves when the stored events have been delivered.
 */
export interface Subscription extends AsyncIterable<RecordedEvent> {
  readonly caughtUp: Promise<void>;
  close(): Promise<void>;
}

export interface StreamInfo {
  /** Revision of the last event. */
  revision: number;
  /** Global position of the last event. */
  position: Position;
}

export interface EventStore {
  readonly kind: 'postgres' | 'kurrentdb';
  append(stream: string, events: EventData[], expected: ExpectedRevision): Promise<AppendResult>;
  /** A stream that does not exist reads as empty. */
  readStream(stream: string, options?: ReadStreamOptions): AsyncIterable<RecordedEvent>;
  /**
   * Optional: the events `readStream` gives, their JSON left as text. For a reader that parses
   * elsewhere (the audit's worker threads): the reading thread then neither parses the JSON nor
   * copies the parsed objects to another thread, a string being far cheaper to pass on.
   */
  readStreamText?(stream: string, options?: ReadStreamOptions): AsyncIterable<RecordedEventText>;
  readAll(options?: ReadAllOptions): AsyncIterable<RecordedEvent>;
  /** Optional: the events `readAll` gives, their JSON left as text (see `readStreamText`; a rebuild). */
  readAllText?(options?: ReadAllOptions): AsyncIterable<RecordedEventText>;
  /**
   * The events of `stream` appended with `key` (see `EventData.key`), in revision order; empty
   * when there are none. Costs what those events cost, not what the stream holds: PostgreSQL reads
   * an index kept in the append's transaction; KurrentDB reads a by-key projection stream, which
   * may trail the append by the projection's lag (docs/decisions/0013-execution-index.md).
   */
  readByKey(stream: string, key: string): AsyncIterable<RecordedEvent>;
  subscribe(options: SubscribeOptions): Subscription;
  /** The last revision and position of a stream, or null when it does not exist. */
  streamInfo(stream: string): Promise<StreamInfo | null>;
  /** Resolves when the store answers. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

export class EventStoreError extends Error {
  constructor(
    message: string,
    readonly code: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = 'EventStoreError';
  }
}

export class WrongExpectedRevisionError extends EventStoreError {
  constructor(
    readonly stream: string,
    readonly expected: ExpectedRevision,
    /** The stream's last revision, or -1 when it does not exist (null if the store did not say). */
    readonly actual: number | null,
  ) {
    super(
      `stream ${stream}: expected revision ${String(expected)}, actual ${actual === null ? 'unknown' : actual}`,
      'WRONG_EXPECTED_REVISION',
    );
    this.name = 'WrongExpectedRevisionError';
  }
}

export class InvalidEventError extends EventStoreError {
  constructor(message: string) {
    super(message, 'INVALID_EVENT');
    this.name = 'InvalidEventError';
  }
}

/** What `EventData.key` may be: 1 to 128 characters, none of them whitespace or control characters. */
export const KEY_PATTERN = /^[^\s\p{C}]{1,128}$/u;

export function assertKey(key: string): void {
  if (typeof key !== 'string' || !KEY_PATTERN.test(key)) {
    throw new InvalidEventError(
      `invalid key ${JSON.stringify(String(key).slice(0, 140))}: 1 to 128 characters, no whitespace or control characters`,
    );
  }
}

export const STREAM_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$/;
const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export function assertStreamName(stream: string): void {
  if (typeof stream !== 'string' || !STREAM_NAME_PATTERN.test(stream)) {
    throw new InvalidEventError(
      `invalid stream name ${JSON.stringify(String(stream).slice(0, 120))}: must match ${String(STREAM_NAME_PATTERN)}`,
    );
  }
}

/** The checks both adapters make before anything is written. */
export function assertAppendable(stream: string, events: EventData[], expected: ExpectedRevision): void {
  assertStreamName(stream);
  if (typeof expected === 'number' && (!Number.isSafeInteger(expected) || expected < 0)) {
    throw new InvalidEventError(`expected revision must be a non-negative integer, got ${expected}`);
  }
  if (events.length === 0) throw new InvalidEventError('append needs at least one event');
  const ids = new Set<string>();
  for (const e of events) {
    if (!UUID_PATTERN.test(e.id))
      throw new InvalidEventError(`event id ${JSON.stringify(e.id)} is not a UUID`);
    if (ids.has(e.id.toLowerCase()))
      throw new InvalidEventError(`event id ${e.id} appears twice in one append`);
    ids.add(e.id.toLowerCase());
    if (typeof e.type !== 'string' || !/^[A-Za-z][A-Za-z0-9_.-]{0,99}$/.test(e.type)) {
      throw new InvalidEventError(`event type ${JSON.stringify(e.type)} is invalid`);
    }
    if (e.key !== undefined) assertKey(e.key);
  }
}

export const START: Position = { commit: 0n, prepare: 0n };

export function comparePositions(a: Position, b: Position): number {
  if (a.commit !== b.commit) return a.commit < b.commit ? -1 : 1;
  if (a.prepare !== b.prepare) return a.prepare < b.prepare ? -1 : 1;
  return 0;
}

export const formatPosition = (p: Position): string => `${p.commit}/${p.prepare}`;

export function parsePosition(s: string): Position {
  const m = /^(\d+)\/(\d+)$/.exec(s);
  if (!m) throw new EventStoreError(`invalid position ${JSON.stringify(s)}`, 'INVALID_POSITION');
  return { commit: BigInt(m[1]!), prepare: BigInt(m[2]!) };
}
