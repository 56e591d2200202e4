/**
 * Scenario 7 — request-scoped isolation: nothing one request sets is visible to another.
 *
 * Proves, against the running stack: many requests of several users, interleaved and in flight at
 * the same time, each with its own payload and correlation id, each get back exactly their own
 * payload; every stored event of an execution carries only that request's data and ids; progress
 * goes only to the agent that asked; the result cache is keyed per user (two users sending the
 * same arguments each get their own run, one user sending them again gets their own cached run);
 * and the same request id used by two users names two separate executions with separate answers.
 */
import { randomBytes } from 'node:crypto';
import t from 'tap';
import { canonicalJson, type JsonObject } from '../../contracts/index.ts';
import type { InterimAnswer, TerminalAnswer } from '../../lib/clients/agent.ts';
import { startTestStack } from '../support/stack.ts';
import { eventsOf, mapLimit, newUserId, redisDump, terminal, userEvents, waitUntil } from './support.ts';

const s = await startTestStack(t);

const users = await Promise.all(
  Array.from({ length: 6 }, async (_, i) => {
    const userId = newUserId(`iso${i}`);
    return { userId, token: await s.token(userId) };
  }),
);

interface Req {
  user: (typeof users)[number];
  tool: 'echo' | 'cached_echo' | 'progress';
  payload: string;
  correlationId: string;
  requestId: string;
  answer?: TerminalAnswer;
  progress: InterimAnswer[];
}

t.test('interleaved requests each see only their own data', async (t) => {
  const reqs: Req[] = [];
  for (let k = 0; k < 8; k++) {
    for (const user of users) {
      const payload = `P-${user.userId}-${k}-${randomBytes(6).toString('hex')}`;
      reqs.push({
        user,
        tool: (['echo', 'cached_echo', 'progress'] as const)[k % 3]!,
        payload,
        correlationId: `corr-${payload}`,
        requestId: `req-${payload}`,
        progress: [],
      });
    }
  }
  // All users at once, each with up to 6 requests open (under the per-user limit of 8).
  await Promise.all(
    users.map((u) =>
      mapLimit(
        reqs.filter((r) => r.user === u),
        6,
        async (r) => {
          const args: JsonObject =
            r.tool === 'progress'
              ? { steps: 3, delayMs: 30 }
              : r.tool === 'echo'
                ? { payload: r.payload, secret: r.payload }
                : { payload: r.payload };
          r.answer = terminal(
            await s.agent.execute(r.tool, args, {
              token: u.token,
              requestId: r.requestId,
              correlationId: r.correlationId,
              onProgress: (a) => r.progress.push(a),
            }),
          );
        },
      ),
    ),
  );

  const others = (r: Req) => reqs.filter((o) => o !== r).map((o) => o.payload);
  const problems: string[] = [];
  for (const r of reqs) {
    const a = r.answer!;
    if (a.status !== 'completed') {
      problems.push(`${r.requestId}: ${JSON.stringify(a)}`);
      continue;
    }
    const text = JSON.stringify(a);
    if (a.correlationId !== r.correlationId || a.requestId !== r.requestId)
      problems.push(`${r.requestId}: the answer has other ids`);
    if (
      r.tool === 'echo' &&
      canonicalJson(a.result) !== canonicalJson({ payload: r.payload, secret: '[REDACTED]' })
    )
      problems.push(`${r.requestId}: echo returned ${text}`);
    if (
      r.tool === 'cached_echo' &&
      canonicalJson((a.result as { args: unknown }).args) !== canonicalJson({ payload: r.payload })
    )
      problems.push(`${r.requestId}: cached_echo returned ${text}`);
    if (others(r).some((p) => text.includes(p))) problems.push(`${r.requestId}: another request's payload`);
    if (r.progress.some((p) => p.executionId !== a.executionId || p.correlationId !== r.correlationId))
      problems.push(`${r.requestId}: progress of another execution`);
    if (r.tool === 'progress' && !r.progress.some((p) => p.status === 'progress'))
      problems.push(`${r.requestId}: no progress of its own`);
  }
  t.same(problems, [], `all ${reqs.length} answers carry only their own request's data and progress`);

  let eventsClean = 0;
  for (const u of users) {
    const events = await userEvents(s.store, u.userId);
    for (const r of reqs.filter((x) => x.user === u)) {
      const mine = eventsOf(events, r.answer!.executionId!);
      const text = JSON.stringify(mine.map((e) => e.event));
      const ok =
        mine.length === 3 &&
        mine.every(
          (e) =>
            e.event.metadata.requestId === r.requestId && e.event.metadata.correlationId === r.correlationId,
        ) &&
        (r.tool === 'progress' || text.includes(r.payload)) &&
        !others(r).some((p) => text.includes(p));
      if (ok) eventsClean++;
      else t.fail(`${r.requestId}'s events: ${text.slice(0, 400)}`);
    }
  }
  t.equal(
    eventsClean,
    reqs.length,
    'every stored execution carries only its own request id, correlation id and data',
  );
});

