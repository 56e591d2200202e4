import t from 'tap';
import fc from 'fast-check';
import {
  chainEvents,
  eventIdFor,
  executionIdFor,
  GENESIS_HASH,
  stepOf,
  UNKNOWN_TOOL_LABEL,
  type ToolEvent,
  type ToolEventBody,
} from '../../contracts/index.ts';
import { eventProblem, foldExecution } from '../../contracts/execution.ts';
import { formatPosition, type RecordedEvent } from '../../lib/eventstore/types.ts';
import { toEventData } from '../../lib/toolEvents.ts';
import {
  bucketOf,
  emptyHistogram,
  LATENCY_BOUNDS_MS,
  LATENCY_BUCKETS,
  mergeHistograms,
  quantile,
} from './histogram.ts';
import {
  diffDumps,
  isoOf,
  mergeToolRows,
  metricsToolOf,
  minuteOf,
  replayReadModels,
  skipKind,
  toDump,
} from './model.ts';

/** One execution's envelopes (chained after `prevHash`), like the dispatcher writes them. */
function execution(
  userId: string,
  requestId: string,
  steps: ToolEventBody[],
  options: { at?: number; prevHash?: string } = {},
): ToolEvent[] {
  const executionId = executionIdFor(userId, requestId);
  const at = options.at ?? Date.UTC(2025, 0, 1, 12, 0, 0);
  let executing = 0;
  let causationId: string | null = null;
  const unhashed = steps.map((b, i) => {
    if (b.type === 'ToolExecuting') executing++;
    const id = eventIdFor(executionId, b.type === 'ToolExecuting' ? `executing:${executing}` : stepOf(b));
    const e = {
      id,
      type: b.type,
      schemaVersion: 1,
      data: b.data,
      metadata: {
        userId,
        executionId,
        requestId,
        correlationId: `corr-${requestId}`,
        causationId,
        occurredAt: new Date(at + i * 1000).toISOString(),
        prevHash: GENESIS_HASH,
      },
    };
    causationId = id;
    return e;
  });
  return chainEvents<ToolEvent>(unhashed as never, options.prevHash);
}

const requested = (tool = 'echo'): ToolEventBody => ({
  type: 'ToolRequested',
  data: { tool, version: '1.0.0', args: {}, redacted: [] },
});
const executing = (attempt = 1): ToolEventBody => ({
  type: 'ToolExecuting',
  data: { attempt, runner: 'r1', timeoutMs: 1000 },
});
const completed = (durationMs: number, cached = false): ToolEventBody => ({
  type: 'ToolCompleted',
  data: { result: { ok: true }, redacted: [], durationMs, cached },
});
const failed = (code: 'TIMEOUT' | 'FORBIDDEN' | 'TOOL_ERROR', durationMs: number | null): ToolEventBody => ({
  type: 'ToolFailed',
  data: { error: { code, message: `${code} happened` }, durationMs },
});

const HASH = 'ab'.repeat(32);
const approvalRequested: ToolEventBody = {
  type: 'ToolApprovalRequested',
  data: {
    argsHash: HASH,
    approverRoles: ['finance'],
    deadline: '2025-01-01T13:00:00.000Z',
    requesterId: 'alice',
    allowSelfApproval: false,
  },
};
const decided = (type: 'ToolApproved' | 'ToolDenied'): ToolEventBody => ({
  type,
  data: { approverId: 'bob', approverRole: 'finance', argsHash: HASH, reason: 'checked' },
});
const cancelRequested: ToolEventBody = {
  type: 'ToolCancelRequested',
  data: { by: { userId: 'alice', admin: false }, reason: 'oops', requestedAt: '2025-01-01T12:00:05.000Z' },
};

/** Stored events as a store hands them back, with positions in order. */
function recorded(events: ToolEvent[], start = 1): RecordedEvent[] {
  const revisions = new Map<string, number>();
  return events.map((e, i) => {
    const stream = `user-${e.metadata.userId}`;
    const revision = (revisions.get(stream) ?? -1) + 1;
    revisions.set(stream, revision);
    const d = toEventData(e);
    return {
      ...d,
      streamId: stream,
      revision,
      position: { commit: BigInt(start + i), prepare: BigInt(start + i) },
      created: new Date(Date.UTC(2025, 0, 1, 12, 0, 0) + i),
    };
  });
}

