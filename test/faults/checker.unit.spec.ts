import t from 'tap';
import {
  chainEvents,
  eventIdFor,
  executionIdFor,
  GENESIS_HASH,
  userStream,
  type ToolEvent,
} from '../../contracts/index.ts';
import type { RecordedEvent } from '../../lib/eventstore/types.ts';
import { toEventData } from '../../lib/toolEvents.ts';
import { answerOf, checkDelivery, checkHistories, type Rule } from './checker.ts';
import { Ledger } from './load.ts';
import type { Received } from './watchers.ts';

/** The checker's rules each catch what they are there for, on hand-made histories. */

type Step = 'requested' | 'executing' | 'completed' | 'failed';

function executionEvents(userId: string, requestId: string, steps: Step[], code = 'TOOL_ERROR'): ToolEvent[] {
  const executionId = executionIdFor(userId, requestId);
  let attempt = 0;
  let causation: string | null = requestId;
  return steps.map((s) => {
    const step =
      s === 'requested' ? 'requested' : s === 'executing' ? (`executing:${++attempt}` as const) : 'terminal';
    const id = eventIdFor(executionId, step);
    const metadata = {
      userId,
      executionId,
      requestId,
      correlationId: executionId,
      causationId: causation,
      occurredAt: '2025-01-01T00:00:00.000Z',
      prevHash: GENESIS_HASH,
      hash: GENESIS_HASH,
    };
    causation = id;
    const base = { id, schemaVersion: 1 as const, metadata };
    switch (s) {
      case 'requested':
        return {
          ...base,
          type: 'ToolRequested',
          data: { tool: 'echo', version: '1.0.0', args: {}, redacted: [] },
        };
      case 'executing':
        return { ...base, type: 'ToolExecuting', data: { attempt, runner: 'd1', timeoutMs: 5000 } };
      case 'completed':
        return {
          ...base,
          type: 'ToolCompleted',
          data: { result: { ok: true }, redacted: [], durationMs: 3, cached: false },
        };
      case 'failed':
        return {
          ...base,
          type: 'ToolFailed',
          data: { error: { code: code as 'TOOL_ERROR', message: 'no' }, durationMs: 3 },
        };
    }
  });
}

/** Chains events into a stream as the store would hand them back. */
function stream(userId: string, events: ToolEvent[]): RecordedEvent[] {
  return chainEvents<ToolEvent>(events).map((e, revision) => {
    const d = toEventData(e);
    return {
      id: d.id,
      type: d.type,
      data: d.data,
      metadata: d.metadata,
      streamId: userStream(userId),
      revision,
      position: { commit: BigInt(revision + 1), prepare: BigInt(revision + 1) },
      created: new Date(0),
    };
  });
}

const rules = (vs: Array<{ rule: Rule }>) => [...new Set(vs.map((v) => v.rule))].sort();

function world() {
  const ledger = new Ledger();
  const a1 = executionEvents('ann', 'a1', ['requested', 'executing', 'completed']);
  const a2 = executionEvents('ann', 'a2', ['requested', 'failed'], 'RATE_LIMITED');
  const b1 = executionEvents('bob', 'b1', ['requested', 'executing', 'executing', 'failed'], 'INTERRUPTED');
  for (const [user, id] of [
    ['ann', 'a1', a1],
    ['ann', 'a2', a2],
    ['bob', 'b1', b1],
  ] as const) {
    const chained = chainEvents<ToolEvent>(user === 'ann' ? [...a1, ...a2] : b1);
    const terminal = chained.filter((e) => e.metadata.requestId === id).at(-1)!;
    ledger.entry(user, id, 'echo');
    ledger.answer(user, id, answerOf(terminal));
  }
  const streams = new Map([
    [userStream('ann'), stream('ann', [...a1, ...a2])],
    [userStream('bob'), stream('bob', b1)],
  ]);
  return { ledger, streams, a1, a2, b1 };
}

t.test('a sound history has no violations', async (t) => {
  const { ledger, streams } = world();
  t.strictSame(checkHistories(streams, ledger.all()), []);
});

t.test('an acknowledged request without its terminal event is caught', async (t) => {
  const { ledger, streams, a1 } = world();
  streams.set(userStream('ann'), stream('ann', a1.slice(0, 2)));
  t.strictSame(rules(checkHistories(streams, ledger.all())), ['acknowledged']);
});

