import t from 'tap';
import { EventThreads } from '../../lib/threads/events.ts';
import {
  alterData,
  bulkInsertHistory,
  deleteEvent,
  openTestStore,
  readRow,
  swapEvents,
  type TestStore,
} from './testkit.ts';
import { THREAD_PAGE, verifyHistory, type VerifyOptions, type VerifyReport } from './verify.ts';

/**
 * Verification on worker threads (decision 0029) gives the report the calling thread gives:
 * the same break at the same revision, the same counts, the same progress. The histories span
 * several pages of THREAD_PAGE events, so that faults lie in pages checked by different threads.
 */
type Tap = Parameters<Parameters<typeof t.test>[0]>[0];

const EXECUTIONS = 700; // 2,100 events: four full pages and a partial one
const threads = new EventThreads(2);
t.teardown(() => threads.close());
t.before(() => threads.warm());

/** The report and the progress of one verification, timestamps left out. */
async function verified(s: TestStore, options: VerifyOptions) {
  const progress: number[] = [];
  const report = await verifyHistory(s.store, 'alice', { ...options, onEvent: (r) => progress.push(r) });
  const { startedAt: _s, finishedAt: _f, ...rest } = report;
  return { report: rest, progress };
}

/** Verifies in this thread and on the threads; both must agree. Returns the threaded report. */
async function bothWays(t: Tap, s: TestStore): Promise<Omit<VerifyReport, 'startedAt' | 'finishedAt'>> {
  const here = await verified(s, { threads: null });
  const sent = threads.tasks;
  const there = await verified(s, { threads });
  t.ok(threads.tasks > sent, 'pages were checked on the threads');
  t.same(there.report, here.report, 'the threads report what the calling thread reports');
  t.equal(there.progress.length, here.progress.length, 'progress counts the same events');
  t.same(there.progress.slice(-3), here.progress.slice(-3), 'and ends at the same revision');
  return there.report;
}

t.test('a sound history of several pages verifies the same on threads', async (t) => {
  const s = await openTestStore(t);
  const { events, lastHash } = await bulkInsertHistory(s.sql, 'alice', EXECUTIONS, { pad: 20 });
  t.ok(events > 4 * THREAD_PAGE, 'the history spans more than four pages');
  const report = await bothWays(t, s);
  t.equal(report.ok, true, report.break?.problem ?? 'verifies');
  t.equal(report.events, events);
  t.equal(report.lastHash, lastHash);
  t.same(report.executions, { started: EXECUTIONS, ended: EXECUTIONS, open: 0 });
});

t.test('a tampered event in a later page is found at its revision', async (t) => {
  const s = await openTestStore(t);
  await bulkInsertHistory(s.sql, 'alice', EXECUTIONS, { pad: 20 });
  const at = 3 * THREAD_PAGE + 8; // a ToolCompleted (revision % 3 === 2) in the fourth page
  await alterData(s.sql, 'alice', at, (d) => (d['result'] = { hits: -1 }));
  const report = await bothWays(t, s);
  t.equal(report.ok, false);
  t.equal(report.break?.revision, at);
  t.equal(report.break?.kind, 'hash');
  t.equal(report.break?.eventId, (await readRow(s.sql, 'alice', at)).event_id, 'names the altered event');
  t.equal(report.events, at, 'every event before it is sound');
});

t.test('a broken link is found at its revision, also at a page boundary', async (t) => {
  for (const at of [2 * THREAD_PAGE - 1, 2 * THREAD_PAGE + 1, 5]) {
    const s = await openTestStore(t);
    await bulkInsertHistory(s.sql, 'alice', EXECUTIONS, { pad: 20 });
    await swapEvents(s.sql, 'alice', at, at + 3);
    const report = await bothWays(t, s);
    t.equal(report.break?.revision, at, `swapped at ${at}: broken at ${at}`);
    t.equal(report.break?.kind, 'link');
  }
});

t.test('a removed event and an event that fails its schema are found as before', async (t) => {
  const removed = await openTestStore(t);
  await bulkInsertHistory(removed.sql, 'alice', EXECUTIONS, { pad: 20 });
  await deleteEvent(removed.sql, 'alice', THREAD_PAGE + 3);
  const gap = await bothWays(t, removed);
  t.equal(gap.break?.revision, THREAD_PAGE + 3);
  t.equal(gap.break?.kind, 'revision');

  const invalid = await openTestStore(t);
  await bulkInsertHistory(invalid.sql, 'alice', EXECUTIONS, { pad: 20 });
  const at = 4 * THREAD_PAGE + 2; // a ToolExecuting (revision % 3 === 1)
  await alterData(invalid.sql, 'alice', at, (d) => (d['attempt'] = 'first'));
  const schema = await bothWays(t, invalid);
  t.equal(schema.break?.revision, at);
  t.equal(schema.break?.kind, 'schema');
  t.match(schema.break?.problem ?? '', /attempt/);
});
