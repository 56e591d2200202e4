/**
 * Scenario 6 — metrics match what happened.
 *
 * Proves, against the running stack: after a known workload (completions, tool failures, cache
 * hits, refusals, unknown tools, bad tokens, sleeps of known lengths, over three users), the
 * projector's read models (`GET /tools/metrics`, all-time and by time window, and
 * `GET /users/:id/activity`) report exactly the counts, error codes and error rates the agents
 * were answered, and latency count, mean, max and p50/p95/p99 consistent with the durations the
 * agents were told (quantiles within the documented bucket accuracy); the dispatcher's Prometheus
 * endpoint counts every terminal answer by tool and outcome, its latency histogram holds every
 * execution and never reports one faster than the tool took; the projector's Prometheus endpoint
 * counts every applied event by type and shows no lag once caught up.
 */
import t from 'tap';
import type { JsonObject } from '../../contracts/index.ts';
import { signToken } from '../../lib/auth.ts';
import type { TerminalAnswer } from '../../lib/clients/agent.ts';
import { startTestStack } from '../support/stack.ts';
import {
  dbPool,
  http,
  mapLimit,
  metricSum,
  metricsText,
  newUserId,
  projectorCaughtUp,
  samples,
  terminal,
  userEvents,
  waitUntil,
  type StoredEvent,
} from './support.ts';

const s = await startTestStack(t);
const pool = dbPool(t, s);
const startedAt = new Date(Date.now() - 60_000);

const users = await Promise.all(
  ['m0', 'm1', 'm2'].map(async (p) => {
    const userId = newUserId(p);
    return { userId, token: await s.token(userId) };
  }),
);

interface Done {
  userId: string;
  tool: string;
  answer: TerminalAnswer;
}
const done: Done[] = [];
const run = async (u: { userId: string; token: string }, tool: string, args: JsonObject) => {
  const answer = terminal(await s.agent.execute(tool, args, { token: u.token }));
  done.push({ userId: u.userId, tool, answer });
  return answer;
};

// Sleep lengths spread over the users: 20 executions, 100..670 ms.
const sleeps = Array.from({ length: 20 }, (_, i) => 100 + i * 30);

// Users run side by side; each keeps at most 4 requests open, under the per-user concurrency
// limit (8), so no answer here is RATE_LIMITED.
await Promise.all(
  users.map(async (u, n) => {
    const jobs: Array<() => Promise<unknown>> = [];
    for (let i = 0; i < 4; i++) jobs.push(() => run(u, 'noop', {}));
    jobs.push(() => run(u, 'flaky', { fail: true }));
    for (let i = 0; i < 3; i++) jobs.push(() => run(u, 'flaky', { fail: false }));
    jobs.push(() => run(u, 'fail', { message: 'upstream returned 503' }));
    jobs.push(() => run(u, 'admin_runtime_info', {}));
    jobs.push(() => run(u, 'no_such_tool', { x: 1 }));
    for (const ms of sleeps.filter((_, i) => i % users.length === n))
      jobs.push(() => run(u, 'sleep_idempotent', { ms }));
    jobs.push(async () => {
      await run(u, 'cached_echo', { k: 1 });
      await run(u, 'cached_echo', { k: 1 });
    });
    await mapLimit(jobs, 4, (job) => job());
  }),
);
if (done.some((d) => d.answer.status === 'failed' && d.answer.error.code === 'RATE_LIMITED'))
  throw new Error('the workload was rate limited: it should stay under the limits');
const badTokens = [
  await signToken('some-other-secret-0123456789abcdefghijklmnopqrst', { sub: 'mallory' }),
  await s.token('mallory', ['user'], Math.floor(Date.now() / 1000) - 5),
];
for (const token of badTokens) {
  const a = terminal(await s.agent.execute('noop', {}, { token }));
  if (a.status !== 'failed' || a.error.code !== 'UNAUTHENTICATED')
    throw new Error(`bad token not refused: ${JSON.stringify(a)}`);
}

const outcomeOf = (a: TerminalAnswer) =>
  a.status === 'completed' ? (a.cached ? 'cached' : 'completed') : a.error.code;
const REFUSALS = new Set(['FORBIDDEN', 'UNKNOWN_TOOL', 'RATE_LIMITED']);
// A tool name the registry does not know is counted under '(unknown)' (UNKNOWN_TOOL_LABEL), never
// under its own name: agents choose those names.
const metricsToolOf = (d: { tool: string; answer: TerminalAnswer }) =>
  d.answer.status === 'failed' && d.answer.error.code === 'UNKNOWN_TOOL' ? '(unknown)' : d.tool;