t.test('histogram buckets', async (t) => {
  t.equal(LATENCY_BUCKETS, LATENCY_BOUNDS_MS.length + 1, 'an overflow bucket after the bounded ones');
  t.equal(bucketOf(0), 0);
  t.equal(bucketOf(0.3), 0);
  t.equal(bucketOf(1), 0, 'a bound belongs to the bucket it closes');
  t.equal(bucketOf(1.0001), 1);
  for (let i = 0; i < LATENCY_BOUNDS_MS.length; i++) {
    const bound = LATENCY_BOUNDS_MS[i]!;
    t.equal(bucketOf(bound), i, `bound ${bound} is in bucket ${i}`);
    t.equal(bucketOf(bound * 1.000001), i + 1, `just above ${bound} is in bucket ${i + 1}`);
  }
  t.equal(bucketOf(1e12), LATENCY_BUCKETS - 1, 'huge durations land in the overflow bucket');
  t.throws(() => bucketOf(-1), RangeError);
  t.throws(() => bucketOf(Number.NaN), RangeError);
  for (let i = 1; i < LATENCY_BOUNDS_MS.length; i++) {
    t.ok(
      LATENCY_BOUNDS_MS[i]! / LATENCY_BOUNDS_MS[i - 1]! < 1.2,
      'neighbouring bounds differ by less than 20 %',
    );
  }
});

t.test('quantiles from a histogram are within one bucket of the exact ones', async (t) => {
  fc.assert(
    fc.property(
      fc.array(fc.double({ min: 0, max: 600_000, noNaN: true }), { minLength: 1, maxLength: 400 }),
      fc.constantFrom(0.5, 0.95, 0.99),
      (values, q) => {
        const hist = emptyHistogram();
        for (const v of values) hist[bucketOf(v)]!++;
        const sorted = [...values].sort((a, b) => a - b);
        const exact = sorted[Math.ceil(q * sorted.length) - 1]!;
        const estimate = quantile(hist, q, sorted[sorted.length - 1]!)!;
        const b = bucketOf(exact);
        const lower = b === 0 ? 0 : LATENCY_BOUNDS_MS[b - 1]!;
        const upper = LATENCY_BOUNDS_MS[b] ?? Infinity;
        if (estimate < lower - 1e-9 || estimate > upper + 1e-9) {
          throw new Error(
            `q${q}: estimate ${estimate} outside the bucket (${lower}, ${upper}] of exact ${exact}`,
          );
        }
      },
    ),
    { numRuns: 300 },
  );
  t.equal(quantile(emptyHistogram(), 0.5, null), null, 'nothing recorded: no quantile');
  const hist = emptyHistogram();
  for (let i = 0; i < 100; i++) hist[bucketOf(i < 90 ? 10 : 1000)]!++;
  const p50 = quantile(hist, 0.5, 1000)!;
  t.ok(Math.abs(p50 - 10) / 10 < 0.2, `p50 of 90 % 10 ms is about 10 ms (${p50})`);
  t.ok(quantile(hist, 0.95, 1000)! > 840 && quantile(hist, 0.95, 1000)! <= 1000, 'p95 is in the 1 s bucket');
  t.equal(quantile(hist, 0.99, 1000), 1000, 'never above the maximum recorded');
  t.throws(() => quantile(hist, 0, 1), RangeError);
  t.strictSame(
    mergeHistograms(hist, hist),
    hist.map((n) => n * 2),
  );
});

