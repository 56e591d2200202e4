/**
 * The KurrentDB (EventStoreDB) adapter of the event store, over the official gRPC client
 * `@kurrent/kurrentdb-client`. KurrentDB already has the semantics the interface describes; this
 * file maps names and numbers (bigint revisions to numbers, the client's errors to ours), hides
 * system events, and closes the few gaps listed in docs/decisions/0002-event-store-clients.md.
 */
import {
  ANY,
  AccessDeniedError,
  BACKWARDS,
  END,
  FORWARDS,
  KurrentDBClient,
  NO_STREAM,
  START,
  STREAM_EXISTS,
  StreamNotFoundError,
  WrongExpectedVersionError,
  eventTypeFilter,
  jsonEvent,
  streamNameFilter,
  type AllStreamSubscription,
  type AppendStreamState,
  type CurrentStreamState,
  type EventData as KurrentEventData,
  type Filter,
  type JSONType,
  type Position as KurrentPosition,
  type ReadPosition,
  type ReadRevision,
} from '@kurrent/kurrentdb-client';
import {
  EventStoreError,
  WrongExpectedRevisionError,
  assertAppendable,
  assertKey,
  assertStreamName,
  InvalidEventError,
  comparePositions,
  type AppendResult,
  type EventData,
  type EventStore,
  type ExpectedRevision,
  type Json,
  type Position,
  type ReadAllOptions,
  type ReadStreamOptions,
  type RecordedEvent,
  type StreamInfo,
  type SubscribeOptions,
  type Subscription,
  type SubscriptionFilter,
} from './types.ts';
import { backoffMs } from '../retry.ts';

const PING_TIMEOUT_MS = 5_000;
/** A subscription whose reads fail waits a random time below 100 ms doubling up to 5 s, then reads again. */
const SUBSCRIPTION_RETRY = { minMs: 100, maxMs: 5_000 };
/** Servers before 22.6 return this instead of a position when an event is read from its stream. */
const NO_POSITION = 0xffff_ffff_ffff_ffffn;
/** Every stream but KurrentDB's own (`$`-prefixed) ones, filtered on the server. */
const USER_STREAMS: Filter = streamNameFilter({ regex: '^[^$]' });
/**
 * Where an event's key goes: the metadata field that KurrentDB's `$by_correlation_id` system
 * projection reads, and the streams it links into. Reserved: metadata of an event may not carry
 * this field itself, and it is taken out again when an event is read.
 */
const KEY_FIELD = '$correlationId';
const KEY_STREAM_PREFIX = '$bc-';

/** The fields this adapter reads from the client's recorded events (stream and $all reads alike). */
interface ClientRecord {
  streamId: string;
  id: string;
  type: string;
  revision: bigint;
  created: Date;
  data: unknown;
  metadata: unknown;
  position?: KurrentPosition | undefined;
}
interface ClientResolved {
  event?: ClientRecord | undefined;
}

export interface KurrentEventStoreOptions {
  /** Told about transient errors that a subscription retries through (a lost connection). */
  onError?: (error: Error) => void;
}

/**
 * `url`: `kurrentdb://host:2113?tls=false` (or the older `esdb://` spelling). Connecting is lazy:
 * the first call opens the connection, `ping()` tells whether the server answers.
 */
