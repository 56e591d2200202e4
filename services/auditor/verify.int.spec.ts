import t from 'tap';
import {
  chainEvents,
  eventIdFor,
  executionIdFor,
  GENESIS_HASH,
  userStream,
  type ToolEvent,
  type ToolEventBody,
} from '../../contracts/index.ts';
import type { EventStore } from '../../lib/eventstore/types.ts';
import { toEventData } from '../../lib/toolEvents.ts';
import { recordExecution, streamTail } from '../../test/support/events.ts';
import { CheckpointRefusedError, openCheckpoint, signCheckpoint, type Checkpoint } from './checkpoint.ts';
import { replayHistory } from './replay.ts';
import {
  alterData,
  deleteEvent,
  openTestStore,
  readRow,
  recordHistory,
  swapEvents,
  truncateTail,
} from './testkit.ts';
import { verifyHistory, type VerifyReport } from './verify.ts';

/**
 * Verification against a real PostgreSQL event store, tampered with by plain SQL as someone with
 * database access would: each kind of tampering is found at the exact revision where it was done.
 *
 * recordHistory(…, 12) writes executions in turn completed (3 events), failed (3), refused (2),
 * completed (3): revisions 0-2, 3-5, 6-7, 8-10, 11-13, ...
 */
type Tap = Parameters<Parameters<typeof t.test>[0]>[0];
const KEY = 'integration-audit-key-0123456789abcdefgh';

function brokenAt(t: Tap, report: VerifyReport, revision: number, kind: string): void {
  t.equal(report.ok, false, 'the history does not verify');
  t.equal(report.break?.revision, revision, `broken at revision ${revision}`);
  t.equal(report.break?.kind, kind, `found as ${kind}: ${report.break?.problem ?? 'no break'}`);
  t.equal(report.events, revision, 'every event before the break counts as sound');
}

function checkpointOf(report: VerifyReport): Checkpoint {
  return signCheckpoint(
    {
      userId: report.userId,
      stream: report.stream,
      revision: report.lastRevision,
      eventId: report.lastEventId!,
      hash: report.lastHash,
      events: report.events,
      issuedAt: report.finishedAt,
      issuedBy: 'auditor-1',
    },
    KEY,
  );
}

/** Appends events for one execution, correctly chained onto the stream's tail (as a buggy dispatcher would). */
async function appendChained(
  store: EventStore,
  userId: string,
  requestId: string,
  bodies: ToolEventBody[],
  steps: string[],
) {
  const executionId = executionIdFor(userId, requestId);
  const tail = await streamTail(store, userId);
  const events = chainEvents<ToolEvent>(
    bodies.map((b, i) => ({
      id: eventIdFor(executionId, steps[i] as 'terminal'),
      type: b.type,
      schemaVersion: 1,
      data: b.data,
      metadata: {
        userId,
        executionId,
        requestId,
        correlationId: executionId,
        causationId: null,
        occurredAt: new Date().toISOString(),
        prevHash: GENESIS_HASH,
      },
    })) as never,
    tail.hash,
  );
  await store.append(userStream(userId), events.map(toEventData), tail.revision);
  return tail.revision + 1;
}

t.test('a clean history verifies, and other users do not disturb it', async (t) => {
  const { store, sql } = await openTestStore(t);
  const { events } = await recordHistory(store, 'alice', 12);
  await recordHistory(store, 'bob', 3);
  await recordExecution(store, 'alice', { outcome: 'executing' });
  const report = await verifyHistory(store, 'alice');
  t.equal(report.ok, true, report.break?.problem ?? 'verifies');
  t.equal(report.break, null);
  t.equal(report.events, events + 2);
  t.equal(report.lastRevision, events + 1);
  t.same(report.executions, { started: 13, ended: 12, open: 1 }, 'the running execution is open, not broken');
  const last = await readRow(sql, 'alice', events + 1);
  t.equal(report.lastHash, (JSON.parse(last.metadata) as { hash: string }).hash);

  const empty = await verifyHistory(store, 'nobody');
  t.equal(empty.ok, true, 'a user without events has a sound (empty) history');
  t.equal(empty.lastRevision, -1);
});

