/**
 * Scenario 8 — well over 100 executions at once, across many users.
 *
 * Proves, against the running stack: 144 requests from 12 users sent at the same moment (120 of
 * them tools that take 3 s, so they really run side by side — at least 100 are in the middle of
 * running at one instant, as the recorded start and end times show) all complete; every event is
 * stored exactly once — each user's revisions are contiguous, every event id is unique, each
 * execution has one ToolRequested, one ToolExecuting and one terminal event, and the hash chains
 * verify; every user's socket receives each of their events once, in order; the read models equal
 * a replay and hold one row per execution.
 *
 * The stack runs with USER_CONCURRENCY=16 and DISPATCH_CONCURRENCY=200 so that the per-user limit
 * (default 8) and the dispatcher's slot count (default 64) do not turn this into a queue.
 */
import t from 'tap';
import { verifyChain } from '../../contracts/index.ts';
import type { TerminalAnswer } from '../../lib/clients/agent.ts';
import { subscribe, type TestClient } from '../../services/notifier/test-client.ts';
import { startTestStack } from '../support/stack.ts';
import {
  dbPool,
  eventsOf,
  newUserId,
  projectorCaughtUp,
  terminal,
  typesOf,
  userEvents,
  type StoredEvent,
} from './support.ts';

const s = await startTestStack(t, { env: { USER_CONCURRENCY: '16', DISPATCH_CONCURRENCY: '200' } });
const pool = dbPool(t, s);

const USERS = 12;
const SLEEPS_PER_USER = 10;
const QUICK_PER_USER = 2;
const SLEEP_MS = 3_000;

const users: Array<{ userId: string; token: string; socket: TestClient }> = [];
for (let i = 0; i < USERS; i++) {
  const userId = newUserId(`load${i}`);
  const token = await s.token(userId);
  const socket = await subscribe(s.url('notifier'), token);
  t.teardown(() => socket.ws.close());
  users.push({ userId, token, socket });
}

interface Sent {
  userId: string;
  requestId: string;
  answer: TerminalAnswer;
}

// Round-robin over users so that every user has requests early and late in the burst.
const jobs: Array<{
  u: (typeof users)[number];
  tool: string;
  args: Record<string, number>;
  requestId: string;
}> = [];
for (let k = 0; k < SLEEPS_PER_USER + QUICK_PER_USER; k++) {
  for (const u of users) {
    const quick = k >= SLEEPS_PER_USER;
    jobs.push({
      u,
      tool: quick ? 'noop' : 'sleep_idempotent',
      args: quick ? {} : { ms: SLEEP_MS },
      requestId: `burst-${u.userId}-${k}`,
    });
  }
}
const sent: Sent[] = await Promise.all(
  jobs.map(async (j) => ({
    userId: j.u.userId,
    requestId: j.requestId,
    answer: terminal(
      await s.agent.execute(j.tool, j.args, { token: j.u.token, requestId: j.requestId, timeoutMs: 90_000 }),
    ),
  })),
);

t.test(`all ${jobs.length} executions complete`, async (t) => {
  const failed = sent.filter((x) => x.answer.status !== 'completed');
  t.same(
    failed.map((x) => x.answer),
    [],
    'none failed',
  );
  t.equal(new Set(sent.map((x) => x.answer.executionId)).size, jobs.length, 'each has its own execution id');
});

const streams = new Map<string, StoredEvent[]>();
t.before(async () => {
  for (const u of users) streams.set(u.userId, await userEvents(s.store, u.userId));
});

t.test('every event is stored exactly once', async (t) => {
  const ids = new Set<string>();
  let total = 0;
  for (const u of users) {
    const events = streams.get(u.userId)!;
    total += events.length;
    for (const e of events) ids.add(e.event.id);
    t.same(
      events.map((e) => e.revision),
      events.map((_, i) => i),
      `${u.userId}: revisions 0..${events.length - 1}, no gap`,
    );
    t.equal(verifyChain(events.map((e) => e.event)), null, `${u.userId}: the hash chain verifies`);
    const mine = sent.filter((x) => x.userId === u.userId);
    const executions = new Set(events.map((e) => e.event.metadata.executionId));
    t.equal(executions.size, mine.length, `${u.userId}: one execution per request, no extra`);
    const bad = mine.filter(
      (x) =>
        typesOf(eventsOf(events, x.answer.executionId!)).join() !==
        'ToolRequested,ToolExecuting,ToolCompleted',
    );
    t.same(
      bad.map((x) => x.requestId),
      [],
      `${u.userId}: each execution is requested, executing, completed — once each`,
    );
  }
  t.equal(ids.size, total, `all ${total} event ids are unique`);
  t.equal(total, jobs.length * 3, 'three events per execution, nothing more');
});

t.test('at least 100 ran at the same time', async (t) => {
  const points: Array<[number, number]> = [];
  for (const events of streams.values()) {
    for (const e of events) {
      if (e.event.type === 'ToolExecuting') points.push([Date.parse(e.event.metadata.occurredAt), +1]);
      if (e.event.type === 'ToolCompleted') points.push([Date.parse(e.event.metadata.occurredAt), -1]);
    }
  }
  points.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let running = 0;
  let peak = 0;
  for (const [, d] of points) peak = Math.max(peak, (running += d));
  t.ok(peak >= 100, `${peak} executions were running at one instant (recorded start and end times)`);
});

t.test("each user's socket receives each of their events once, in order", async (t) => {
  for (const u of users) {
    const n = streams.get(u.userId)!.length;
    await u.socket.waitFor(`${u.userId}'s ${n} events`, () => u.socket.events().length >= n, 30_000);
    t.same(
      u.socket.revisions(),
      Array.from({ length: n }, (_, i) => i),
      `${u.userId}: ${n} events, revisions in order, none twice`,
    );
    t.same(
      u.socket.events().map((e) => e.event.id),
      streams.get(u.userId)!.map((e) => e.event.id),
      `${u.userId}: the stored events`,
    );
    t.ok(
      u.socket.events().every((e) => e.userId === u.userId),
      `${u.userId}: only their own`,
    );
  }
});

t.test('the read models hold every execution once', async (t) => {
  const total = [...streams.values()].reduce((n, e) => n + e.length, 0);
  const check = await projectorCaughtUp(s, pool, { expectedEvents: total });
  t.ok(check.equal, `equal to a replay ${check.differences.slice(0, 3).join('; ')}`);
  const { rows } = await pool.query<{ n: number; completed: number; events: number }>(
    `select count(*)::int as n, count(*) filter (where status = 'completed')::int as completed,
            sum(event_count)::int as events from projection.executions`,
  );
  t.same(
    rows[0],
    { n: jobs.length, completed: jobs.length, events: total },
    `${jobs.length} rows, all completed, ${total} events`,
  );
});
