/**
 * The event store conformance suite: one set of behaviours that every adapter of `EventStore`
 * (lib/eventstore/types.ts) must show, run by test/eventstore.postgres.int.spec.ts and
 * test/eventstore.kurrentdb.int.spec.ts against a real server.
 *
 * The suite shares its store with whatever else is on the server: every stream name starts with a
 * random run prefix, every event type carries it too, and whatever the suite reads from `$all` it
 * first narrows to its own streams. On PostgreSQL, `readAll` and subscriptions only show an event
 * once every transaction older than it has ended on the whole server (see
 * docs/decisions/0001-postgres-global-order.md), so checks of `$all` wait for what they expect
 * instead of reading once.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import type tap from 'tap';
import {
  comparePositions,
  InvalidEventError,
  WrongExpectedRevisionError,
  type AppendResult,
  type EventData,
  type EventStore,
  type Json,
  type Position,
  type ReadAllOptions,
  type ReadStreamOptions,
  type RecordedEvent,
  type Subscription,
} from '../../lib/eventstore/types.ts';

/** A tap test (the `t` a subtest receives). */
export type Tap = Parameters<Parameters<typeof tap.test>[0]>[0];

const WAIT_MS = 45_000;

export async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const out: T[] = [];
  for await (const item of items) out.push(item);
  return out;
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Retries `check` until it returns a value other than undefined, or fails after `timeoutMs`. */
export async function eventually<T>(
  what: string,
  check: () => Promise<T | undefined>,
  timeoutMs = WAIT_MS,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (let delay = 10; ; delay = Math.min(200, delay * 2)) {
    const value = await check();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(delay);
  }
}

export interface Consumer {
  /** Every event received so far, in the order received. */
  readonly events: RecordedEvent[];
  /** Settles when the iteration ends (resolves) or throws (rejects). */
  readonly done: Promise<void>;
  readonly ended: boolean;
  /** Resolves once `predicate(events)` holds; rejects if the iteration ends first or on timeout. */
  until(
    what: string,
    predicate: (events: RecordedEvent[]) => boolean,
    timeoutMs?: number,
  ): Promise<RecordedEvent[]>;
}

/** Iterates `subscription` in the background, keeping what it receives. */
export function consume(subscription: Subscription): Consumer {
  const events: RecordedEvent[] = [];
  let ended = false;
  let failure: unknown;
  const done = (async () => {
    try {
      for await (const e of subscription) events.push(e);
    } catch (e) {
      failure = e;
      throw e;
    } finally {
      ended = true;
    }
  })();
  done.catch(() => undefined);
  return {
    events,
    done,
    get ended() {
      return ended;
    },
    async until(what, predicate, timeoutMs = WAIT_MS) {
      const deadline = Date.now() + timeoutMs;
      while (!predicate(events)) {
        if (ended) {
          throw new Error(`subscription ended (${describe(failure)}) before ${what}`);
        }
        if (Date.now() > deadline) {
          throw new Error(
            `timed out after ${timeoutMs} ms waiting for ${what}; received ${events.length} events`,
          );
        }
        await sleep(20);
      }
      return events;
    },
  };
}

const ids = (events: Array<{ id: string }>) => events.map((e) => e.id);
const describe = (e: unknown): string =>
  e instanceof Error ? `${e.name}: ${e.message}` : e === undefined ? 'no error' : JSON.stringify(e);

