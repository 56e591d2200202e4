import t from 'tap';
import {
  chainEvents,
  eventIdFor,
  executionIdFor,
  GENESIS_HASH,
  type ToolEvent,
  type ToolEventBody,
} from '../../contracts/index.ts';
import type { EventStore, RecordedEvent } from '../../lib/eventstore/types.ts';
import { toEventData } from '../../lib/toolEvents.ts';
import { BloomFilter } from '../../lib/bloom.ts';
import { executionEvents } from './testkit.ts';
import {
  ChainVerifier,
  describeReport,
  type FindTerminal,
  type HistoryBreak,
  type VerifyReport,
  verifyHistory,
} from './verify.ts';

/** The verifier's checks, fed in-memory events: each rule, and the exact point it reports. */
type Unhashed = Parameters<typeof chainEvents<ToolEvent>>[0][number];

function step(userId: string, requestId: string, body: ToolEventBody, stepName: string, at = 0): Unhashed {
  const executionId = executionIdFor(userId, requestId);
  return {
    id: eventIdFor(executionId, stepName as 'terminal'),
    type: body.type,
    schemaVersion: 1,
    data: body.data,
    metadata: {
      userId,
      executionId,
      requestId,
      correlationId: executionId,
      causationId: null,
      occurredAt: new Date(Date.UTC(2025, 0, 1) + at).toISOString(),
      prevHash: GENESIS_HASH,
    },
  };
}

const requested: ToolEventBody = {
  type: 'ToolRequested',
  data: { tool: 'echo', version: '1.0.0', args: {}, redacted: [] },
};
const executing = (attempt = 1): ToolEventBody => ({
  type: 'ToolExecuting',
  data: { attempt, runner: 'r', timeoutMs: 100 },
});
const completed: ToolEventBody = {
  type: 'ToolCompleted',
  data: { result: 1, redacted: [], durationMs: 1, cached: false },
};
const failed: ToolEventBody = {
  type: 'ToolFailed',
  data: { error: { code: 'TIMEOUT', message: 'slow' }, durationMs: 1 },
};

function recorded(events: ToolEvent[], stream = 'user-alice'): RecordedEvent[] {
  return events.map((e, i) => {
    const d = toEventData(e);
    return {
      ...d,
      streamId: stream,
      revision: i,
      position: { commit: 1n, prepare: BigInt(i) },
      created: new Date(),
    };
  });
}

/** A finder over the same events, counting its calls. */
function finder(events: RecordedEvent[]): FindTerminal & { calls: number } {
  const f = (async (executionId: string, before: number) => {
    f.calls++;
    const hit = events
      .slice(0, before)
      .find(
        (r) =>
          (r.metadata as { executionId: string }).executionId === executionId &&
          /Completed|Failed/.test(r.type),
      );
    return hit ? hit.revision : null;
  }) as FindTerminal & { calls: number };
  f.calls = 0;
  return f;
}

async function run(events: RecordedEvent[], options: { bloomBytes?: number; head?: number | null } = {}) {
  const find = finder(events);
  const v = new ChainVerifier({
    userId: 'alice',
    findTerminal: find,
    ...(options.bloomBytes ? { bloomBytes: options.bloomBytes } : {}),
  });
  let broken: HistoryBreak | null = null;
  for (const e of events) if ((broken = await v.accept(e))) break;
  broken ??= v.finish(options.head ?? null);
  return { broken, summary: v.summary(), find };
}

const history = (): ToolEvent[] =>
  chainEvents<ToolEvent>([
    ...executionEvents('alice', 1, 0, 0),
    ...executionEvents('alice', 2, 10, 0),
    step('alice', 'r3', requested, 'requested', 20),
    step('alice', 'r3', failed, 'terminal', 21),
  ]);

t.test('a sound history has no break', async (t) => {
  const { broken, summary } = await run(recorded(history()));
  t.equal(broken, null);
  t.same(summary.executions, { started: 3, ended: 3, open: 0 }, 'ended executions are not held');
  t.equal(summary.lastRevision, 7);
  t.equal(summary.events, 8);
});