t.test('an event altered in the database is found at its revision', async (t) => {
  const { store, sql } = await openTestStore(t);
  await recordHistory(store, 'alice', 8);
  await alterData(
    sql,
    'alice',
    8,
    (d) => ((d['args'] as Record<string, unknown>)['query'] = 'a different question'),
  );
  const report = await verifyHistory(store, 'alice');
  brokenAt(t, report, 8, 'hash');
  t.equal(report.break?.eventId, (await readRow(sql, 'alice', 8)).event_id, 'names the altered event');

  const { store: store2, sql: sql2 } = await openTestStore(t);
  await recordHistory(store2, 'carol', 8);
  await alterData(sql2, 'carol', 10, (d) => (d['result'] = { ok: false }));
  brokenAt(t, await verifyHistory(store2, 'carol'), 10, 'hash');
});

t.test('a deleted event is found at its revision', async (t) => {
  const { store, sql } = await openTestStore(t);
  await recordHistory(store, 'alice', 8);
  await deleteEvent(sql, 'alice', 5);
  const report = await verifyHistory(store, 'alice');
  brokenAt(t, report, 5, 'revision');
  t.equal(report.break?.eventId, null, 'the missing event has no id to name');
  t.match(report.break?.problem ?? '', /revision 5 is missing/);

  t.test('also when the later revisions are renumbered to close the gap', async (t) => {
    const { store, sql } = await openTestStore(t);
    await recordHistory(store, 'alice', 8);
    const removed = await readRow(sql, 'alice', 5);
    await deleteEvent(sql, 'alice', 5, true);
    t.not((await readRow(sql, 'alice', 5)).event_id, removed.event_id, 'revision 5 now holds the next event');
    const report = await verifyHistory(store, 'alice');
    brokenAt(t, report, 5, 'link');
  });

  t.test('also the first event', async (t) => {
    const { store, sql } = await openTestStore(t);
    await recordHistory(store, 'alice', 2);
    await deleteEvent(sql, 'alice', 0);
    brokenAt(t, await verifyHistory(store, 'alice'), 0, 'revision');
  });
});

t.test('two swapped events are found at the first of them', async (t) => {
  const { store, sql } = await openTestStore(t);
  await recordHistory(store, 'alice', 8);
  await swapEvents(sql, 'alice', 4, 9);
  brokenAt(t, await verifyHistory(store, 'alice'), 4, 'link');

  const { store: store2, sql: sql2 } = await openTestStore(t);
  await recordHistory(store2, 'bob', 4);
  await swapEvents(sql2, 'bob', 6, 7);
  brokenAt(t, await verifyHistory(store2, 'bob'), 6, 'link');
});

t.test('checkpoints', async (t) => {
  t.test('a truncated tail is found against an earlier checkpoint', async (t) => {
    const { store, sql } = await openTestStore(t);
    await recordHistory(store, 'alice', 8);
    const before = await verifyHistory(store, 'alice');
    t.equal(before.ok, true);
    const checkpoint = openCheckpoint(JSON.parse(JSON.stringify(checkpointOf(before))), KEY, 'alice');
    t.equal(checkpoint.revision, 21);

    const again = await verifyHistory(store, 'alice', { checkpoint });
    t.equal(again.ok, true, 'the untouched history matches its checkpoint');
    t.equal(again.checkpoint?.matched, true);

    await truncateTail(sql, 'alice', 20);
    const alone = await verifyHistory(store, 'alice');
    t.equal(alone.ok, true, 'a cleanly cut tail is a sound shorter history on its own');
    const report = await verifyHistory(store, 'alice', { checkpoint });
    brokenAt(t, report, 20, 'truncated');
    t.match(report.break?.problem ?? '', /revisions 20\.\.21 were removed/);
  });

  t.test('a tail cut and written again differently is found at the checkpoint revision', async (t) => {
    const { store, sql } = await openTestStore(t);
    await recordHistory(store, 'alice', 4);
    const checkpoint = checkpointOf(await verifyHistory(store, 'alice'));
    t.equal(checkpoint.revision, 10);
    await truncateTail(sql, 'alice', 8);
    await recordHistory(store, 'alice', 2, new Date('2025-06-01T00:00:00Z'), 'rewritten');
    const alone = await verifyHistory(store, 'alice');
    t.equal(alone.ok, true, 'the rewritten history is a well-formed chain');
    brokenAt(t, await verifyHistory(store, 'alice', { checkpoint }), 10, 'checkpoint');
  });

  t.test('a forged or altered checkpoint is refused', async (t) => {
    const { store } = await openTestStore(t);
    await recordHistory(store, 'alice', 2);
    const good = checkpointOf(await verifyHistory(store, 'alice'));
    t.throws(
      () => openCheckpoint({ ...good, revision: 2 }, KEY, 'alice'),
      CheckpointRefusedError,
      'revision changed',
    );
    t.throws(() => openCheckpoint(good, 'another-key-0123456789abcdefghijklmnop', 'alice'), {
      message: /another key/,
    });
    t.throws(() => openCheckpoint(good, KEY, 'bob'), { message: /for user alice/ });
  });
});