t.test('executions: one row each, through their life', async (t) => {
  const events = [
    ...execution('alice', 'r1', [requested('echo'), executing(), completed(12)]),
    ...execution('alice', 'r2', [requested('echo'), failed('FORBIDDEN', null)], {
      at: Date.UTC(2025, 0, 1, 12, 0, 10),
    }),
    ...execution('alice', 'r3', [requested('search'), executing(), executing(2), failed('TIMEOUT', 5000)], {
      at: Date.UTC(2025, 0, 1, 12, 1, 30),
    }),
    ...execution('bob', 'r4', [requested('echo'), executing()], { at: Date.UTC(2025, 0, 1, 12, 2, 0) }),
  ];
  const model = replayReadModels(recorded(events));
  const byRequest = (id: string) => [...model.executions.values()].find((r) => r.requestId === id)!;

  t.match(byRequest('r1'), {
    userId: 'alice',
    tool: 'echo',
    version: '1.0.0',
    status: 'completed',
    attempts: 1,
    requestedAt: '2025-01-01T12:00:00.000Z',
    startedAt: '2025-01-01T12:00:01.000Z',
    finishedAt: '2025-01-01T12:00:02.000Z',
    durationMs: 12,
    errorCode: null,
    cached: false,
    eventCount: 3,
    lastRevision: 2,
    correlationId: 'corr-r1',
  });
  t.match(byRequest('r2'), {
    status: 'failed',
    attempts: 0,
    startedAt: null,
    errorCode: 'FORBIDDEN',
    durationMs: null,
    eventCount: 2,
  });
  t.match(byRequest('r3'), {
    status: 'failed',
    attempts: 2,
    errorCode: 'TIMEOUT',
    errorMessage: 'TIMEOUT happened',
    durationMs: 5000,
  });
  t.match(byRequest('r4'), {
    status: 'executing',
    attempts: 1,
    finishedAt: null,
    userId: 'bob',
    lastRevision: 1,
  });

  t.strictSame(model.users.get('alice'), {
    userId: 'alice',
    executions: 3,
    completed: 1,
    failed: 1,
    refused: 1,
    events: 9,
    firstActivityAt: '2025-01-01T12:00:00.000Z',
    lastActivityAt: '2025-01-01T12:01:33.000Z',
  });
  t.match(model.users.get('bob'), { executions: 1, completed: 0, failed: 0, refused: 0, events: 2 });

  const echo = model.toolTotals.get('echo')!;
  t.match(echo, {
    completed: 1,
    failed: 0,
    refused: 1,
    errorCodes: { FORBIDDEN: 1 },
    latencyCount: 1,
    latencyMaxMs: 12,
  });
  const search = model.toolTotals.get('search')!;
  t.match(search, {
    completed: 0,
    failed: 1,
    refused: 0,
    errorCodes: { TIMEOUT: 1 },
    latencyCount: 1,
    latencySumMs: 5000,
  });
  t.strictSame(
    [...model.toolMinutes.values()].map((r) => [r.tool, r.minute, r.completed + r.failed + r.refused]),
    [
      ['echo', '2025-01-01T12:00:00.000Z', 2],
      ['search', '2025-01-01T12:01:00.000Z', 1],
    ],
    'per-minute rows by the minute the execution ended',
  );
  t.equal(model.skipped.length, 0);
});

t.test(
  'events the life cycle does not allow, or the reader cannot read, are skipped, not applied',
  async (t) => {
    const good = execution('carol', 'r1', [requested(), executing(), completed(3)]);
    const again = execution('carol', 'r1', [requested(), executing(), completed(3)]).slice(1); // same ids, replayed after terminal
    const events = recorded([...good, ...again]);
    const unknown: RecordedEvent = {
      ...events[0]!,
      id: '6f1c7c6e-0000-4000-8000-000000000001',
      type: 'ToolTeleported',
      revision: 5,
      position: { commit: 99n, prepare: 99n },
    };
    const newer: RecordedEvent = {
      ...events[2]!,
      id: '6f1c7c6e-0000-4000-8000-000000000002',
      metadata: { ...(events[2]!.metadata as object), schemaVersion: 2 },
      revision: 6,
      position: { commit: 100n, prepare: 100n },
    };
    const model = replayReadModels([...events, unknown, newer]);
    const row = [...model.executions.values()][0]!;
    t.equal(row.eventCount, 3, 'only the first three events were applied');
    t.equal(row.status, 'completed');
    t.equal(model.users.get('carol')!.events, 3);
    t.equal(model.toolTotals.get('echo')!.completed, 1, 'counted once');
    t.strictSame(
      model.skipped.map((s) => [s.revision, s.eventType, skipKind(s.reason, s.eventType)]),
      [
        [3, 'ToolExecuting', 'lifecycle'],
        [4, 'ToolCompleted', 'lifecycle'],
        [5, 'ToolTeleported', 'unknown_type'],
        [6, 'ToolCompleted', 'newer_version'],
      ],
    );
    t.equal(model.skipped[2]!.position, formatPosition({ commit: 99n, prepare: 99n }));
    t.match(model.skipped[3]!.reason, /schema version 2 is newer/);
  },
);

t.test(
  'an execution whose ToolRequested was unreadable still gets a row, without tool metrics',
  async (t) => {
    const events = recorded(execution('dave', 'r1', [requested(), executing(), completed(3)]));
    events[0] = { ...events[0]!, metadata: { ...(events[0]!.metadata as object), schemaVersion: 3 } };
    const model = replayReadModels(events);
    t.match([...model.executions.values()][0], {
      tool: null,
      status: 'completed',
      requestedAt: '2025-01-01T12:00:01.000Z',
      eventCount: 2,
    });
    t.equal(model.toolTotals.size, 0);
    t.equal(model.skipped.length, 1);
  },
);