t.test('an answer that disagrees with the stream, or with another answer, is caught', async (t) => {
  const { ledger, streams } = world();
  const entry = ledger.entry('ann', 'a1');
  entry.answers[0] = { ...entry.answers[0]!, result: { ok: false } } as never;
  t.strictSame(rules(checkHistories(streams, ledger.all())), ['answer-agrees']);
  ledger.answer('ann', 'a2', { ...ledger.entry('ann', 'a2').answers[0]!, requestId: 'other' });
  t.strictSame(rules(checkHistories(streams, ledger.all())), ['answer-agrees', 'answers-consistent']);
});

t.test('two terminal events, or events after one, break the life cycle', async (t) => {
  const { ledger, streams, a1 } = world();
  const twice = [...a1, { ...a1[2]!, id: '00000000-0000-5000-8000-000000000000' }];
  streams.set(userStream('ann'), stream('ann', twice));
  t.strictSame(rules(checkHistories(streams, ledger.all())), [
    'acknowledged',
    'deterministic-ids',
    'lifecycle',
  ]);
});

t.test('a duplicated event id is caught, even across streams', async (t) => {
  const { ledger, streams, a1, b1 } = world();
  const copy = { ...a1[0]! };
  streams.set(userStream('bob'), stream('bob', [...b1, copy]));
  const found = rules(checkHistories(streams, ledger.all()));
  t.ok(found.includes('unique-ids'), `unique-ids in ${found.join(',')}`);
  t.ok(found.includes('ownership'), "and the copy is another user's event");
});

t.test('a gap in revisions, and a changed event, are caught', async (t) => {
  const { ledger, streams } = world();
  const bob = streams.get(userStream('bob'))!;
  bob[2] = { ...bob[2]!, revision: 5 };
  t.strictSame(rules(checkHistories(streams, ledger.all())), ['revisions']);
  const { ledger: l2, streams: s2 } = world();
  const ann = s2.get(userStream('ann'))!;
  ann[0] = { ...ann[0]!, data: { ...(ann[0]!.data as Record<string, string>), tool: 'changed' } };
  t.strictSame(rules(checkHistories(s2, l2.all())), ['chain']);
});

t.test('an execution nobody of that user asked for is a stranger', async (t) => {
  const { ledger, streams, b1 } = world();
  const extra = executionEvents('bob', 'sneaky', ['requested', 'failed'], 'FORBIDDEN');
  streams.set(userStream('bob'), stream('bob', [...b1, ...extra]));
  t.strictSame(rules(checkHistories(streams, ledger.all())), ['strangers']);
  t.strictSame(checkHistories(streams, ledger.all(), { strangers: false }), []);
});

t.test('refusals without a record must have left nothing; unanswered requests are reported', async (t) => {
  const { ledger, streams } = world();
  ledger.entry('ann', 'a1').answers.splice(0, 1, {
    status: 'failed',
    requestId: null,
    executionId: null,
    correlationId: null,
    error: { code: 'UNAUTHENTICATED', message: 'no' },
  });
  t.strictSame(rules(checkHistories(streams, ledger.all())), ['unrecorded']);
  const { ledger: l2, streams: s2 } = world();
  l2.entry('ann', 'never');
  t.strictSame(rules(checkHistories(s2, l2.all())), ['unanswered']);
  t.strictSame(checkHistories(s2, l2.all(), { requireAllAnswered: false }), []);
});

t.test('delivery: missing, repeated, reordered and foreign events are caught', async (t) => {
  const { a1, a2, b1 } = world();
  const stored = chainEvents<ToolEvent>([...a1, ...a2]);
  const all: Received[] = stored.map((event, revision) => ({
    revision,
    event,
    userId: 'ann',
    connection: 1,
  }));
  t.strictSame(checkDelivery('ann', all, stored), [], 'everything once, in order');
  t.match(checkDelivery('ann', all.slice(0, 3), stored), [
    { rule: 'delivery', message: /never arrived \(revisions 3,4\)/ },
  ]);
  t.match(checkDelivery('ann', [...all.slice(0, 3), all[2]!, ...all.slice(3)], stored), [
    { message: /more than once: 2/ },
    { message: /came after/ },
  ]);
  t.match(checkDelivery('ann', [all[1]!, all[0]!, ...all.slice(2)], stored), [
    { message: /revision 0 came after 1/ },
  ]);
  const bobs = chainEvents<ToolEvent>(b1);
  t.match(
    checkDelivery('ann', [...all, { revision: 5, event: bobs[0]!, userId: 'bob', connection: 2 }], stored),
    [{ message: /1 event\(s\) of another user/ }, { message: /not in the store/ }],
  );
});