t.test('life-cycle violations written with a valid chain are found', async (t) => {
  t.test('an event after the terminal event', async (t) => {
    const { store } = await openTestStore(t);
    await recordHistory(store, 'alice', 4);
    const rev = await appendChained(
      store,
      'alice',
      'req-0',
      [{ type: 'ToolExecuting', data: { attempt: 2, runner: 'late', timeoutMs: 10 } }],
      ['executing:9'],
    );
    const report = await verifyHistory(store, 'alice');
    brokenAt(t, report, rev, 'lifecycle');
    t.match(report.break?.problem ?? '', /already ended at revision 2/);
  });

  t.test('a second request of an ended execution', async (t) => {
    const { store } = await openTestStore(t);
    await recordHistory(store, 'alice', 4);
    const rev = await appendChained(
      store,
      'alice',
      'req-1',
      [{ type: 'ToolRequested', data: { tool: 'search', version: '1.0.0', args: {}, redacted: [] } }],
      ['requested-again'],
    );
    const report = await verifyHistory(store, 'alice');
    brokenAt(t, report, rev, 'lifecycle');
    t.match(report.break?.problem ?? '', /already ended at revision 5/);
  });

  t.test('a terminal event without a request, and two terminal events', async (t) => {
    const { store } = await openTestStore(t);
    await recordHistory(store, 'alice', 1);
    const rev = await appendChained(
      store,
      'alice',
      'never-asked',
      [{ type: 'ToolFailed', data: { error: { code: 'TIMEOUT', message: 'slow' }, durationMs: 1 } }],
      ['terminal'],
    );
    const report = await verifyHistory(store, 'alice');
    brokenAt(t, report, rev, 'lifecycle');
    t.match(report.break?.problem ?? '', /never requested/);

    const { store: s2 } = await openTestStore(t);
    await recordExecution(s2, 'bob', { requestId: 'r', outcome: 'executing' });
    const twice = await appendChained(
      s2,
      'bob',
      'r',
      [
        { type: 'ToolCompleted', data: { result: 1, redacted: [], durationMs: 1, cached: false } },
        { type: 'ToolFailed', data: { error: { code: 'TIMEOUT', message: 'slow' }, durationMs: 1 } },
      ],
      ['terminal', 'terminal-2'],
    );
    brokenAt(t, await verifyHistory(s2, 'bob'), twice + 1, 'lifecycle');
  });
});

t.test('replay reads a revision range or a time range, in order', async (t) => {
  const { store } = await openTestStore(t);
  await recordHistory(store, 'alice', 8, new Date('2025-03-01T10:00:00.000Z'));
  const all = [];
  for await (const item of replayHistory(store, 'alice')) all.push(item);
  t.equal(all.length, 22);
  t.same(
    all.map((i) => i.revision),
    [...Array(22).keys()],
  );
  const some = [];
  for await (const item of replayHistory(store, 'alice', { fromRevision: 5, toRevision: 9 }))
    some.push(item.revision);
  t.same(some, [5, 6, 7, 8, 9]);
  // Executions start an hour apart: 12:00 to 13:00 holds executions 2 and 3 (revisions 6-10).
  const byTime = [];
  for await (const item of replayHistory(store, 'alice', {
    from: new Date('2025-03-01T12:00:00.000Z'),
    to: new Date('2025-03-01T13:00:00.005Z'),
  })) {
    byTime.push(item.revision);
  }
  t.same(byTime, [6, 7, 8, 9, 10]);
  t.same(
    all.slice(8, 11).map((i) => ('event' in i ? [i.event.type, i.tool] : null)),
    [
      ['ToolRequested', 'send_mail@1.0.0'],
      ['ToolExecuting', 'send_mail@1.0.0'],
      ['ToolCompleted', 'send_mail@1.0.0'],
    ],
    'the tool is named on every event of an execution',
  );
  const partial = [];
  for await (const item of replayHistory(store, 'alice', { fromRevision: 9 })) partial.push(item);
  t.equal('event' in partial[0]! && partial[0].tool, null, 'unknown when the request lies before the range');
});