t.test('replaying envelopes gives the rows replaying stored events gives', async (t) => {
  const first = execution('erin', 'r1', [requested(), executing(), completed(7)]);
  const second = execution('erin', 'r2', [requested('search'), failed('FORBIDDEN', null)], {
    prevHash: first[first.length - 1]!.metadata.hash,
  });
  const events = [
    ...first,
    ...execution('frank', 'r3', [requested(), executing(), failed('TOOL_ERROR', 40)]),
    ...second,
  ];
  const a = toDump(replayReadModels(events));
  const b = toDump(replayReadModels(recorded(events)));
  t.strictSame(diffDumps(a, b), []);
  t.equal(
    a.executions.find((r) => r.requestId === 'r2')!.lastRevision,
    4,
    'revisions counted per user stream',
  );
});

t.test('diffDumps names the differing rows', async (t) => {
  const dump = toDump(replayReadModels(execution('gina', 'r1', [requested(), executing(), completed(7)])));
  const changed = structuredClone(dump);
  changed.executions[0]!.eventCount = 4;
  const diff = diffDumps(changed, dump);
  t.equal(diff.length, 1);
  t.match(diff[0], /executions\[0\]: .*"eventCount":4/);
  t.match(diffDumps({ ...dump, userActivity: [] }, dump)[0], /userActivity: 0 rows, expected 1/);
});

t.test('per-minute rows merge into one row per tool', async (t) => {
  const events = [0, 1, 2, 3].flatMap((m) =>
    execution(
      'hal',
      `r${m}`,
      [
        requested(m % 2 ? 'b_tool' : 'a_tool'),
        executing(),
        m === 3 ? failed('TIMEOUT', 100) : completed(10 * (m + 1)),
      ],
      {
        at: Date.UTC(2025, 0, 1, 12, m, 0),
      },
    ),
  );
  const model = replayReadModels(events);
  const merged = mergeToolRows(model.toolMinutes.values());
  t.strictSame(
    merged.map((r) => ({ ...r, latencyHistogram: r.latencyHistogram.reduce((s, n) => s + n, 0) })),
    [...model.toolTotals.values()]
      .sort((a, b) => (a.tool < b.tool ? -1 : 1))
      .map((r) => ({ ...r, latencyHistogram: r.latencyHistogram.reduce((s, n) => s + n, 0) })),
    'summing every minute gives the all-time rows',
  );
  t.strictSame(
    merged.map((r) => r.latencyHistogram),
    [...model.toolTotals.values()].sort((a, b) => (a.tool < b.tool ? -1 : 1)).map((r) => r.latencyHistogram),
  );
});

t.test('metricsToolOf: names the registry did not know count as (unknown)', async (t) => {
  t.equal(metricsToolOf({ tool: 'echo', version: '1.0.0', errorCode: null }), 'echo', 'a resolved tool');
  t.equal(
    metricsToolOf({ tool: 'echo', version: '1.0.0', errorCode: 'FORBIDDEN' }),
    'echo',
    'refused, but resolved',
  );
  t.equal(
    metricsToolOf({ tool: 'made_up', version: null, errorCode: 'FORBIDDEN' }),
    UNKNOWN_TOOL_LABEL,
    'not resolved (version null), whatever the refusal',
  );
  t.equal(
    metricsToolOf({ tool: 'made_up', version: '9.9.9', errorCode: 'UNKNOWN_TOOL' }),
    UNKNOWN_TOOL_LABEL,
    'recorded with the asked version by an older dispatcher',
  );
});

t.test('approvals and cancels: the execution row shows the wait and the cancel asked for', async (t) => {
  const events = [
    ...execution('alice', 'waiting', [requested('pay'), approvalRequested]),
    ...execution('alice', 'approved', [requested('pay'), approvalRequested, decided('ToolApproved')]),
    ...execution('alice', 'denied', [
      requested('pay'),
      approvalRequested,
      decided('ToolDenied'),
      { type: 'ToolFailed', data: { error: { code: 'DENIED', message: 'denied' }, durationMs: null } },
    ]),
    ...execution('alice', 'cancelling', [requested('pay'), executing(1), cancelRequested]),
  ];
  const model = replayReadModels(recorded(events));
  const byRequest = (id: string) => [...model.executions.values()].find((r) => r.requestId === id)!;
  t.match(byRequest('waiting'), { status: 'awaiting_approval', attempts: 0, cancelRequestedAt: null });
  t.match(byRequest('approved'), { status: 'approved', eventCount: 3 });
  t.match(byRequest('denied'), { status: 'failed', errorCode: 'DENIED', eventCount: 4 });
  t.match(byRequest('cancelling'), { status: 'executing', cancelRequestedAt: '2025-01-01T12:00:05.000Z' });
  // A denied call never ran: it counts as refused, not as a failure of the tool.
  t.match(model.users.get('alice'), { executions: 4, refused: 1, failed: 0 });
});