const tools = [...new Set(done.map(metricsToolOf))].sort();
const expectedFor = (tool: string) => {
  const mine = done.filter((d) => metricsToolOf(d) === tool);
  const codes: Record<string, number> = {};
  let completed = 0;
  let failed = 0;
  let refused = 0;
  let cached = 0;
  for (const { answer: a } of mine) {
    if (a.status === 'completed') {
      completed++;
      if (a.cached) cached++;
      continue;
    }
    codes[a.error.code] = (codes[a.error.code] ?? 0) + 1;
    if (REFUSALS.has(a.error.code)) refused++;
    else failed++;
  }
  return {
    total: mine.length,
    completed,
    failed,
    refused,
    cached,
    errorCodes: codes,
    errorRate: completed + failed === 0 ? null : failed / (completed + failed),
  };
};

/** Type-7 (linear interpolation) quantile of sorted values. */
const exactQuantile = (sorted: number[], p: number) => {
  const h = (sorted.length - 1) * p;
  const lo = Math.floor(h);
  return sorted[lo]! + (h - lo) * ((sorted[Math.min(lo + 1, sorted.length - 1)] ?? 0) - sorted[lo]!);
};

const stored: StoredEvent[] = [];

interface ToolMetrics {
  tool: string;
  total: number;
  completed: number;
  failed: number;
  refused: number;
  cached: number;
  errorRate: number | null;
  errorCodes: Record<string, number>;
  latencyMs: {
    count: number;
    mean: number | null;
    max: number | null;
    p50: number | null;
    p95: number | null;
    p99: number | null;
  };
}

t.before(async () => {
  for (const u of users) stored.push(...(await userEvents(s.store, u.userId)));
  const check = await projectorCaughtUp(s, pool, { expectedEvents: stored.length });
  if (!check.equal) throw new Error(`read models differ from a replay: ${check.differences.join('; ')}`);
});

t.test('the read models count exactly what the agents were answered', async (t) => {
  const { body } = await http<{ tools: ToolMetrics[] }>(`${s.url('projector')}/tools/metrics`, {
    token: users[0]!.token,
  });
  const { body: windowed } = await http<{ tools: ToolMetrics[] }>(
    `${s.url('projector')}/tools/metrics?from=${startedAt.toISOString()}&to=${new Date(Date.now() + 120_000).toISOString()}`,
    { token: users[0]!.token },
  );
  for (const tool of tools) {
    const m = body.tools.find((x) => x.tool === tool);
    const want = expectedFor(tool);
    t.ok(m, `${tool} has metrics`);
    if (!m) continue;
    t.same(
      {
        total: m.total,
        completed: m.completed,
        failed: m.failed,
        refused: m.refused,
        cached: m.cached,
        errorRate: m.errorRate,
        errorCodes: m.errorCodes,
      },
      want,
      `${tool}: ${JSON.stringify(want)}`,
    );
    const w = windowed.tools.find((x) => x.tool === tool);
    t.same(w, m, `${tool}: the per-minute rows over the test's window add up to the all-time row`);
  }
  t.equal(body.tools.find((x) => x.tool === 'flaky')?.errorRate, 0.25, 'flaky failed 1 in 4 runs');
  t.equal(body.tools.find((x) => x.tool === 'fail')?.errorRate, 1, 'fail always fails');
  t.equal(body.tools.find((x) => x.tool === 'noop')?.errorRate, 0, 'noop never fails');
});

t.test('latency in the read models matches the durations the agents were told', async (t) => {
  const { body } = await http<{ tools: ToolMetrics[] }>(
    `${s.url('projector')}/tools/metrics?tool=sleep_idempotent`,
    {
      token: users[1]!.token,
    },
  );
  const m = body.tools[0]!;
  const told = done
    .filter((d) => d.tool === 'sleep_idempotent')
    .map((d) => (d.answer.status === 'completed' ? d.answer.durationMs : NaN))
    .sort((a, b) => a - b);
  t.equal(told.length, sleeps.length, 'every sleep completed');
  t.ok(
    told.every((d, i) => d >= [...sleeps].sort((a, b) => a - b)[i]! - 1),
    'each took at least as long as asked',
  );
  t.equal(m.latencyMs.count, told.length, 'latency count = executions');
  t.equal(m.latencyMs.max, told[told.length - 1], 'max = the longest duration told');
  const mean = told.reduce((a, b) => a + b, 0) / told.length;
  t.ok(Math.abs(m.latencyMs.mean! - mean) < 0.01, `mean ${m.latencyMs.mean} = ${mean.toFixed(3)}`);
  for (const [name, p] of [
    ['p50', 0.5],
    ['p95', 0.95],
    ['p99', 0.99],
  ] as const) {
    const exact = exactQuantile(told, p);
    const got = m.latencyMs[name]!;
    t.ok(
      Math.abs(got - exact) <= 0.2 * exact,
      `${name} ${got} is within the bucket accuracy of ${exact.toFixed(1)}`,
    );
  }
  // The API rounds quantiles to 0.001 ms and reports max unrounded, so allow that rounding.
  const { p50, p95, p99, max } = m.latencyMs;
  t.ok(
    p50! <= p95! && p95! <= p99! && p99! <= max! + 0.0005,
    `p50 ≤ p95 ≤ p99 ≤ max (${p50}, ${p95}, ${p99}, ${max})`,
  );
});