t.test('revisions: a gap or a repeat', async (t) => {
  const events = recorded(history());
  const gap = await run([...events.slice(0, 3), ...events.slice(4)]);
  t.match(gap.broken, { revision: 3, eventId: null, kind: 'revision', problem: /revision 3 is missing/ });
  const gap2 = await run([...events.slice(0, 3), ...events.slice(6)]);
  t.match(gap2.broken, { revision: 3, problem: /revisions 3\.\.5 are missing/ });
  const repeat = await run([...events.slice(0, 4), events[3]!]);
  t.match(repeat.broken, { revision: 4, kind: 'revision', problem: /revision 3 appears where revision 4/ });
});

t.test('content: altered data, a moved event, a bad schema, another user', async (t) => {
  const events = recorded(history());
  const altered = structuredClone(events);
  (altered[4]!.data as { attempt: number }).attempt = 2;
  t.match((await run(altered)).broken, {
    revision: 4,
    kind: 'hash',
    eventId: events[4]!.id,
    problem: /does not cover/,
  });

  const swapped = structuredClone(events);
  [swapped[2], swapped[5]] = [
    { ...swapped[5]!, revision: 2 },
    { ...swapped[2]!, revision: 5 },
  ];
  t.match((await run(swapped)).broken, { revision: 2, kind: 'link', eventId: events[5]!.id });

  const extra = structuredClone(events);
  (extra[1]!.data as Record<string, unknown>)['sneaky'] = true;
  t.match((await run(extra)).broken, { revision: 1, kind: 'schema' });

  const foreign = recorded(chainEvents<ToolEvent>([step('bob', 'r1', requested, 'requested')]));
  t.match((await run(foreign)).broken, { revision: 0, kind: 'schema', problem: /names user bob/ });
});

t.test('life cycle', async (t) => {
  const cases: Array<[string, Unhashed[], number, RegExp]> = [
    ['executing without a request', [step('alice', 'x', executing(), 'executing:1')], 0, /never requested/],
    [
      'completed straight after the request',
      [step('alice', 'x', requested, 'requested'), step('alice', 'x', completed, 'terminal')],
      1,
      /ToolCompleted is not allowed while execution \S+ is requested/,
    ],
    [
      'an attempt number out of turn',
      [
        step('alice', 'x', requested, 'requested'),
        step('alice', 'x', executing(1), 'executing:1'),
        step('alice', 'x', executing(3), 'executing:2'),
      ],
      2,
      /says attempt 3, but it is attempt 2/,
    ],
    [
      'a second request while running',
      [step('alice', 'x', requested, 'requested'), step('alice', 'x', requested, 'again')],
      1,
      /ToolRequested is not allowed while execution \S+ is requested/,
    ],
    [
      'two terminal events',
      [
        step('alice', 'x', requested, 'requested'),
        step('alice', 'x', failed, 'terminal'),
        step('alice', 'x', failed, 'terminal-2'),
      ],
      2,
      /already ended at revision 1/,
    ],
    [
      'a request of an ended execution',
      [
        step('alice', 'x', requested, 'requested'),
        step('alice', 'x', failed, 'terminal'),
        step('alice', 'y', requested, 'requested'),
        step('alice', 'x', requested, 'again'),
      ],
      3,
      /already ended at revision 1: nothing may follow a terminal event/,
    ],
  ];
  for (const [name, events, revision, problem] of cases) {
    t.match(
      (await run(recorded(chainEvents<ToolEvent>(events)))).broken,
      { revision, kind: 'lifecycle', problem },
      name,
    );
  }
  const running = structuredClone(
    recorded(
      chainEvents<ToolEvent>([
        step('alice', 'x', requested, 'requested'),
        step('alice', 'x', executing(), 'executing:1'),
      ]),
    ),
  );
  const withOtherRequest = recorded(
    chainEvents<ToolEvent>([
      step('alice', 'x', requested, 'requested'),
      {
        ...step('alice', 'x', executing(), 'executing:1'),
        metadata: { ...step('alice', 'x', executing(), 'executing:1').metadata, requestId: 'other' },
      },
    ]),
  );
  t.equal((await run(running)).broken, null, 'a running execution at the end is fine');
  t.match((await run(withOtherRequest)).broken, { revision: 1, problem: /names request other/ });
});