t.test('an event the decider refuses is not applied, and is skipped with the decider’s reason', async (t) => {
  const cases: Array<{ name: string; steps: ToolEventBody[]; skipped: number; status: string }> = [
    {
      name: 'running after it completed',
      steps: [requested(), executing(), completed(3), executing(2)],
      skipped: 3,
      status: 'completed',
    },
    {
      name: 'a second request',
      steps: [requested(), executing(), requested()],
      skipped: 2,
      status: 'executing',
    },
    {
      name: 'an approval nobody asked for',
      steps: [requested('pay'), decided('ToolApproved')],
      skipped: 1,
      status: 'requested',
    },
    {
      name: 'running while it awaits approval',
      steps: [requested('pay'), approvalRequested, executing()],
      skipped: 2,
      status: 'awaiting_approval',
    },
  ];
  for (const c of cases) {
    const events = execution('ivan', c.name.replaceAll(' ', '-'), c.steps);
    const model = replayReadModels(recorded(events));
    const row = [...model.executions.values()][0]!;
    // The decider, folding the same history up to the refused event, gives the reason.
    const before = foldExecution(c.steps.slice(0, c.skipped));
    const reason = eventProblem(before, c.steps[c.skipped]!);
    t.ok(reason, `${c.name}: the decider refuses it`);
    t.strictSame(
      model.skipped.map((s) => [s.revision, s.eventType, s.reason, skipKind(s.reason, s.eventType)]),
      [[c.skipped, c.steps[c.skipped]!.type, `life cycle: ${reason}`, 'lifecycle']],
      `${c.name}: skipped with the decider's reason`,
    );
    t.equal(row.eventCount, c.steps.length - 1, `${c.name}: not applied`);
    t.equal(row.status, c.status, `${c.name}: the status is the one before it`);
    t.equal(model.users.get('ivan')!.events, c.steps.length - 1);
  }
});

t.test('the row keeps the decider state of an open execution, and its status is that state’s', async (t) => {
  const steps = [requested('pay'), approvalRequested, decided('ToolApproved'), executing(1), cancelRequested];
  const model = replayReadModels(execution('judy', 'r1', steps));
  const row = [...model.executions.values()][0]!;
  const folded = foldExecution(steps);
  t.strictSame(row.state, folded, 'the state evolve folds');
  t.equal(row.status, folded.status);
  const ended = replayReadModels(execution('judy', 'r2', [...steps, failed('TOOL_ERROR', 5)]));
  t.match([...ended.executions.values()][0], { status: 'failed', state: null }, 'none kept once it ended');
});

t.test('isoOf and minuteOf answer as Date does, with or without its round trip', async (t) => {
  const viaDate = (s: string) => new Date(s).toISOString();
  const minuteViaDate = (s: string) => {
    const d = new Date(s);
    d.setUTCSeconds(0, 0);
    return d.toISOString();
  };
  const odd = [
    '2025-01-31T23:59:59.999Z',
    '2024-02-29T12:00:00.000Z', // a leap day
    '2025-02-29T12:00:00.000Z', // not one: a Date moves it to 1 March
    '2000-02-29T00:00:00.000Z',
    '1900-02-29T00:00:00.000Z',
    '2025-04-31T00:00:00.000Z',
    '2025-06-01T10:00:00+02:00', // an offset
    '2025-06-01T10:00:00Z', // no milliseconds
    '2025-06-01T10:00:00.123456Z', // more digits
  ];
  for (const s of odd) {
    t.equal(isoOf(s), viaDate(s), s);
    t.equal(minuteOf(s), minuteViaDate(s), `minute of ${s}`);
  }
  fc.assert(
    fc.property(fc.date({ min: new Date(0), max: new Date('2200-01-01'), noInvalidDate: true }), (d) => {
      const s = d.toISOString();
      return isoOf(s) === s && minuteOf(s) === minuteViaDate(s);
    }),
  );
});