t.test("each user's activity matches their answers", async (t) => {
  for (const u of users) {
    const mine = done.filter((d) => d.userId === u.userId);
    const { body } = await http<Record<string, number>>(`${s.url('projector')}/users/${u.userId}/activity`, {
      token: u.token,
    });
    t.same(
      {
        executions: body['executions'],
        completed: body['completed'],
        failed: body['failed'],
        refused: body['refused'],
        inFlight: body['inFlight'],
        events: body['events'],
      },
      {
        executions: mine.length,
        completed: mine.filter((d) => d.answer.status === 'completed').length,
        failed: mine.filter((d) => d.answer.status === 'failed' && !REFUSALS.has(d.answer.error.code)).length,
        refused: mine.filter((d) => d.answer.status === 'failed' && REFUSALS.has(d.answer.error.code)).length,
        inFlight: 0,
        events: stored.filter((e) => e.event.metadata.userId === u.userId).length,
      },
      `${u.userId}: activity as answered`,
    );
  }
});

t.test("the dispatcher's Prometheus endpoint counts every answer", async (t) => {
  const text = await metricsText(s.url('dispatcher'));
  const tally = new Map<string, number>();
  for (const d of done) {
    // A tool name the dispatcher does not know is labelled '(unknown)': agents choose those names,
    // and a label per name would let them grow the metric without bound.
    const tool =
      d.answer.status === 'failed' && d.answer.error.code === 'UNKNOWN_TOOL' ? '(unknown)' : d.tool;
    const key = `${tool}|${outcomeOf(d.answer)}`;
    tally.set(key, (tally.get(key) ?? 0) + 1);
  }
  for (const [key, n] of tally) {
    const [tool, outcome] = key.split('|') as [string, string];
    t.equal(
      metricSum(text, 'toolbus_executions_total', { tool, outcome }),
      n,
      `toolbus_executions_total{tool="${tool}",outcome="${outcome}"} = ${n}`,
    );
  }
  t.equal(
    metricSum(text, 'toolbus_executions_total'),
    done.length,
    `and nothing else (${done.length} in all)`,
  );
  t.equal(metricSum(text, 'toolbus_unauthenticated_total'), badTokens.length, 'bad tokens are counted apart');
  t.equal(metricSum(text, 'toolbus_executions_in_flight'), 0, 'nothing in flight');

  const told = done
    .filter((d) => d.tool === 'sleep_idempotent')
    .map((d) => (d.answer.status === 'completed' ? d.answer.durationMs / 1000 : NaN));
  const h = { tool: 'sleep_idempotent', outcome: 'completed' };
  t.equal(
    metricSum(text, 'toolbus_execution_duration_seconds_count', h),
    told.length,
    'the latency histogram holds every sleep',
  );
  t.ok(
    metricSum(text, 'toolbus_execution_duration_seconds_sum', h) >= told.reduce((a, b) => a + b, 0) - 0.001,
    'its sum is at least the time the tools took',
  );
  for (const b of samples(text, 'toolbus_execution_duration_seconds_bucket').filter(
    (x) => x.labels['tool'] === h.tool && x.labels['outcome'] === h.outcome,
  )) {
    const le = b.labels['le'] === '+Inf' ? Infinity : Number(b.labels['le']);
    const atMost = told.filter((d) => d <= le).length;
    if (b.value > atMost)
      t.fail(`bucket le=${b.labels['le']} has ${b.value}, but only ${atMost} tools finished that fast`);
  }
  t.pass('no bucket reports an execution faster than its tool ran');
});

t.test("the projector's Prometheus endpoint counts every applied event", async (t) => {
  const byType: Record<string, number> = {};
  for (const e of stored) byType[e.event.type] = (byType[e.event.type] ?? 0) + 1;
  await waitUntil(
    'the lag gauge to reach 0',
    async () => metricSum(await metricsText(s.url('projector')), 'toolbus_projector_lag_events') === 0,
    20_000,
    250,
  );
  const text = await metricsText(s.url('projector'));
  for (const [type, n] of Object.entries(byType)) {
    t.equal(metricSum(text, 'toolbus_projector_events_applied_total', { type }), n, `${type}: ${n} applied`);
  }
  t.equal(metricSum(text, 'toolbus_projector_events_skipped_total'), 0, 'none skipped');
  t.equal(metricSum(text, 'toolbus_projector_active'), 1, 'the projector is active');
  t.equal(metricSum(text, 'toolbus_projector_lag_seconds'), 0, 'and not behind');
});
