/**
 * Scenario 5 — persistence: the event store is the record, the read models follow it.
 *
 * Proves, against the running stack: every answered execution is in its user's stream with
 * exactly one terminal event that matches the answer (status, result or error code); each stream's
 * revisions are contiguous and its hash chain verifies; the projector's PostgreSQL read models
 * equal a from-scratch replay of the store (services/projector/replay.ts compareWithReplay), with
 * one row per stored execution. It still holds after the dispatcher and the projector are
 * restarted (SIGTERM), after the projector is killed (SIGKILL) while requests are running, and
 * retried request ids keep their first answer across the restart without being run again.
 */
import t from 'tap';
import { verifyChain, type JsonObject } from '../../contracts/index.ts';
import type { TerminalAnswer } from '../../lib/clients/agent.ts';
import { startTestStack } from '../support/stack.ts';
import {
  dbPool,
  eventsOf,
  newUserId,
  projectorCaughtUp,
  terminal,
  userEvents,
  type StoredEvent,
  type Tap,
} from './support.ts';

const s = await startTestStack(t);
const pool = dbPool(t, s);

const users = await Promise.all(
  Array.from({ length: 4 }, async (_, i) => {
    const userId = newUserId(`persist${i}`);
    return { userId, token: await s.token(userId) };
  }),
);

interface Sent {
  userId: string;
  token: string;
  tool: string;
  args: JsonObject;
  requestId: string;
  answer: TerminalAnswer;
}
const sent: Sent[] = [];

/** One round: every user runs a mix of completed, failed, refused and cached executions at once. */
async function round(label: string): Promise<Sent[]> {
  const jobs = users.flatMap((u) =>
    (
      [
        ['echo', { round: label, who: u.userId }],
        ['noop', {}],
        ['fail', { message: `round ${label} failure` }],
        ['cached_echo', { fixed: u.userId }],
        ['admin_runtime_info', {}],
        ['sleep_idempotent', { ms: 200 }],
      ] as const
    ).map(([tool, args], k) => ({ ...u, tool, args: args, requestId: `${label}-${u.userId}-${k}` })),
  );
  const done = await Promise.all(
    jobs.map(async (j) => ({
      ...j,
      answer: terminal(await s.agent.execute(j.tool, j.args, { token: j.token, requestId: j.requestId })),
    })),
  );
  sent.push(...done);
  return done;
}

const storedCount = async () =>
  (await Promise.all(users.map((u) => userEvents(s.store, u.userId)))).reduce((n, e) => n + e.length, 0);

async function checkRecord(t: Tap, when: string) {
  // Per-stream reads see every committed event at once (see projectorCaughtUp for the global read).
  const all: StoredEvent[] = [];
  for (const u of users) {
    const events = await userEvents(s.store, u.userId);
    all.push(...events);
    t.same(
      events.map((e) => e.revision),
      events.map((_, i) => i),
      `${when}: ${u.userId}'s revisions are contiguous from 0 (${events.length})`,
    );
    t.equal(verifyChain(events.map((e) => e.event)), null, `${when}: ${u.userId}'s hash chain verifies`);
    for (const x of sent.filter((x) => x.userId === u.userId)) {
      const mine = eventsOf(events, x.answer.executionId!);
      const terminals = mine.filter((e) => e.event.type === 'ToolCompleted' || e.event.type === 'ToolFailed');
      if (terminals.length !== 1) {
        t.fail(`${when}: ${x.requestId} has ${terminals.length} terminal events`);
        continue;
      }
      const end = terminals[0]!.event;
      if (x.answer.status === 'completed') {
        if (
          end.type !== 'ToolCompleted' ||
          JSON.stringify(end.data.result) !== JSON.stringify(x.answer.result)
        )
          t.fail(`${when}: ${x.requestId} answered completed, stored ${end.type}`);
      } else if (end.type !== 'ToolFailed' || end.data.error.code !== x.answer.error.code) {
        t.fail(`${when}: ${x.requestId} answered ${x.answer.error.code}, stored ${end.type}`);
      }
    }
  }
  t.pass(`${when}: all ${sent.length} answers are recorded exactly once, as answered`);

  const check = await projectorCaughtUp(s, pool, { expectedEvents: all.length });
  t.ok(
    check.equal,
    `${when}: read models equal a replay of the store${check.equal ? '' : `: ${check.differences.slice(0, 5).join('; ')}`}`,
  );
  t.equal(
    check.checkpointEvents,
    all.length,
    `${when}: the checkpoint counts every stored event (${all.length})`,
  );
  const executions = new Set(all.map((e) => e.event.metadata.executionId));
  const { rows } = await pool.query<{ n: number; events: number }>(
    'select count(*)::int as n, sum(event_count)::int as events from projection.executions',
  );
  t.equal(
    rows[0]?.n,
    executions.size,
    `${when}: one execution row per stored execution (${executions.size})`,
  );
  t.equal(rows[0]?.events, all.length, `${when}: the rows account for every event once`);
  const { rows: byStatus } = await pool.query<{ status: string; n: number }>(
    'select status, count(*)::int as n from projection.executions group by status order by status',
  );
  const answered = { completed: 0, failed: 0 };
  for (const x of new Map(sent.map((x) => [x.answer.executionId, x])).values()) answered[x.answer.status]++;
  t.same(
    Object.fromEntries(byStatus.map((r) => [r.status, r.n])),
    answered,
    `${when}: the read model's statuses match the answers`,
  );
}

t.test('before any restart', async (t) => {
  const done = await round('r1');
  t.equal(
    done.filter((d) => d.answer.status === 'completed').length,
    users.length * 4,
    'echo, noop, cached_echo, sleep completed',
  );
  t.ok(
    done.filter((d) => d.tool === 'admin_runtime_info').every((d) => d.answer.status === 'failed'),
    'admin tool refused',
  );
  await checkRecord(t, 'before restarts');
});

t.test('after restarting the dispatcher and the projector', async (t) => {
  const before = await storedCount();
  await s.stack.restart('dispatcher');
  await s.stack.restart('projector');
  const firstRound = sent.filter((x) => x.requestId.startsWith('r1-'));
  const retried = await Promise.all(
    firstRound.map(async (x) =>
      terminal(await s.agent.execute(x.tool, x.args, { token: x.token, requestId: x.requestId })),
    ),
  );
  t.same(
    retried,
    firstRound.map((x) => x.answer),
    'retries of the first round get their first answers from the restarted dispatcher',
  );
  t.equal(await storedCount(), before, 'and nothing was run or recorded again');
  await round('r2');
  await checkRecord(t, 'after SIGTERM restarts');
});

t.test('after killing the projector while requests run', async (t) => {
  const running = round('r3');
  await new Promise((r) => setTimeout(r, 300));
  await s.stack.kill('projector', 'SIGKILL');
  const r4 = round('r4');
  await running;
  await s.stack.start('projector');
  await r4;
  await round('r5');
  await checkRecord(t, 'after a projector SIGKILL');
});