/** Runs the suite as one subtest `name` of `t`. `makeStore` gives a new store instance each call. */
export function eventStoreConformance(
  t: Tap,
  name: string,
  makeStore: (t: Tap) => Promise<EventStore>,
): Promise<unknown> {
  return t.test(`${name} event store conformance`, async (t) => {
    const store = await makeStore(t);
    t.teardown(() => store.close());

    /** What makes this run's names unique on a shared server. */
    const run = `c${randomBytes(5).toString('hex')}`;
    const stream = (label: string) => `${run}-${label}`;
    const TYPE = `Conformance${run}`;
    const mine = (e: RecordedEvent) => e.streamId.startsWith(`${run}-`);
    let counter = 0;
    const event = (
      data: Json = { n: ++counter },
      type = TYPE,
      metadata: Json = { by: 'conformance' },
    ): EventData => ({
      id: randomUUID(),
      type,
      data,
      metadata,
    });
    const events = (n: number, type = TYPE) => Array.from({ length: n }, () => event(undefined, type));
    const readStreamIds = async (s: string) => ids(await collect(store.readStream(s)));

    /** Expects `promise` to reject with a WrongExpectedRevisionError that names `actual`. */
    async function conflict(tt: Tap, promise: Promise<unknown>, s: string, actual: number, what: string) {
      const error = await promise.then(
        () => null,
        (e: unknown) => e,
      );
      if (!(error instanceof WrongExpectedRevisionError)) {
        tt.fail(
          `${what}: expected WrongExpectedRevisionError, got ${error === null ? 'success' : describe(error)}`,
        );
        return;
      }
      tt.equal(error.code, 'WRONG_EXPECTED_REVISION', `${what}: error code`);
      tt.equal(error.stream, s, `${what}: error names the stream`);
      tt.equal(error.actual, actual, `${what}: error carries the actual revision ${actual}`);
    }

    async function invalid(tt: Tap, promise: Promise<unknown>, what: string) {
      const error = await promise.then(
        () => null,
        (e: unknown) => e,
      );
      tt.ok(
        error instanceof InvalidEventError,
        `${what}: refused with InvalidEventError (${describe(error)})`,
      );
    }

    /** This run's events of `$all`, forwards from `from` (inclusive), once `expected` ids are all there. */
    async function readAllMineUntil(from: Position, expected: string[]): Promise<RecordedEvent[]> {
      const wanted = new Set(expected);
      return eventually(`readAll to show ${expected.length} events`, async () => {
        const found: RecordedEvent[] = [];
        let seen = 0;
        for await (const e of store.readAll({ fromPosition: from })) {
          if (!mine(e)) continue;
          found.push(e);
          if (wanted.has(e.id)) seen++;
          if (seen === wanted.size) return found;
        }
        return undefined;
      });
    }

    const positionOf = (r: AppendResult): Position => {
      if (!r.position) throw new Error('append wrote nothing');
      return r.position;
    };

    t.test('expected revision any: creates the stream, then appends at its end', async (t) => {
      const s = stream('any');
      t.equal(await store.streamInfo(s), null, 'the stream does not exist yet');
      const first = await store.append(s, events(1), 'any');
      t.equal(first.nextRevision, 0, 'first event at revision 0');
      t.equal(first.written, true);
      t.ok(first.position, 'a position is returned');
      const second = await store.append(s, events(2), 'any');
      t.equal(second.nextRevision, 2, 'two more events: last at revision 2');
      t.ok(comparePositions(positionOf(second), positionOf(first)) > 0, 'later append, later position');
      t.equal((await collect(store.readStream(s))).length, 3);
    });

    t.test('expected revision no_stream', async (t) => {
      const s = stream('nostream');
      const created = await store.append(s, events(2), 'no_stream');
      t.equal(created.nextRevision, 1, 'creates the stream');
      const before = await readStreamIds(s);
      await conflict(t, store.append(s, events(1), 'no_stream'), s, 1, 'no_stream on an existing stream');
      t.strictSame(await readStreamIds(s), before, 'nothing was written');
    });

    t.test('expected revision stream_exists', async (t) => {
      const s = stream('exists');
      await conflict(
        t,
        store.append(s, events(1), 'stream_exists'),
        s,
        -1,
        'stream_exists on a missing stream',
      );
      t.equal(await store.streamInfo(s), null, 'the stream was not created');
      t.strictSame(await readStreamIds(s), [], 'and reads as empty');
      await store.append(s, events(1), 'no_stream');
      const r = await store.append(s, events(2), 'stream_exists');
      t.equal(r.nextRevision, 2, 'stream_exists on an existing stream appends');
      t.equal(r.written, true);
    });

    t.test('expected revision exact', async (t) => {
      const s = stream('exact');
      await conflict(t, store.append(s, events(1), 0), s, -1, 'revision 0 on a missing stream');
      t.equal(await store.streamInfo(s), null, 'the stream was not created');
      await store.append(s, events(3), 'no_stream');
      const r = await store.append(s, events(1), 2);
      t.equal(r.nextRevision, 3, 'the matching revision appends');
      const before = await readStreamIds(s);
      await conflict(t, store.append(s, events(1), 2), s, 3, 'a stale revision');
      await conflict(t, store.append(s, events(1), 0), s, 3, 'a much older revision');
      await conflict(t, store.append(s, events(1), 7), s, 3, 'a revision ahead of the stream');
      t.strictSame(await readStreamIds(s), before, 'no conflicting append wrote anything');
    });

    t.test('concurrent appends with the same expected revision: exactly one wins', async (t) => {
      const s = stream('race');
      await store.append(s, events(1), 'no_stream');
      const attempts = Array.from({ length: 6 }, () => events(2));
      const results = await Promise.allSettled(attempts.map((batch) => store.append(s, batch, 0)));
      const won = results.flatMap((r, i) => (r.status === 'fulfilled' ? [i] : []));
      t.equal(won.length, 1, 'one append succeeded');
      for (const r of results) {
        if (r.status === 'rejected')
          t.ok(r.reason instanceof WrongExpectedRevisionError, 'the others conflict');
      }
      const stored = await readStreamIds(s);
      t.equal(stored.length, 3, 'the stream holds the first event and the winner');
      t.strictSame(stored.slice(1), ids(attempts[won[0]!]!), 'the winner, in order');
    });

    t.test('appending the same event ids again', async (t) => {
      const s = stream('idem');
      const [a, b, c, d, e] = events(5) as [EventData, EventData, EventData, EventData, EventData];
      const first = await store.append(s, [a, b], 'no_stream');
      const info = await store.streamInfo(s);

      const retry = await store.append(s, [a, b], 'no_stream');
      t.strictSame(
        retry,
        { nextRevision: 1, position: null, written: false },
        'retry with no_stream: success, nothing written',
      );
      t.strictSame(await store.streamInfo(s), info, 'stream unchanged');
      const retryAny = await store.append(s, [a, b], 'any');
      t.strictSame(
        retryAny,
        { nextRevision: 1, position: null, written: false },
        'retry with any of the last events: no-op',
      );

      await store.append(s, [c], first.nextRevision);
      const retryExact = await store.append(s, [c], 1);
      t.strictSame(
        retryExact,
        { nextRevision: 2, position: null, written: false },
        'retry with its exact revision: no-op',
      );
      const lateRetry = await store.append(s, [a, b], 'no_stream');
      t.strictSame(
        lateRetry,
        { nextRevision: 1, position: null, written: false },
        'a retry after later appends: no-op, answering where its events are',
      );
      t.strictSame(await readStreamIds(s), ids([a, b, c]), 'each event stored once');

      await conflict(t, store.append(s, [d], 1), s, 2, 'new ids with a stale revision');
      await conflict(
        t,
        store.append(s, [a, b], 0),
        s,
        2,
        'ids that are there, at another revision than expected',
      );
      await conflict(t, store.append(s, [c, d], 1), s, 2, 'some ids there (exact revision of the first)');
      await conflict(t, store.append(s, [c, d], 'any'), s, 2, 'some ids there (any)');
      await conflict(t, store.append(s, [c, e], 2), s, 2, 'some ids there (revision of the stream)');
      await conflict(t, store.append(s, [b, c, d], 'stream_exists'), s, 2, 'some ids there (stream_exists)');
      t.strictSame(
        await readStreamIds(s),
        ids([a, b, c]),
        'no event id is ever stored twice, nothing partial',
      );
    });

    t.test('events are checked before anything is written', async (t) => {
      const s = stream('checks');
      const e = event();
      await invalid(
        t,
        store.append(s, [e, { ...event(), id: e.id }], 'any'),
        'the same id twice in one append',
      );
      await invalid(
        t,
        store.append(s, [e, { ...event(), id: e.id.toUpperCase() }], 'any'),
        'the same id in another case',
      );
      for (const id of ['', 'not-a-uuid', e.id.replaceAll('-', ''), `${e.id}0`, `{${e.id}}`]) {
        await invalid(
          t,
          store.append(s, [event(), { ...event(), id }], 'any'),
          `event id ${JSON.stringify(id)}`,
        );
      }
      await invalid(t, store.append(s, [], 'any'), 'no events');
      await invalid(t, store.append(s, [event(undefined, '')], 'any'), 'an empty event type');
      await invalid(t, store.append(s, [event()], -1), 'a negative expected revision');
      t.equal(await store.streamInfo(s), null, 'the stream was never created');
      t.strictSame(await readStreamIds(s), []);
    });

    t.test('stream names are checked before anything is written', async (t) => {
      const marker = `${TYPE}Marker`;
      const before = await store.append(stream('names'), [event(undefined, marker)], 'any');
      const bad = [
        '',
        'x'.repeat(101),
        'a b',
        'a/b',
        'a.b',
        'a*',
        'ünïcödé',
        '$all',
        '-leading',
        '_leading',
        'a\u0000b',
        `${run} names`,
      ];
      for (const name of bad) {
        const what = `stream name ${JSON.stringify(name.length > 20 ? `${name.slice(0, 20)}...` : name)}`;
        await invalid(t, store.append(name, [event()], 'any'), `append to ${what}`);
        await invalid(t, collect(store.readStream(name)), `readStream of ${what}`);
        await invalid(t, store.streamInfo(name), `streamInfo of ${what}`);
      }
      const longest = `${run}-${'y'.repeat(100 - run.length - 1)}`;
      t.equal(longest.length, 100);
      t.equal(
        (await store.append(longest, [event()], 'no_stream')).nextRevision,
        0,
        'a 100-character name is fine',
      );
      const afterMarker = event(undefined, marker);
      const after = await store.append(stream('names'), [afterMarker], 'any');
      const between = await readAllMineUntil(positionOf(before), [afterMarker.id]);
      const upTo = between.filter((x) => comparePositions(x.position, positionOf(after)) <= 0);
      t.strictSame(
        upTo.map((x) => x.streamId),
        [stream('names'), longest, stream('names')],
        'between the two markers only the valid append was written',
      );
    });

    t.test('readStream: directions, fromRevision, maxCount, a missing stream', async (t) => {
      const s = stream('read');
      const written = events(7);
      const a = await store.append(s, written.slice(0, 3), 'no_stream');
      const b = await store.append(s, written.slice(3), a.nextRevision);
      const all = await collect(store.readStream(s));
      t.strictSame(ids(all), ids(written), 'forwards from the start: all, in order');
      t.strictSame(
        all.map((e) => e.revision),
        [0, 1, 2, 3, 4, 5, 6],
        'revisions from 0',
      );
      t.ok(
        all.every((e) => e.streamId === s && e.type === TYPE && e.created instanceof Date),
        'stream, type, created',
      );
      t.strictSame(all[2]!.position, a.position, 'the append reported the position of its last event');
      t.strictSame(all[6]!.position, b.position);
      for (let i = 1; i < all.length; i++) {
        t.ok(
          comparePositions(all[i]!.position, all[i - 1]!.position) > 0,
          `position of revision ${i} after ${i - 1}`,
        );
      }
      const back = await collect(store.readStream(s, { direction: 'backwards' }));
      t.strictSame(ids(back), ids(written).reverse(), 'backwards from the end: all, newest first');
      t.strictSame(
        ids(await collect(store.readStream(s, { fromRevision: 4 }))),
        ids(written.slice(4)),
        'forwards from 4',
      );
      t.strictSame(
        ids(await collect(store.readStream(s, { direction: 'backwards', fromRevision: 4 }))),
        ids(written.slice(0, 5)).reverse(),
        'backwards from 4 (inclusive)',
      );
      t.strictSame(
        ids(await collect(store.readStream(s, { maxCount: 2 }))),
        ids(written.slice(0, 2)),
        'maxCount 2',
      );
      t.strictSame(
        ids(await collect(store.readStream(s, { fromRevision: 'start', maxCount: 3 }))),
        ids(written.slice(0, 3)),
        "from 'start'",
      );
      t.strictSame(
        ids(await collect(store.readStream(s, { direction: 'backwards', fromRevision: 'end', maxCount: 1 }))),
        [written[6]!.id],
        "backwards from 'end', one event: the last",
      );
      t.strictSame(
        ids(await collect(store.readStream(s, { fromRevision: 5, maxCount: 10 }))),
        ids(written.slice(5)),
        'maxCount beyond the end',
      );
      t.strictSame(await collect(store.readStream(s, { fromRevision: 7 })), [], 'from past the end: nothing');
      t.strictSame(
        await collect(store.readStream(stream('never-written'))),
        [],
        'a missing stream reads as empty',
      );
      t.strictSame(
        await collect(store.readStream(stream('never-written'), { direction: 'backwards' })),
        [],
        'backwards too',
      );
    });

    t.test(
      'readAll: forwards and backwards from a position (inclusive), maxCount, start and end',
      async (t) => {
        const s = stream('readall');
        const batch = events(5);
        // One append: its events are next to each other in the global order on every adapter.
        await store.append(s, batch, 'no_stream');
        const stored = await collect(store.readStream(s));
        const [first, second, third] = stored as [RecordedEvent, RecordedEvent, RecordedEvent];
        const last = stored[4]!;
        await readAllMineUntil(first.position, ids(batch));

        const forwards = await collect(store.readAll({ fromPosition: first.position, maxCount: 3 }));
        t.strictSame(
          ids(forwards),
          ids([first, second, third]),
          'forwards from the first: it, then the next two',
        );
        t.strictSame(
          forwards.map((e) => e.position),
          [first.position, second.position, third.position],
          'with their positions',
        );
        t.strictSame(forwards[1], second, 'readAll and readStream give the same event');
        const fromThird = await collect(
          store.readAll({ direction: 'forwards', fromPosition: third.position, maxCount: 1 }),
        );
        t.strictSame(ids(fromThird), [third.id], 'from a position: inclusive');
        const backwards = await collect(
          store.readAll({ direction: 'backwards', fromPosition: last.position, maxCount: 5 }),
        );
        t.strictSame(
          ids(backwards),
          ids(batch).reverse(),
          'backwards from the last: inclusive, newest first',
        );
        const backFromThird = await collect(
          store.readAll({ direction: 'backwards', fromPosition: third.position, maxCount: 2 }),
        );
        t.strictSame(ids(backFromThird), [third.id, second.id], 'backwards from a position: inclusive');

        const [oldest] = await collect(store.readAll({ maxCount: 1 }));
        t.ok(
          oldest && comparePositions(oldest.position, first.position) <= 0,
          "forwards from 'start' begins at the oldest",
        );
        const newest = await collect(
          store.readAll({ direction: 'backwards', fromPosition: 'end', maxCount: 20 }),
        );
        t.ok(newest.length > 0, "backwards from 'end' reads something");
        for (let i = 1; i < newest.length; i++) {
          t.ok(
            comparePositions(newest[i - 1]!.position, newest[i]!.position) > 0,
            'backwards: strictly decreasing',
          );
        }
        t.ok(
          comparePositions(newest[0]!.position, last.position) >= 0,
          "backwards from 'end' begins at or after our last event",
        );
        t.strictSame(await collect(store.readAll({ maxCount: 0 })), [], 'maxCount 0 reads nothing');
      },
    );

    t.test('one global order: strictly increasing positions, each stream in its own order', async (t) => {
      const names = [stream('order-a'), stream('order-b'), stream('order-c')];
      const appended: string[] = [];
      let firstPosition: Position | null = null;
      for (let i = 0; i < 24; i++) {
        const s = names[(i * 7) % 3]!;
        const batch = events(1 + (i % 3));
        const r = await store.append(s, batch, 'any');
        firstPosition ??= (
          await collect(store.readStream(s, { fromRevision: r.nextRevision - batch.length, maxCount: 1 }))
        )[0]!.position;
        appended.push(...ids(batch));
      }
      const all = (await readAllMineUntil(firstPosition!, appended)).filter((e) =>
        names.includes(e.streamId),
      );
      t.strictSame(ids(all), appended, 'the global order is the order the appends committed in');
      let ok = true;
      for (let i = 1; i < all.length; i++)
        if (comparePositions(all[i - 1]!.position, all[i]!.position) >= 0) ok = false;
      t.ok(ok, 'positions strictly increase');
      for (const s of names) {
        const inGlobal = all.filter((e) => e.streamId === s).map((e) => e.revision);
        t.strictSame(
          inGlobal,
          inGlobal.map((_, i) => i),
          `${s}: revisions 0..n in the global order`,
        );
        t.strictSame(
          ids(all.filter((e) => e.streamId === s)),
          await readStreamIds(s),
          `${s}: the global order and the stream agree`,
        );
      }
      const back = (
        await collect(store.readAll({ direction: 'backwards', fromPosition: all[all.length - 1]!.position }))
      )
        .filter((e) => names.includes(e.streamId))
        .slice(0, all.length);
      t.strictSame(ids(back), ids(all).reverse(), 'reading backwards gives the same order reversed');
    });

    t.test('subscribe from start: stored events in order, then caughtUp, then live ones', async (t) => {
      const prefix = stream('substart-');
      const stored = events(7);
      await store.append(`${prefix}a`, stored.slice(0, 4), 'no_stream');
      await store.append(`${prefix}b`, stored.slice(4), 'no_stream');
      const sub = store.subscribe({ from: 'start', filter: { streamPrefixes: [prefix] } });
      t.teardown(() => sub.close());
      const c = consume(sub);
      await sub.caughtUp;
      await new Promise((resolve) => setImmediate(resolve));
      t.strictSame(
        ids(c.events),
        ids(stored),
        'caughtUp resolves once the stored events have been delivered',
      );
      const live = events(3);
      await store.append(`${prefix}a`, live.slice(0, 2), 3);
      await store.append(`${prefix}c`, live.slice(2), 'no_stream');
      await c.until('the live events', (es) => es.length >= 10);
      t.strictSame(
        ids(c.events),
        [...ids(stored), ...ids(live)],
        'then the live events, each once, in order',
      );
      await sub.close();
      await c.done;
      t.ok(c.ended, 'close() ends the iteration');
    });

    t.test('subscribe from a position: exclusive', async (t) => {
      const s = stream('subpos');
      const written = events(5);
      await store.append(s, written, 'no_stream');
      const stored = await collect(store.readStream(s));
      const sub = store.subscribe({ from: stored[1]!.position, filter: { streamPrefixes: [s] } });
      t.teardown(() => sub.close());
      const c = consume(sub);
      await c.until('three events', (es) => es.length >= 3);
      const more = events(1);
      await store.append(s, more, 4);
      await c.until('the live event', (es) => es.length >= 4);
      t.strictSame(
        ids(c.events),
        ids([...written.slice(2), ...more]),
        'starts right after the given position',
      );
      t.strictSame(c.events.slice(0, 3), stored.slice(2), 'delivers the same events readStream gives');
    });

    t.test('subscribe from end: only events appended afterwards', async (t) => {
      const s = stream('subend');
      await store.append(s, events(3), 'no_stream');
      const sub = store.subscribe({ from: 'end', filter: { streamPrefixes: [s] } });
      t.teardown(() => sub.close());
      const c = consume(sub);
      await sub.caughtUp;
      const later = events(2);
      await store.append(s, later.slice(0, 1), 2);
      await store.append(s, later.slice(1), 3);
      await c.until('the two later events', (es) => es.length >= 2);
      t.strictSame(ids(c.events), ids(later), 'nothing from before the subscription');
      t.strictSame(
        c.events.map((e) => e.revision),
        [3, 4],
      );
    });

    t.test('subscription filters: stream prefixes and event types', async (t) => {
      const p = stream('filt');
      const typeX = `${TYPE}X`;
      const typeY = `${TYPE}Y`;
      const plan: Array<[string, string]> = [
        [`${p}-one`, typeX],
        [`${p}-two`, typeY],
        [`${p}_x`, typeX],
        [`${p}-one`, typeY],
        [`${p}xx`, typeX],
        [`${p}-two`, typeX],
        [`${p}-two`, typeX],
      ];
      const subs = {
        prefix: store.subscribe({ from: 'end', filter: { streamPrefixes: [`${p}-`] } }),
        twoPrefixes: store.subscribe({ from: 'end', filter: { streamPrefixes: [`${p}-one`, `${p}_`] } }),
        type: store.subscribe({ from: 'end', filter: { eventTypes: [typeY] } }),
        both: store.subscribe({ from: 'end', filter: { streamPrefixes: [`${p}-two`], eventTypes: [typeX] } }),
        underscore: store.subscribe({ from: 'end', filter: { streamPrefixes: [`${p}_`] } }),
      };
      const consumers = Object.fromEntries(
        Object.entries(subs).map(([k, sub]) => [k, consume(sub)]),
      ) as Record<keyof typeof subs, Consumer>;
      t.teardown(() => Promise.all(Object.values(subs).map((s) => s.close())));
      await Promise.all(Object.values(subs).map((s) => s.caughtUp));
      const written: Array<{ id: string; stream: string; type: string }> = [];
      for (const [s, type] of plan) {
        const e = event(undefined, type);
        await store.append(s, [e], 'any');
        written.push({ id: e.id, stream: s, type });
      }
      const expect = (keep: (w: { stream: string; type: string }) => boolean) =>
        written.filter(keep).map((w) => w.id);
      const expected: Record<keyof typeof subs, string[]> = {
        prefix: expect((w) => w.stream.startsWith(`${p}-`)),
        twoPrefixes: expect((w) => w.stream.startsWith(`${p}-one`) || w.stream.startsWith(`${p}_`)),
        type: expect((w) => w.type === typeY),
        both: expect((w) => w.stream.startsWith(`${p}-two`) && w.type === typeX),
        underscore: expect((w) => w.stream.startsWith(`${p}_`)),
      };
      for (const [k, c] of Object.entries(consumers) as Array<[keyof typeof subs, Consumer]>) {
        const last = expected[k][expected[k].length - 1]!;
        await c.until(`filter ${k} to see its last matching event`, (es) => es.some((e) => e.id === last));
      }
      // Events a filter wrongly lets through would arrive in global order, before or soon after.
      await sleep(500);
      for (const [k, c] of Object.entries(consumers) as Array<[keyof typeof subs, Consumer]>) {
        t.strictSame(ids(c.events), expected[k], `filter ${k}: exactly the matching events, in order`);
      }
      t.strictSame(expected.underscore, [written[2]!.id], 'a "_" in a prefix is a literal underscore');
      t.equal(expected.both.length, 2, 'both filters together: streams AND types');
    });

    t.test('a live subscriber keeps up with concurrent appends', async (t) => {
      const p = stream('live');
      const sub = store.subscribe({ from: 'end', filter: { streamPrefixes: [`${p}-`] } });
      t.teardown(() => sub.close());
      const c = consume(sub);
      await sub.caughtUp;
      const streams = [`${p}-a`, `${p}-b`, `${p}-c`, `${p}-d`];
      const appended: string[] = [];
      for (let round = 0; round < 10; round++) {
        const batches = streams.map(() => events(1 + (round % 3)));
        await Promise.all(streams.map((s, i) => store.append(s, batches[i]!, 'any')));
        appended.push(...batches.flatMap(ids));
      }
      const got = await c.until('every live event', (es) => es.length >= appended.length);
      t.equal(got.length, appended.length, 'as many events as appended');
      t.strictSame(new Set(ids(got)), new Set(appended), 'every appended event, none twice');
      let increasing = true;
      for (let i = 1; i < got.length; i++)
        if (comparePositions(got[i - 1]!.position, got[i]!.position) >= 0) increasing = false;
      t.ok(increasing, 'in strictly increasing position order');
      for (const s of streams) {
        const revs = got.filter((e) => e.streamId === s).map((e) => e.revision);
        t.strictSame(
          revs,
          revs.map((_, i) => i),
          `${s}: contiguous revisions in order`,
        );
      }
    });

    t.test('caughtUp resolves even when no stored event matches', async (t) => {
      const sub = store.subscribe({ from: 'start', filter: { streamPrefixes: [stream('nothing-here-')] } });
      t.teardown(() => sub.close());
      const c = consume(sub);
      await sub.caughtUp;
      t.strictSame(c.events, [], 'nothing delivered');
      t.equal(c.ended, false, 'still running, waiting for live events');
    });

    t.test('close() ends an iteration that is waiting for events', async (t) => {
      const s = stream('close');
      await store.append(s, events(2), 'no_stream');
      const sub = store.subscribe({ from: 'start', filter: { streamPrefixes: [s] } });
      const c = consume(sub);
      await c.until('the stored events', (es) => es.length >= 2);
      await sub.close();
      await c.done;
      t.ok(c.ended, 'the for-await loop ended without an error');
      await store.append(s, events(1), 1);
      await sleep(200);
      t.equal(c.events.length, 2, 'nothing more is delivered after close');
      await sub.close();
      t.pass('closing twice is fine');
    });

    t.test('stop and resume from the last position: nothing lost, nothing twice', async (t) => {
      const p = stream('resume-');
      const first = events(9);
      for (let i = 0; i < first.length; i += 3)
        await store.append(`${p}${i % 2}`, first.slice(i, i + 3), 'any');
      const received: RecordedEvent[] = [];
      const sub1 = store.subscribe({ from: 'start', filter: { streamPrefixes: [p] } });
      for await (const e of sub1) {
        received.push(e);
        if (received.length === 4) break;
      }
      await sub1.close();
      const last = received[received.length - 1]!.position;
      const second = events(5);
      await store.append(`${p}0`, second.slice(0, 2), 'any');
      const sub2 = store.subscribe({ from: last, filter: { streamPrefixes: [p] } });
      t.teardown(() => sub2.close());
      const c = consume(sub2);
      await sub2.caughtUp;
      await store.append(`${p}1`, second.slice(2), 'any');
      await c.until('the rest', (es) => received.length + es.length >= first.length + second.length);
      const all = [...received, ...c.events];
      t.strictSame(ids(all), [...ids(first), ...ids(second)], 'every event exactly once, in order');
    });

    t.test('closing the store ends its subscriptions', async (t) => {
      const other = await makeStore(t);
      t.teardown(() => other.close().catch(() => undefined));
      const s = stream('store-close');
      await other.append(s, events(1), 'no_stream');
      const sub = other.subscribe({ from: 'start', filter: { streamPrefixes: [s] } });
      const c = consume(sub);
      await c.until('the stored event', (es) => es.length === 1);
      await other.close();
      await Promise.race([
        c.done.catch(() => undefined),
        sleep(10_000).then(() => {
          throw new Error('the subscription still runs 10 s after its store was closed');
        }),
      ]);
      t.ok(c.ended, 'the iteration ended');
    });

    t.test('ping answers', async (t) => {
      await store.ping();
      t.pass('the store answers');
    });

    t.test('streamInfo', async (t) => {
      const s = stream('info');
      t.equal(await store.streamInfo(s), null, 'null for a missing stream');
      await store.append(s, events(2), 'no_stream');
      const r = await store.append(s, events(3), 1);
      const info = await store.streamInfo(s);
      t.strictSame(info, { revision: 4, position: r.position }, 'revision and position of the last event');
      const [last] = await collect(store.readStream(s, { direction: 'backwards', maxCount: 1 }));
      t.strictSame(info?.position, last?.position, 'the same position readStream gives');
    });

    /**
     * What `readByKey` gives once it shows every one of `expected` (KurrentDB links events into its
     * by-key streams after the commit; PostgreSQL shows them at once).
     */
    const readByKeyUntil = (s: string, key: string, expected: string[]) =>
      eventually(`readByKey(${s}, ${key}) to show ${expected.length} events`, async () => {
        const found = await collect(store.readByKey(s, key));
        const have = new Set(ids(found));
        return expected.every((id) => have.has(id)) ? found : undefined;
      });
    const keyed = (key: string | undefined, metadata: Json = { by: 'conformance' }): EventData => ({
      ...event(undefined, TYPE, metadata),
      ...(key !== undefined && { key }),
    });

    t.test("readByKey: exactly the stream's events with that key, in revision order", async (t) => {
      const s = stream('keyed');
      const other = stream('keyed-other');
      const k1 = `${run}-execution-1`;
      const k2 = `${run}-execution-2`;
      const first = [keyed(k1), keyed(k2), keyed(undefined), keyed(k1)];
      const second = [keyed(k2), keyed(k1)];
      await store.append(s, first, 'no_stream');
      await store.append(s, second, 3);
      const elsewhere = [keyed(k1)];
      await store.append(other, elsewhere, 'no_stream');

      const k1Events = [first[0]!, first[3]!, second[1]!];
      const found = await readByKeyUntil(s, k1, ids(k1Events));
      t.strictSame(ids(found), ids(k1Events), 'the events with key 1, nothing else, in order');
      t.strictSame(
        found.map((e) => e.revision),
        [0, 3, 5],
        'their revisions in the stream',
      );
      t.ok(
        found.every((e) => e.streamId === s),
        "another stream's event with the same key is not returned",
      );
      t.strictSame(
        found.map((e) => e.metadata),
        k1Events.map((e) => e.metadata),
        'metadata reads back as given (the key is not added to it)',
      );
      const k2Found = await readByKeyUntil(s, k2, ids([first[1]!, second[0]!]));
      t.strictSame(ids(k2Found), ids([first[1]!, second[0]!]), 'the events with key 2');
      const inOther = await readByKeyUntil(other, k1, ids(elsewhere));
      t.strictSame(ids(inOther), ids(elsewhere), 'the other stream finds its own event with key 1');
      t.strictSame(await collect(store.readByKey(s, `${run}-absent`)), [], 'a key absent reads as empty');
      t.strictSame(
        await collect(store.readByKey(stream('keyed-missing'), k1)),
        [],
        'a missing stream reads as empty',
      );
      const [byStream] = await collect(store.readStream(s, { fromRevision: 5, maxCount: 1 }));
      t.strictSame(found[2], byStream, 'an event read by key is the event readStream gives');
    });

    t.test('readByKey: an idempotent re-append does not duplicate', async (t) => {
      const s = stream('keyed-retry');
      const key = `${run}-retry`;
      const batch = [keyed(key), keyed(key)];
      await store.append(s, batch, 'no_stream');
      const again = await store.append(s, batch, 'no_stream');
      t.equal(again.written, false, 'the retry writes nothing');
      await store.append(s, [keyed(key)], 1);
      const all = await collect(store.readStream(s));
      const found = await readByKeyUntil(s, key, ids(all));
      t.strictSame(ids(found), ids(all), 'each event once');
    });

    t.test('keys are checked before anything is written', async (t) => {
      const s = stream('keyed-invalid');
      for (const [what, key] of [
        ['an empty key', ''],
        ['a key of 129 characters', 'k'.repeat(129)],
        ['a key with a space', 'a b'],
        ['a key with a newline', 'a\nb'],
      ] as const) {
        await invalid(t, store.append(s, [keyed(key)], 'any'), what);
        await invalid(t, collect(store.readByKey(s, key)), `readByKey with ${what}`);
      }
      t.equal(await store.streamInfo(s), null, 'nothing was written');
      const longest = 'k'.repeat(128);
      const e = keyed(longest);
      await store.append(s, [e], 'no_stream');
      t.strictSame(ids(await readByKeyUntil(s, longest, [e.id])), [e.id], 'a key of 128 characters is kept');
    });

    t.test('data and metadata round trip exactly', async (t) => {
      const s = stream('data');
      const values: Json[] = [
        {
          text: 'héllo wörld — ✓ 日本語 עברית 🦊👩🏽‍💻 e\u0301',
          nul: 'before\u0000after',
          control: '\t\n\r\u0001\u001f\u007f\u2028\u2029',
          quotes: `"'\\/<>&`,
          '': 'empty key',
          'key with ünïcode 🔑': true,
        },
        {
          numbers: [
            0,
            1,
            -1,
            1.5,
            -2.25,
            1e-7,
            123456789.123,
            2 ** 31,
            2 ** 53 - 1,
            -(2 ** 53 - 1),
            1.7976931348623157e308,
            5e-324,
          ],
          booleans: [true, false],
          nothing: null,
          empty: { object: {}, array: [], string: '' },
        },
        {
          deep: { a: [{ b: [{ c: { d: [[[{ e: 'deep' }]]] } }] }] },
          list: [1, 'two', null, [3], { four: 4 }],
        },
        { order: { z: 1, a: 2, m: 3 }, long: 'x'.repeat(20_000) },
      ];
      const metadata: Json[] = [
        { trace: 'ω\u0000', n: 0 },
        null,
        { nested: { list: [false, 0, ''] } },
        { hash: 'a'.repeat(64) },
      ];
      const written = values.map((data, i) => event(data, TYPE, metadata[i]));
      await store.append(s, written, 'no_stream');
      const sub = store.subscribe({ from: 'start', filter: { streamPrefixes: [s] } });
      t.teardown(() => sub.close());
      const c = consume(sub);
      const read = await collect(store.readStream(s));
      for (const [i, e] of read.entries()) {
        t.strictSame(e.data, written[i]!.data, `readStream: data ${i}`);
        t.strictSame(e.metadata, written[i]!.metadata, `readStream: metadata ${i}`);
      }
      t.equal((read[0]!.data as { nul: string }).nul.length, 12, 'the NUL character is kept');
      const fromAll = await readAllMineUntil(read[0]!.position, ids(written));
      t.strictSame(
        fromAll.filter((e) => e.streamId === s).map((e) => [e.data, e.metadata]),
        written.map((e) => [e.data, e.metadata]),
        'readAll: the same data and metadata',
      );
      await c.until('the stored events', (es) => es.length >= written.length);
      t.strictSame(
        c.events.map((e) => [e.data, e.metadata]),
        written.map((e) => [e.data, e.metadata]),
        'subscribe: the same data and metadata',
      );
      if (store.readStreamText) {
        const text = await collect(store.readStreamText(s));
        t.ok(
          text.every((e) => typeof e.data === 'string' && typeof e.metadata === 'string'),
          'readStreamText: the JSON as text',
        );
        t.strictSame(
          text.map((e): unknown[] => [JSON.parse(e.data), JSON.parse(e.metadata)]),
          written.map((e) => [e.data, e.metadata ?? null]),
          'readStreamText: text that parses to the same data and metadata',
        );
      }
    });

    t.test('readStreamText, where the store has it: the events readStream gives, JSON as text', async (t) => {
      if (!store.readStreamText) {
        t.pass(`the ${store.kind} store reads parsed events only`);
        return;
      }
      const s = stream('text');
      const written = events(7);
      await store.append(s, written, 'no_stream');
      const options: ReadStreamOptions[] = [
        {},
        { direction: 'backwards' },
        { fromRevision: 4 },
        { direction: 'backwards', fromRevision: 4, maxCount: 2 },
        { fromRevision: 7 },
      ];
      for (const o of options) {
        const parsed = await collect(store.readStream(s, o));
        const text = await collect(store.readStreamText(s, o));
        t.strictSame(
          text.map((e) => ({
            ...e,
            data: JSON.parse(e.data) as unknown,
            metadata: JSON.parse(e.metadata) as unknown,
          })),
          parsed,
          `the same events, ${JSON.stringify(o)}`,
        );
      }
      t.strictSame(
        await collect(store.readStreamText(stream('never-written'))),
        [],
        'a missing stream reads as empty',
      );
    });

    t.test('readAllText, where the store has it: the events readAll gives, JSON as text', async (t) => {
      if (!store.readAllText) {
        t.pass(`the ${store.kind} store reads parsed events only`);
        return;
      }
      const s = stream('alltext');
      const batch = events(5);
      // One append: its events are next to each other in the global order.
      await store.append(s, batch, 'no_stream');
      const stored = await collect(store.readStream(s));
      const first = stored[0]!;
      const last = stored[4]!;
      await readAllMineUntil(first.position, ids(batch));
      const options: ReadAllOptions[] = [
        { fromPosition: first.position, maxCount: 5 },
        { direction: 'backwards', fromPosition: last.position, maxCount: 3 },
      ];
      for (const o of options) {
        const parsed = await collect(store.readAll(o));
        const text = await collect(store.readAllText(o));
        t.ok(
          text.every((e) => typeof e.data === 'string' && typeof e.metadata === 'string'),
          `JSON as text, ${o.direction ?? 'forwards'}`,
        );
        t.strictSame(
          text.map((e) => ({
            ...e,
            data: JSON.parse(e.data) as unknown,
            metadata: JSON.parse(e.metadata) as unknown,
          })),
          parsed,
          `the same events, ${o.direction ?? 'forwards'}`,
        );
      }
    });
  });
}
