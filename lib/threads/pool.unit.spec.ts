import t from 'tap';
import { eventHash, userStream } from '../../contracts/index.ts';
import type { RecordedEvent } from '../eventstore/types.ts';
import { toEventData } from '../toolEvents.ts';
import { executionEvents } from '../../services/auditor/testkit.ts';
import { audited, checkRecorded, EventThreads, parsedColumns, parseRecorded } from './events.ts';
import { ThreadPool, ThreadPoolError, ThreadTaskError } from './pool.ts';

/** The pool and the event tasks: a thread answers what the calling thread computes. */

function stored(): RecordedEvent[] {
  const events = executionEvents('alice', 1, Date.parse('2025-01-01T00:00:00Z'), 10);
  return events.map((e, revision) => {
    const d = toEventData(e);
    return {
      id: d.id,
      type: d.type,
      data: d.data,
      metadata: d.metadata,
      streamId: userStream('alice'),
      revision,
      position: { commit: 1n, prepare: BigInt(revision) },
      created: new Date(),
    };
  });
}

t.test('threads parse and hash as the calling thread does', async (t) => {
  const threads = new EventThreads(2);
  t.teardown(() => threads.close());
  const events = stored();
  const broken = { ...events[1]!, data: { attempt: 'one' } };
  const checked = await threads.audit([...events, broken]);
  const here = [...events, broken].map(checkRecorded);
  t.same(checked, here.map(audited), 'audit: the same answers');
  t.same(await threads.parse(events), events.map(parseRecorded), 'parse: the same answers');
  const first = checked[0]!;
  const whole = here[0]!;
  t.ok(first.ok && whole.ok && first.hash === eventHash(whole.event), 'the hash is the event hash');
  t.equal(first.ok && first.hash, (events[0]!.metadata as { hash: string }).hash, 'and the stored one');
  t.equal(checked[3]!.ok, false, 'an event failing its schema is answered with its reason');
  t.same(
    first.ok && Object.keys(first.event).sort(),
    ['data', 'id', 'metadata', 'type'],
    'an audited event carries what the audit reads, not the envelope',
  );
  t.same(first.ok && first.event.data, { tool: 'search', version: '1.0.0' }, 'nor the arguments');
  // Many tasks at once: each answer goes back to its own caller.
  const many = await Promise.all(events.flatMap((e) => [threads.audit([e]), threads.parse([e])]));
  t.same(many.length, 2 * events.length);
  t.same(many[2], [audited(checkRecorded(events[1]!))]);
});

t.test('a task that throws rejects its caller only; a closed pool refuses work', async (t) => {
  const pool = new ThreadPool<unknown, unknown>(new URL('./eventTask.ts', import.meta.url), 1);
  await pool.warm();
  await t.rejects(pool.run({ kind: 'parse', events: null }), ThreadTaskError);
  const none = { id: [], type: [], data: [], metadata: [], streamId: [], revision: [] };
  t.same(
    await pool.run({ kind: 'parse', events: none }),
    parsedColumns([]),
    'the thread goes on after a failed task',
  );
  await pool.close();
  await t.rejects(pool.run({ kind: 'parse', events: none }), ThreadPoolError);
  t.throws(() => new ThreadPool(new URL('./eventTask.ts', import.meta.url), 0), ThreadPoolError);
});