export function createKurrentEventStore(url: string, settings: KurrentEventStoreOptions = {}): EventStore {
  // The client accepts `esdb://` but warns on every start that it is deprecated; the two mean the same.
  const client = KurrentDBClient.connectionString(url.replace(/^esdb(\+discover)?:\/\//, 'kurrentdb$1://'));
  const subscriptions = new Set<Subscription>();

  /** Reads one stream; a stream that does not exist reads as empty. */
  async function* readStreamEvents(
    stream: string,
    options: {
      direction: typeof FORWARDS | typeof BACKWARDS;
      fromRevision: ReadRevision;
      maxCount?: number;
      resolveLinkTos?: boolean;
    },
  ): AsyncGenerator<RecordedEvent> {
    try {
      for await (const resolved of client.readStream(stream, options) as AsyncIterable<ClientResolved>) {
        if (resolved.event) yield toRecorded(resolved.event);
      }
    } catch (err) {
      if (err instanceof StreamNotFoundError) return;
      throw err;
    }
  }

  /**
   * Whether this append is a retry, or clashes with events already there. KurrentDB answers a
   * retry with success without writing, but that answer looks exactly like a fresh write; and it
   * does not refuse an id that is already in the stream when the expected revision matches. So the
   * adapter reads first, in one round trip: the events where `expected` puts this append, and the
   * `ids.length` events before that place.
   * - all of `ids` are there, in order, where they would go: a retry; returns the revision of
   *   the last of them (nothing to write);
   * - some of `ids` are among the events before: a conflict, never a duplicate;
   * - otherwise null: the server decides (it refuses anything else at a taken revision).
   * An id further back in the stream is not looked for (the PostgreSQL adapter refuses it too).
   */
  async function findEarlierAppend(
    stream: string,
    ids: string[],
    expected: ExpectedRevision,
  ): Promise<number | null> {
    const k = ids.length;
    const same = (found: RecordedEvent[]) => found.length === k && found.every((e, i) => e.id === ids[i]);
    const wanted = new Set(ids);
    let before: RecordedEvent[];
    if (expected === 'any' || expected === 'stream_exists') {
      // The place is the stream's end: a retry finds its events among the last ones, unless others
      // have been appended since (then KurrentDB's own best-effort check is all there is).
      before = await collect(
        readStreamEvents(stream, { direction: BACKWARDS, fromRevision: END, maxCount: k }),
      );
      before.reverse();
      if (same(before)) return before[k - 1]!.revision;
    } else {
      const at = expected === 'no_stream' ? 0 : expected + 1;
      const from = Math.max(0, at - k);
      const window = await collect(
        readStreamEvents(stream, {
          direction: FORWARDS,
          fromRevision: BigInt(from),
          maxCount: at - from + k,
        }),
      );
      const there = window.filter((e) => e.revision >= at);
      if (same(there)) return at + k - 1;
      if (there.length > 0) return null;
      before = window;
    }
    // Nothing follows these events, so the last of them is the stream's actual revision.
    if (before.some((e) => wanted.has(e.id))) {
      throw new WrongExpectedRevisionError(stream, expected, before[before.length - 1]!.revision);
    }
    return null;
  }

  /** The global position of the event at `revision` of `stream`, which has just been written. */
  async function positionAt(stream: string, revision: number): Promise<Position> {
    for await (const e of readStreamEvents(stream, {
      direction: FORWARDS,
      fromRevision: BigInt(revision),
      maxCount: 1,
    })) {
      return e.position;
    }
    throw new EventStoreError(
      `stream ${stream}: revision ${revision} was written but cannot be read`,
      'POSITION_UNKNOWN',
    );
  }

  const store: EventStore = {
    kind: 'kurrentdb',

    async append(stream: string, events: EventData[], expected: ExpectedRevision): Promise<AppendResult> {
      assertAppendable(stream, events, expected);
      assertKeyable(events);
      const ids = events.map((e) => e.id.toLowerCase());
      const earlier = await findEarlierAppend(stream, ids, expected);
      if (earlier !== null) return { nextRevision: earlier, position: null, written: false };

      let result;
      try {
        result = await client.appendToStream(stream, events.map(toKurrentEvent), {
          streamState: toStreamState(expected),
        });
      } catch (err) {
        if (err instanceof WrongExpectedVersionError) {
          throw new WrongExpectedRevisionError(stream, expected, fromCurrentState(err.actualState));
        }
        throw err;
      }
      const nextRevision = Number(result.nextExpectedRevision);
      // For one event the server's answer is that event's position. For several it gives the
      // transaction's first prepare position, which is not the last event's: read that instead.
      const p = result.position;
      const position =
        events.length === 1 && p !== undefined && p.commit === p.prepare
          ? { commit: p.commit, prepare: p.prepare }
          : await positionAt(stream, nextRevision);
      return { nextRevision, position, written: true };
    },

    async *readStream(stream: string, options: ReadStreamOptions = {}): AsyncGenerator<RecordedEvent> {
      assertStreamName(stream);
      const forwards = (options.direction ?? 'forwards') === 'forwards';
      let from = options.fromRevision ?? (forwards ? 'start' : 'end');
      if (typeof from === 'number') {
        if (!Number.isSafeInteger(from))
          throw invalidArgument(`fromRevision must be an integer, got ${from}`);
        // As in the PostgreSQL adapter: before revision 0 is the start, or nothing backwards.
        if (from < 0) {
          if (!forwards) return;
          from = 'start';
        }
      }
      if (options.maxCount !== undefined) {
        assertCount(options.maxCount, 'maxCount');
        if (options.maxCount === 0) return;
      }
      yield* readStreamEvents(stream, {
        direction: forwards ? FORWARDS : BACKWARDS,
        fromRevision: from === 'start' ? START : from === 'end' ? END : BigInt(from),
        ...(options.maxCount !== undefined && { maxCount: options.maxCount }),
      });
    },

    /**
     * The by-correlation-id system projection (`$by_correlation_id`, which must run) links every
     * event whose metadata has `$correlationId` into `$bc-<that value>`; the adapter writes the
     * key there. That stream holds the key's events of every stream, in global order (which is
     * revision order within one stream): the links are resolved and only `stream`'s are kept.
     * The projection runs after the commit: a read right after an append may miss its events.
     */
    async *readByKey(stream: string, key: string): AsyncGenerator<RecordedEvent> {
      assertStreamName(stream);
      assertKey(key);
      const seen = new Set<string>();
      const found: RecordedEvent[] = [];
      for await (const e of readStreamEvents(`${KEY_STREAM_PREFIX}${key}`, {
        direction: FORWARDS,
        fromRevision: START,
        resolveLinkTos: true,
      })) {
        // A link whose event was deleted resolves to nothing; a projection reset may link twice.
        if (e.streamId !== stream || e.type.startsWith('$') || seen.has(e.id)) continue;
        seen.add(e.id);
        found.push(e);
      }
      yield* found.sort((a, b) => a.revision - b.revision);
    },

    async *readAll(options: ReadAllOptions = {}): AsyncGenerator<RecordedEvent> {
      const direction = options.direction ?? 'forwards';
      const from = options.fromPosition ?? (direction === 'forwards' ? 'start' : 'end');
      let left = options.maxCount ?? Number.POSITIVE_INFINITY;
      if (options.maxCount !== undefined) assertCount(options.maxCount, 'maxCount');
      if (left === 0) return;

      if (direction === 'backwards' && typeof from === 'object') {
        // Ours is inclusive; KurrentDB's backward read starts before the position (a repeat of the
        // event at it, should a server include it, is skipped below). So look there first.
        for await (const resolved of client.readAll({
          fromPosition: from,
          maxCount: 1,
          filter: USER_STREAMS,
        })) {
          const e = toUserEvent(resolved);
          if (e && comparePositions(e.position, from) === 0) {
            yield e;
            left -= 1;
          }
        }
        if (left === 0) return;
      }

      // maxCount is counted here, after system events are dropped, not by the server.
      const reads = client.readAll({
        direction: direction === 'forwards' ? FORWARDS : BACKWARDS,
        fromPosition: toReadPosition(from),
        filter: USER_STREAMS,
      });
      for await (const resolved of reads) {
        const e = toUserEvent(resolved);
        if (!e) continue;
        if (typeof from === 'object') {
          const order = comparePositions(e.position, from);
          // Inclusive both ways; the event at `from` itself was given above when reading backwards.
          if (direction === 'forwards' ? order < 0 : order >= 0) continue;
        }
        yield e;
        left -= 1;
        if (left === 0) return;
      }
    },

    subscribe(options: SubscribeOptions): Subscription {
      const filter = options.filter ?? {};
      const open = (from: Position | 'start' | 'end') =>
        client.subscribeToAll({ fromPosition: toReadPosition(from), filter: serverFilter(filter) });
      const subscription = catchUpSubscription(
        open,
        options.from,
        (e) => matches(e, filter),
        settings.onError,
        () => subscriptions.delete(subscription),
      );
      subscriptions.add(subscription);
      return subscription;
    },

    async streamInfo(stream: string): Promise<StreamInfo | null> {
      assertStreamName(stream);
      for await (const e of readStreamEvents(stream, {
        direction: BACKWARDS,
        fromRevision: END,
        maxCount: 1,
      })) {
        return { revision: e.revision, position: e.position };
      }
      return null;
    },

    async ping(): Promise<void> {
      // Reading a stream needs no special rights ($all needs $admins); a missing one reads as empty.
      const read = collect(
        readStreamEvents('toolbus-ping', { direction: BACKWARDS, fromRevision: END, maxCount: 1 }),
      );
      try {
        await withTimeout(read, PING_TIMEOUT_MS);
      } catch (err) {
        throw new EventStoreError(`KurrentDB does not answer: ${(err as Error).message}`, 'UNAVAILABLE', {
          cause: err,
        });
      }
    },

    async close(): Promise<void> {
      await Promise.all([...subscriptions].map((s) => s.close()));
      await client.dispose();
    },
  };
  return store;
}

/**
 * Our catch-up subscription over the client's (a Node stream of resolved events). `caughtUp`
 * resolves when the server has said the subscription is live and every event it sent before saying
 * so has been handed to the consumer; it rejects if the subscription is closed before that. A lost
 * connection is retried from the last event handled (with `onError` told), as the PostgreSQL
 * adapter does; only a refusal (access denied) ends the iteration with an error.
 */
function catchUpSubscription(
  open: (from: Position | 'start' | 'end') => AllStreamSubscription,
  from: Position | 'start' | 'end',
  accept: (e: RecordedEvent) => boolean,
  onError: ((err: Error) => void) | undefined,
  onClose: () => void,
): Subscription {
  let closed = false;
  let live = false;
  /** Where to resume: the last event received (from 'end': where the server said it caught up). */
  let cursor = from;
  let raw: AllStreamSubscription;
  let failure: Error | undefined;
  /** Events the client had buffered when the server said it was caught up, and where that was. */
  let storedLeft: number | null = null;
  let liveAt: Position | undefined;
  let wake: (() => void) | undefined;
  let resolveCaughtUp!: () => void;
  let rejectCaughtUp!: (err: Error) => void;
  const caughtUp = new Promise<void>((resolve, reject) => {
    resolveCaughtUp = resolve;
    rejectCaughtUp = reject;
  });
  // Nobody has to wait for it: a rejection that no one awaits is not an error of the process.
  caughtUp.catch(() => undefined);

  const goLive = () => {
    // From 'end', nothing received yet: the server's word is the only record of where the end was.
    if (liveAt && cursor === 'end') cursor = { commit: liveAt.commit, prepare: liveAt.prepare };
    if (live) return;
    live = true;
    resolveCaughtUp();
  };
  const connect = () => {
    failure = undefined;
    storedLeft = null;
    liveAt = undefined;
    const current = open(cursor);
    current.on('error', (err) => {
      if (current !== raw || failure) return;
      failure = err;
      // The client reports some failures without ending its stream; end it so that iteration throws.
      current.destroy(err);
    });
    current.once('caughtUp', (info) => {
      if (current !== raw) return;
      storedLeft = current.readableLength;
      liveAt = info.position;
      if (storedLeft === 0) goLive();
    });
    raw = current;
  };
  connect();

  let iterator: AsyncGenerator<RecordedEvent> | undefined;
  async function* iterate(): AsyncGenerator<RecordedEvent> {
    let failures = 0;
    try {
      while (!closed) {
        try {
          for await (const resolved of raw as AsyncIterable<ClientResolved>) {
            failures = 0;
            // Resolve before handing over the last stored event, so a consumer that awaits
            // `caughtUp` while handling it does not wait for itself.
            if (storedLeft !== null && storedLeft > 0 && --storedLeft === 0) goLive();
            const p = resolved.event?.position;
            if (!p) continue;
            // Exclusive `from`, and no event twice across a reconnection.
            if (typeof cursor === 'object' && comparePositions(p, cursor) <= 0) continue;
            cursor = { commit: p.commit, prepare: p.prepare };
            const e = toUserEvent(resolved);
            if (e && accept(e)) yield e;
          }
          if (closed) return;
          throw failure ?? new EventStoreError('the subscription ended unexpectedly', 'SUBSCRIPTION_ENDED');
        } catch (err) {
          if (closed) return;
          if (err instanceof AccessDeniedError) throw err;
          onError?.(err as Error);
          await new Promise<void>((resolve) => {
            const timer = setTimeout(resolve, backoffMs(failures++, SUBSCRIPTION_RETRY));
            wake = () => {
              clearTimeout(timer);
              resolve();
            };
          });
          wake = undefined;
          // Resumes after the last event received. One gap remains: from 'end', a connection lost
          // before the server said where the end was resumes from the end of that later moment.
          if (!closed) connect();
        }
      }
    } finally {
      await subscription.close();
    }
  }

  const subscription: Subscription = {
    caughtUp,
    [Symbol.asyncIterator]() {
      iterator ??= iterate();
      return iterator;
    },
    async close() {
      if (closed) return;
      closed = true;
      wake?.();
      onClose();
      if (!live) rejectCaughtUp(new EventStoreError('the subscription was closed', 'SUBSCRIPTION_CLOSED'));
      raw.destroy();
      await raw.unsubscribe().catch(() => undefined);
    },
  };
  return subscription;
}

function toRecorded(e: ClientRecord): RecordedEvent {
  const p = e.position;
  if (!p || p.commit < 0n || p.commit === NO_POSITION) {
    throw new EventStoreError(
      `event ${e.id} of ${e.streamId} came without a global position (KurrentDB before 22.6?)`,
      'POSITION_UNKNOWN',
    );
  }
  return {
    id: e.id.toLowerCase(),
    type: e.type,
    data: decodeJson(e.data),
    metadata: withoutKey(decodeJson(e.metadata)),
    streamId: e.streamId,
    revision: Number(e.revision),
    position: { commit: BigInt(p.commit), prepare: BigInt(p.prepare) },
    created: e.created,
  };
}

/** The metadata as the writer gave it: the key the adapter added is taken out. */
function withoutKey(metadata: Json): Json {
  if (!isObject(metadata) || !(KEY_FIELD in metadata)) return metadata;
  const { [KEY_FIELD]: _key, ...rest } = metadata;
  return rest;
}

/** KurrentDB's own events (`$` streams, `$` types such as links) are not part of the record. */
function toUserEvent(resolved: ClientResolved): RecordedEvent | null {
  const e = resolved.event;
  if (!e || e.streamId.startsWith('$') || e.type.startsWith('$')) return null;
  return toRecorded(e);
}

/**
 * The client parses JSON data and metadata itself; what it could not parse (or what was written
 * as bytes by another program) arrives as bytes, and no metadata as undefined.
 */
function decodeJson(value: unknown): Json {
  if (value === undefined) return null;
  if (value instanceof Uint8Array) {
    const text = Buffer.from(value).toString('utf8');
    try {
      return JSON.parse(text) as Json;
    } catch {
      return text;
    }
  }
  return value as Json;
}

const encoder = new TextEncoder();

const isObject = (m: Json): m is { [key: string]: Json } =>
  typeof m === 'object' && m !== null && !Array.isArray(m);

/** The key rides in the metadata (see KEY_FIELD), which must then be an object. */
function assertKeyable(events: EventData[]): void {
  for (const e of events) {
    if (isObject(e.metadata) && KEY_FIELD in e.metadata) {
      throw new InvalidEventError(`event ${e.id}: metadata field ${KEY_FIELD} is reserved by the store`);
    }
    if (e.key !== undefined && !isObject(e.metadata)) {
      throw new InvalidEventError(`event ${e.id}: an event with a key needs object metadata on KurrentDB`);
    }
  }
}

function toKurrentEvent(e: EventData): KurrentEventData {
  const metadata =
    e.key !== undefined && isObject(e.metadata) ? { ...e.metadata, [KEY_FIELD]: e.key } : e.metadata;
  return jsonEvent({
    id: e.id,
    type: e.type,
    // The client sends JSON.stringify(data): any Json value, not only the objects its type names.
    data: e.data as JSONType,
    // As bytes, because the client drops metadata that is falsy (null, false, 0, ''): ours is kept
    // exactly as given.
    metadata: encoder.encode(JSON.stringify(metadata)),
  });
}

function toStreamState(expected: ExpectedRevision): AppendStreamState {
  switch (expected) {
    case 'any':
      return ANY;
    case 'no_stream':
      return NO_STREAM;
    case 'stream_exists':
      return STREAM_EXISTS;
    default:
      return BigInt(expected);
  }
}

function fromCurrentState(state: CurrentStreamState | undefined): number | null {
  if (state === undefined) return null;
  return state === NO_STREAM ? -1 : Number(state);
}

function toReadPosition(from: Position | 'start' | 'end'): ReadPosition {
  if (from === 'start') return START;
  if (from === 'end') return END;
  return { commit: from.commit, prepare: from.prepare };
}

/**
 * The server takes one filter: stream prefixes if given, else event types, else "no system
 * streams". `matches` applies the whole filter again on this side.
 */
function serverFilter(filter: SubscriptionFilter): Filter {
  if (filter.streamPrefixes?.length) return streamNameFilter({ prefixes: filter.streamPrefixes });
  if (filter.eventTypes?.length) {
    return eventTypeFilter({ regex: `^(?:${filter.eventTypes.map(escapeRegex).join('|')})$` });
  }
  return USER_STREAMS;
}

/** As in the PostgreSQL adapter, an empty list matches nothing. */
function matches(e: RecordedEvent, filter: SubscriptionFilter): boolean {
  const { streamPrefixes, eventTypes } = filter;
  if (streamPrefixes && !streamPrefixes.some((p) => e.streamId.startsWith(p))) return false;
  if (eventTypes && !eventTypes.includes(e.type)) return false;
  return true;
}

function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

function assertCount(n: number, name: string): void {
  if (!Number.isSafeInteger(n) || n < 0)
    throw invalidArgument(`${name} must be a non-negative integer, got ${n}`);
}

const invalidArgument = (message: string) => new EventStoreError(message, 'INVALID_ARGUMENT');

async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
}

async function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