t.test(
  'the ended-executions filter: exact despite false positives, and never asked for new executions',
  async (t) => {
    const events = recorded(history());
    const normal = await run(events);
    t.equal(normal.find.calls, 0, 'no stream re-read for executions that never ended');
    const saturated = await run(events, { bloomBytes: 1 });
    t.equal(saturated.broken, null, 'a one-byte filter says "maybe" for everything: still no false alarm');
    t.ok(saturated.find.calls > 0, 'each "maybe" was confirmed by reading the stream');

    const bloom = new BloomFilter(1024, 7);
    const ids = Array.from({ length: 200 }, (_, i) => executionIdFor('alice', `r${i}`));
    ids.forEach((id) => bloom.add(id));
    t.ok(
      ids.every((id) => bloom.mightContain(id)),
      'no false negatives',
    );
    const others = Array.from({ length: 200 }, (_, i) => executionIdFor('alice', `other${i}`));
    t.ok(others.filter((id) => bloom.mightContain(id)).length < 20, 'few false positives at this load');
  },
);

t.test('checkpoint and store head', async (t) => {
  const events = recorded(history());
  const at5 = events[5]!;
  const cp = { revision: 5, hash: (at5.metadata as { hash: string }).hash, eventId: at5.id };
  const check = async (list: RecordedEvent[], checkpoint: typeof cp, head: number | null = null) => {
    const v = new ChainVerifier({ userId: 'alice', findTerminal: finder(list), checkpoint });
    for (const e of list) if (await v.accept(e)) break;
    return { broken: v.finish(head), matched: v.summary().checkpointMatched };
  };
  t.same(await check(events, cp), { broken: null, matched: true });
  t.match((await check(events.slice(0, 4), cp)).broken, {
    revision: 4,
    kind: 'truncated',
    problem: /revisions 4\.\.5 were removed/,
  });
  t.match((await check(events, { ...cp, hash: 'f'.repeat(64) })).broken, {
    revision: 5,
    kind: 'checkpoint',
    eventId: at5.id,
  });
  t.match((await run(events.slice(0, 6), { head: 7 })).broken, {
    revision: 6,
    kind: 'truncated',
    problem: /reports revision 7/,
  });
});

t.test('describeReport', async (t) => {
  const base: VerifyReport = {
    ok: true,
    userId: 'alice',
    stream: 'user-alice',
    events: 8,
    lastRevision: 7,
    lastHash: 'a'.repeat(64),
    lastEventId: null,
    executions: { started: 3, ended: 2, open: 1 },
    checkpoint: null,
    break: null,
    startedAt: '',
    finishedAt: '',
  };
  t.equal(
    describeReport(base),
    `OK user-alice: 8 events (revisions 0..7), 3 executions (2 ended, 1 open), last hash ${'a'.repeat(64)}`,
  );
  t.equal(
    describeReport({ ...base, events: 0, lastRevision: -1, executions: { started: 0, ended: 0, open: 0 } }),
    'NOTHING TO VERIFY user-alice: no events (this user has run no tool, or the user id is mistyped)',
    'an empty history is not reported as OK',
  );
  t.equal(
    describeReport({
      ...base,
      ok: false,
      events: 3,
      break: { revision: 3, eventId: null, kind: 'revision', problem: 'revision 3 is missing' },
    }),
    'BROKEN user-alice at revision 3: [revision] revision 3 is missing. 3 events before it are sound',
  );
});

t.test('a read that fails after a break still reports the break', async (t) => {
  const events = recorded(history());
  /** A store whose read fails after `n` events (a dropped connection, a KurrentDB read error). */
  const failingAfter = (stored: RecordedEvent[], n: number) =>
    ({
      streamInfo: async () => ({ revision: stored.length - 1 }),
      readStream: async function* () {
        yield* stored.slice(0, n);
        throw new Error('connection lost');
      },
    }) as unknown as EventStore;
  const altered = (e: RecordedEvent) => ({
    ...e,
    metadata: { ...(e.metadata as object), occurredAt: '2030-01-01T00:00:00.000Z' },
  });
  const tampered = events.map((e, i) => (i === 2 ? altered(e) : e));
  const report = await verifyHistory(failingAfter(tampered, 5), 'alice', { threads: null });
  t.equal(report.ok, false);
  t.equal(report.break?.revision, 2, 'the break read before the failure is the answer');
  t.equal(report.break?.kind, 'hash');
  // Without a break in what was read, the failure is the caller's.
  await t.rejects(verifyHistory(failingAfter(events, 5), 'alice', { threads: null }), /connection lost/);
});