t.test('the result cache is keyed per user', async (t) => {
  const [a, b] = users as [(typeof users)[0], (typeof users)[0]];
  const shared = { question: 'what is our Q3 cloud spend?', at: 'same-args-for-everyone' };
  const [fromA, fromB] = await Promise.all([
    s.agent.execute('cached_echo', shared, { token: a.token }).then(terminal),
    s.agent.execute('cached_echo', shared, { token: b.token }).then(terminal),
  ]);
  const runOf = (x: TerminalAnswer) =>
    x.status === 'completed' ? (x.result as { runId: string }).runId : null;
  t.ok(fromA.status === 'completed' && !fromA.cached, 'A runs the tool');
  t.ok(fromB.status === 'completed' && !fromB.cached, 'B runs it too: nothing of A is reused for B');
  t.not(runOf(fromA), runOf(fromB), 'two different runs');
  await waitUntil(
    'both cache entries',
    async () =>
      (await redisDump(s.redis.url)).filter(
        (r) => r.key.startsWith(`tb:{${a.userId}}:r:`) || r.key.startsWith(`tb:{${b.userId}}:r:`),
      ).length >= 2,
  );
  const c = users[2]!;
  const [againA, againB, firstC] = await Promise.all([
    s.agent.execute('cached_echo', shared, { token: a.token }).then(terminal),
    s.agent.execute('cached_echo', shared, { token: b.token }).then(terminal),
    s.agent.execute('cached_echo', shared, { token: c.token }).then(terminal),
  ]);
  t.ok(againA.status === 'completed' && againA.cached, "A's repeat comes from A's cache");
  t.equal(runOf(againA), runOf(fromA), "with A's own run");
  t.ok(againB.status === 'completed' && againB.cached, "B's repeat comes from B's cache");
  t.equal(runOf(againB), runOf(fromB), "with B's own run");
  t.ok(firstC.status === 'completed' && !firstC.cached, 'C, asking the same, gets a fresh run');
  t.notOk([runOf(fromA), runOf(fromB)].includes(runOf(firstC)), "never A's or B's");
  const keys = (await redisDump(s.redis.url))
    .filter((r) => r.key.includes(':r:cached_echo@'))
    .map((r) => r.key);
  t.ok(
    keys.every((k) => /^tb:\{[A-Za-z0-9_-]+\}:r:cached_echo@1\.0\.0:[0-9a-f]{64}$/.test(k)),
    'every cache key names its user',
  );
});

t.test('the same request id from two users is two executions', async (t) => {
  const [a, b] = [users[3]!, users[4]!];
  const requestId = 'report-2024-q3';
  const [fromA, fromB] = await Promise.all([
    s.agent.execute('echo', { owner: a.userId }, { token: a.token, requestId }).then(terminal),
    s.agent.execute('echo', { owner: b.userId }, { token: b.token, requestId }).then(terminal),
  ]);
  t.not(fromA.executionId, fromB.executionId, 'two execution ids');
  t.same(fromA.status === 'completed' ? fromA.result : null, { owner: a.userId }, 'A gets A’s result');
  t.same(fromB.status === 'completed' ? fromB.result : null, { owner: b.userId }, 'B gets B’s result');
  const again = terminal(await s.agent.execute('echo', { owner: a.userId }, { token: a.token, requestId }));
  t.same(again, fromA, "A's retry gets A's first answer, not B's and not a new run");
  const reused = terminal(
    await s.agent.execute('echo', { owner: 'someone-else' }, { token: a.token, requestId }),
  );
  t.match(
    reused,
    { status: 'failed', executionId: null, error: { code: 'IDEMPOTENCY_CONFLICT' } },
    "A's request id with other arguments: refused, neither A's answer nor B's nor a new run",
  );
});
