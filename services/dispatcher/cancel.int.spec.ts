import { setTimeout as sleep } from 'node:timers/promises';
import { headers } from '@nats-io/transport-node';
import { pino } from 'pino';
import t from 'tap';
import { z } from 'zod';
import { executionIdFor, subjects, type AgentAnswer, type ToolEvent } from '../../contracts/index.ts';
import { connectionIdentity } from '../../lib/nats.ts';
import { cancelExecution, type CancelResult } from '../../lib/clients/agent.ts';
import { defineTool, serveTools } from '../../lib/tools/index.ts';
import { recordExecution } from '../../test/support/events.ts';
import type { RunningDispatcher } from './app.ts';
import { handleExecution } from './commands.ts';
import { UserStreams } from './streams.ts';
import { eventually, harness, type Harness } from './test/harness.ts';

/**
 * Cancellation (a recorded ToolCancelRequested, then the end) against a real NATS, Redis and PostgreSQL: by the agent (NATS) and by the user
 * (HTTP), of running, waiting, finished, unknown and orphaned executions, on one or two dispatcher
 * instances and on a tool worker; and a cancel racing the tool's own completion, many times.
 */

/** Every execution whose tool saw its signal fire, and why. */
const aborts: Array<{ executionId: string; reason: string }> = [];
const waitRun = async (ms: number, ctx: { signal: AbortSignal; executionId: string }) => {
  try {
    await sleep(ms, undefined, { signal: ctx.signal });
  } catch (e) {
    aborts.push({
      executionId: ctx.executionId,
      reason: (ctx.signal.reason as Error | undefined)?.name ?? '?',
    });
    throw e;
  }
  return { waited: ms };
};
const Wait = z.object({ ms: z.number().int().min(0).max(60_000) });
const Waited = z.object({ waited: z.number() });
const watched = defineTool({
  name: 'watched_wait',
  version: '1.0.0',
  description: 'Test tool: waits `ms`, and records it when its signal fires.',
  input: Wait,
  output: Waited,
  timeoutMs: 60_000,
  idempotent: true,
  run: (args, ctx) => waitRun(args.ms, ctx),
});
const remoteWatched = defineTool({
  name: 'remote_watched_wait',
  version: '1.0.0',
  description: 'Test tool on a worker: waits `ms`, and records it when its signal fires.',
  input: Wait,
  output: Waited,
  timeoutMs: 60_000,
  run: (args, ctx) => waitRun(args.ms, ctx),
});

const options = { tools: [watched] };

/** Starts an execution through the agent client; `executing` resolves once the tool runs. */
function run(h: Harness, token: string, requestId: string, tool: string, args: Record<string, unknown>) {
  let started!: () => void;
  const executing = new Promise<void>((resolve) => (started = resolve));
  const answer = h.agent.execute(tool, args as never, {
    token,
    requestId,
    timeoutMs: 60_000,
    onProgress: (a) => {
      if (a.status === 'executing') started();
    },
  });
  answer.catch(() => undefined);
  return { answer, executing };
}

const eventsOf = async (h: Harness, userId: string, requestId: string): Promise<ToolEvent[]> =>
  (await h.events(userId)).filter((e) => e.metadata.requestId === requestId);
const typesOf = (events: ToolEvent[]) => events.map((e) => e.type);
const isCancelled = (a: AgentAnswer | null | undefined) =>
  a?.status === 'failed' && a.error.code === 'CANCELLED';

const cancelHttp = async (
  d: RunningDispatcher,
  token: string,
  executionId: string,
  userId?: string,
  body?: Record<string, unknown>,
) => {
  const res = await d.app.inject({
    method: 'POST',
    url: `/executions/${executionId}/cancel${userId ? `?userId=${userId}` : ''}`,
    headers: { authorization: `Bearer ${token}` },
    ...(body ? { payload: body } : {}),
  });
  return { status: res.statusCode, body: res.json<CancelResult>() };
};

t.test('a running tool is cancelled by its agent: its signal fires, it ends CANCELLED once', async (t) => {
  const h = await harness(t);
  await h.start({}, options);
  const token = await h.token('alice');
  const r = run(h, token, 'c-run', 'watched_wait', { ms: 30_000 });
  await r.executing;
  const executionId = executionIdFor('alice', 'c-run');

  const result = await h.agent.cancel({ requestId: 'c-run' }, { token });
  t.match(result, {
    executionId,
    requestId: 'c-run',
    cancelled: true,
    status: 'failed',
    answer: {
      status: 'failed',
      error: {
        code: 'CANCELLED',
        details: { cancelledBy: 'alice', admin: false, reason: 'asked through nats' },
      },
    },
  });
  const answer = await r.answer;
  t.strictSame(answer, result.answer, 'the agent waiting for it gets the same CANCELLED answer');
  t.strictSame(
    aborts.filter((a) => a.executionId === executionId),
    [{ executionId, reason: 'ToolCancelledError' }],
    'the tool saw its signal fire',
  );
  const events = await eventsOf(h, 'alice', 'c-run');
  t.strictSame(typesOf(events), ['ToolRequested', 'ToolExecuting', 'ToolCancelRequested', 'ToolFailed']);
  t.match(
    events[2],
    { data: { by: { userId: 'alice', admin: false }, reason: 'asked through nats' } },
    'the cancel is recorded',
  );
  const failed = events[3]!;
  t.ok(
    failed.type === 'ToolFailed' && failed.data.durationMs !== null && failed.data.durationMs < 30_000,
    'it stopped long before it would have finished',
  );

  // Again, by execution id this time: it has ended, nothing changes.
  const again = await h.agent.cancel(executionId, { token });
  t.match(again, { cancelled: false, status: 'failed', message: /already been cancelled/ });
  t.strictSame(again.answer, answer);
  t.equal((await eventsOf(h, 'alice', 'c-run')).length, 4, 'no event was added');

  // The same through HTTP: the sleep tool ends early.
  const s = run(h, token, 'c-http', 'sleep', { ms: 4_000 });
  await s.executing;
  const byHttp = await cancelHttp(h.dispatchers[0]!, token, executionIdFor('alice', 'c-http'));
  t.equal(byHttp.status, 200);
  t.match(byHttp.body, {
    cancelled: true,
    status: 'failed',
    answer: { error: { code: 'CANCELLED', details: { reason: 'asked through http' } } },
  });
  t.ok(isCancelled(await s.answer));
  t.strictSame(typesOf(await eventsOf(h, 'alice', 'c-http')), [
    'ToolRequested',
    'ToolExecuting',
    'ToolCancelRequested',
    'ToolFailed',
  ]);
});

t.test('a cancel may say why: the reason is recorded; a bad one is refused', async (t) => {
  const h = await harness(t);
  const d = await h.start({}, options);
  const token = await h.token('rhea');
  const r = run(h, token, 'why-1', 'watched_wait', { ms: 30_000 });
  await r.executing;
  for (const reason of ['', '   ', 'x'.repeat(501)]) {
    t.match(
      await h.agent.cancel({ requestId: 'why-1', reason }, { token }),
      { cancelled: false, status: 'refused', error: { code: 'MALFORMED' } },
      `over NATS, reason of ${reason.length} characters: refused`,
    );
    t.match(
      await cancelHttp(d, token, executionIdFor('rhea', 'why-1'), undefined, { reason }),
      { status: 400, body: { status: 'refused', error: { code: 'MALFORMED', message: /reason/ } } },
      `over HTTP, reason of ${reason.length} characters: refused`,
    );
  }
  t.equal((await eventsOf(h, 'rhea', 'why-1')).length, 2, 'nothing recorded by the refusals');
  const result = await h.agent.cancel(
    { requestId: 'why-1', reason: '  the user closed the tab ' },
    { token },
  );
  t.match(result, {
    cancelled: true,
    answer: { error: { code: 'CANCELLED', details: { reason: 'the user closed the tab' } } },
  });
  t.match((await eventsOf(h, 'rhea', 'why-1'))[2], {
    type: 'ToolCancelRequested',
    data: { reason: 'the user closed the tab' },
  });
  await r.answer;
});

t.test('cancelling a finished or unknown execution is answered clearly and changes nothing', async (t) => {
  const h = await harness(t);
  const d = await h.start({}, options);
  const token = await h.token('carol');
  const done = await h.agent.execute('noop', {}, { token, requestId: 'f-done' });
  t.equal(done.status, 'completed');
  const before = (await h.events('carol')).length;

  // The answer can reach the agent a moment before its instance lets go of the execution: a cancel
  // then finds it still held there and is told it "completed before the cancel took effect".
  // Either way the cancel changed nothing and says so.
  const COMPLETED_UNCHANGED =
    /(had already completed|completed before the cancel took effect); nothing was changed/;
  const finished = await h.agent.cancel({ requestId: 'f-done' }, { token });
  t.match(finished, {
    cancelled: false,
    status: 'completed',
    requestId: 'f-done',
    message: COMPLETED_UNCHANGED,
  });
  t.strictSame(finished.answer, done);
  const finishedHttp = await cancelHttp(d, token, executionIdFor('carol', 'f-done').toUpperCase());
  t.equal(finishedHttp.status, 409, 'over HTTP: 409 (the id in upper case names the same execution)');
  t.match(finishedHttp.body, {
    cancelled: false,
    status: 'completed',
    answer: { status: 'completed' },
    error: { code: 'ALREADY_ENDED', message: COMPLETED_UNCHANGED },
  });

  const failed = await h.agent.execute('fail', {}, { token, requestId: 'f-failed' });
  t.match(await h.agent.cancel({ requestId: 'f-failed' }, { token }), {
    cancelled: false,
    status: 'failed',
    answer: { error: { code: 'TOOL_ERROR' } },
  });
  t.equal(failed.status, 'failed');

  const unknown = await h.agent.cancel({ requestId: 'never-sent' }, { token });
  t.match(unknown, { cancelled: false, status: 'unknown', answer: null, requestId: 'never-sent' });
  const unknownHttp = await cancelHttp(d, token, executionIdFor('carol', 'never-sent-either'));
  t.equal(unknownHttp.status, 404);
  t.equal(unknownHttp.body.status, 'unknown');
  // Named by its request id in the path: the answer names it back, as over NATS.
  const byRequestId = await cancelHttp(d, token, 'never-sent-at-all');
  t.equal(byRequestId.status, 404);
  t.match(byRequestId.body, {
    status: 'unknown',
    requestId: 'never-sent-at-all',
    executionId: executionIdFor('carol', 'never-sent-at-all'),
    message: /never-sent-at-all/,
  });
  t.equal((await h.events('carol')).length, before + 3, 'only the failed execution was added');

  // Malformed cancel requests are refused.
  const auth = headers();
  auth.set('Authorization', `Bearer ${token}`);
  const malformed = await h.nc.request(
    subjects.cancel('carol', connectionIdentity(h.nc)),
    JSON.stringify({ id: 'x' }),
    {
      timeout: 10_000,
      headers: auth,
    },
  );
  t.match(malformed.json(), { status: 'refused', error: { code: 'MALFORMED' } });
  const bad = await d.app.inject({
    method: 'POST',
    url: '/executions/not%20an%20id/cancel',
    headers: { authorization: `Bearer ${token}` },
  });
  t.equal(bad.statusCode, 400);
});

t.test('only the execution’s user, or an admin, may cancel it', async (t) => {
  const h = await harness(t);
  const d = await h.start({}, options);
  const alice = await h.token('alice');
  const bob = await h.token('bob');
  const root = await h.token('root', ['admin']);
  const r = run(h, alice, 'own-1', 'watched_wait', { ms: 30_000 });
  await r.executing;
  const executionId = executionIdFor('alice', 'own-1');

  const byBob = await cancelExecution(h.nc, { executionId }, { token: bob, userId: 'alice' });
  t.match(byBob, { cancelled: false, status: 'refused', error: { code: 'FORBIDDEN' } });
  const unauthenticated = await cancelExecution(
    h.nc,
    { executionId },
    { token: 'not-a-jwt', userId: 'alice' },
  );
  t.match(unauthenticated, { status: 'refused', error: { code: 'UNAUTHENTICATED' } });
  const bobHttp = await cancelHttp(d, bob, executionId, 'alice');
  t.equal(bobHttp.status, 403);
  const bobOwn = await cancelHttp(d, bob, executionId);
  t.equal(bobOwn.status, 404, "bob's own stream has no such execution");
  t.match(bobOwn.body, { status: 'unknown', error: { code: 'NOT_FOUND' } }, 'with the error shape of HTTP');
  const noToken = await d.app.inject({ method: 'POST', url: `/executions/${executionId}/cancel` });
  t.equal(noToken.statusCode, 401);
  t.match(
    noToken.json(),
    { cancelled: false, status: 'refused', error: { code: 'UNAUTHENTICATED' } },
    'a CancelResult, as every other answer of the route (not an agent answer)',
  );
  t.strictSame(
    typesOf(await eventsOf(h, 'alice', 'own-1')),
    ['ToolRequested', 'ToolExecuting'],
    'still running after the refused cancels',
  );

  // By the request id alice sent it with: the path names alice's execution of that request id.
  const byAdmin = await cancelHttp(d, root, 'own-1', 'alice');
  t.equal(byAdmin.status, 200, 'cancelled, named by its request id');
  t.equal(byAdmin.body.executionId, executionId);
  t.match(byAdmin.body, {
    cancelled: true,
    answer: {
      error: {
        code: 'CANCELLED',
        details: { cancelledBy: 'root', admin: true, reason: 'asked through http' },
      },
    },
  });
  t.ok(isCancelled(await r.answer));
});

t.test(
  'a cancel racing the completion: one terminal event, and the cancel answer agrees (50 times)',
  async (t) => {
    const h = await harness(t);
    await h.start({}, options);
    const token = await h.token('racer');
    const N = 40;
    const outcomes = { cancelled: 0, completed: 0 };
    for (let i = 0; i < 50; i++) {
      const requestId = `race-${i}`;
      const r = run(h, token, requestId, 'watched_wait', { ms: N });
      await r.executing;
      // From "well before" to "well after" the tool's own end.
      await sleep(Math.round((i % 10) * ((2 * N) / 9)));
      const result = await h.agent.cancel({ requestId }, { token });
      const answer = await r.answer;
      const events = await eventsOf(h, 'racer', requestId);
      const terminals = events.filter((e) => e.type === 'ToolCompleted' || e.type === 'ToolFailed');
      t.equal(terminals.length, 1, `${requestId}: exactly one terminal event`);
      t.strictSame(result.answer, answer, `${requestId}: the cancel answer carries the agent's answer`);
      if (terminals[0]?.type === 'ToolFailed') {
        t.equal(terminals[0].data.error.code, 'CANCELLED', `${requestId}: cancelled`);
        t.match(result, { cancelled: true, status: 'failed' });
        outcomes.cancelled++;
      } else {
        t.equal(terminals[0]?.type, 'ToolCompleted', `${requestId}: completed`);
        t.match(result, { cancelled: false, status: 'completed' });
        outcomes.completed++;
      }
    }
    t.comment(`cancelled ${outcomes.cancelled}, completed first ${outcomes.completed}`);
    t.ok(outcomes.cancelled > 0 && outcomes.completed > 0, 'both sides of the race were exercised');
  },
);

t.test('a request still waiting in the intake is cancelled before it runs', async (t) => {
  // Two slots, one per user: the user's second and third requests wait in the intake.
  const h = await harness(t, { DISPATCH_CONCURRENCY: '2' });
  const d = await h.start({}, options);
  const token = await h.token('quinn');
  const first = run(h, token, 'q-1', 'watched_wait', { ms: 30_000 });
  await first.executing;
  const second = run(h, token, 'q-2', 'watched_wait', { ms: 30_000 });
  const third = run(h, token, 'q-3', 'watched_wait', { ms: 30_000 });
  await eventually(() => d.queued === 2, 20_000, 'two requests waiting in the intake');

  const result = await h.agent.cancel({ requestId: 'q-3' }, { token });
  t.match(result, { cancelled: true, status: 'failed', answer: { error: { code: 'CANCELLED' } } });
  t.ok(isCancelled(await third.answer), 'its agent is answered at once');
  t.strictSame(
    typesOf(await eventsOf(h, 'quinn', 'q-3')),
    ['ToolRequested', 'ToolCancelRequested', 'ToolFailed'],
    'recorded cancelled, never run',
  );
  t.match((await eventsOf(h, 'quinn', 'q-3'))[2], {
    data: { durationMs: null, error: { message: /before it ran/ } },
  });
  t.equal(d.queued, 1);
  t.match(await h.agent.cancel({ requestId: 'q-1' }, { token }), { cancelled: true });
  t.match(await h.agent.cancel({ requestId: 'q-2' }, { token }), { cancelled: true });
  await Promise.all([first.answer, second.answer]);
  const ran = aborts.map((a) => a.executionId);
  t.ok(ran.includes(executionIdFor('quinn', 'q-1')), 'the running one saw its signal');
  t.notOk(ran.includes(executionIdFor('quinn', 'q-3')), 'the waiting one never ran');
});

t.test('with two instances, the cancel reaches the one that holds the execution', async (t) => {
  const h = await harness(t, { DISPATCH_CONCURRENCY: '2' });
  const d1 = await h.start({}, options);
  const token = await h.token('dana');
  const running = run(h, token, 'x-run', 'watched_wait', { ms: 30_000 });
  await running.executing;
  const waiting = run(h, token, 'x-wait', 'watched_wait', { ms: 30_000 });
  await eventually(() => d1.queued === 1, 20_000, 'the second request to wait in d1');
  const d2 = await h.start({}, options);

  // Asked at d2: not recorded anywhere yet, it waits in d1's intake; every instance is asked,
  // and the one that holds it records the reason given at d2.
  const queued = await cancelHttp(d2, token, executionIdFor('dana', 'x-wait'), undefined, {
    reason: 'no longer needed',
  });
  t.equal(queued.status, 200);
  t.match(queued.body, { cancelled: true });
  t.ok(isCancelled(await waiting.answer));
  const waited = await eventsOf(h, 'dana', 'x-wait');
  t.strictSame(typesOf(waited), ['ToolRequested', 'ToolCancelRequested', 'ToolFailed']);
  t.match(waited[1], { data: { reason: 'no longer needed' } }, 'the reason, recorded by d1');
  t.match(waited[2], { data: { error: { message: 'cancelled before it ran: no longer needed' } } });

  // Asked at d2: the record names d1 as the runner; d1 is asked and cancels it.
  const remote = await cancelHttp(d2, token, executionIdFor('dana', 'x-run'));
  t.equal(remote.status, 200);
  t.match(remote.body, { cancelled: true, answer: { error: { code: 'CANCELLED' } } });
  t.ok(
    aborts.some((a) => a.executionId === executionIdFor('dana', 'x-run')),
    'd1 fired the tool’s signal',
  );
  t.ok(isCancelled(await running.answer));
  const runners = (await eventsOf(h, 'dana', 'x-run')).flatMap((e) =>
    e.type === 'ToolExecuting' ? [e.data.runner] : [],
  );
  t.strictSame(runners, [d1.dispatcherId]);
});

t.test('an execution left running by a dead dispatcher is cancelled by the record', async (t) => {
  const h = await harness(t);
  const d = await h.start({}, options);
  const token = await h.token('olga');
  // What a dispatcher that died mid-tool leaves: Requested + Executing, its runner gone.
  const orphan = await recordExecution(h.store, 'olga', {
    requestId: 'orphan-1',
    tool: 'sleep',
    args: { ms: 100 },
    outcome: 'executing',
  });
  const result = await h.agent.cancel({ requestId: 'orphan-1' }, { token });
  t.match(result, {
    executionId: orphan.executionId,
    cancelled: true,
    status: 'failed',
    answer: { error: { code: 'CANCELLED', message: /its runner .* stopped/ } },
  });
  t.strictSame(typesOf(await eventsOf(h, 'olga', 'orphan-1')), [
    'ToolRequested',
    'ToolExecuting',
    'ToolCancelRequested',
    'ToolFailed',
  ]);
  // The request coming back (JetStream redelivery, or the agent's retry) gets that answer, no run.
  const retried = await h.agent.execute('sleep', { ms: 100 }, { token, requestId: 'orphan-1' });
  t.strictSame(retried, result.answer);
  t.equal((await eventsOf(h, 'olga', 'orphan-1')).length, 4);
  t.match(
    await d.app.metrics.metrics(),
    /toolbus_cancellations_total\{result="cancelled"[^}]*\} 1\n/,
    'counted in the metrics',
  );
});

t.test(
  'a cancel recorded for an orphan is read by the recovery: the request ends CANCELLED, not re-run',
  async (t) => {
    const h = await harness(t);
    await h.start({}, options);
    const token = await h.token('rita');
    // A dispatcher recorded the cancel of an execution whose runner ('test') died before it ended it.
    const orphan = await recordExecution(h.store, 'rita', {
      requestId: 'orphan-2',
      tool: 'watched_wait',
      args: { ms: 50 },
      outcome: 'executing',
    });
    const streams = new UserStreams({
      store: h.store,
      nc: h.nc,
      log: pino({ level: 'silent' }),
      now: () => new Date(),
    });
    const execution = await streams.load({
      userId: 'rita',
      executionId: orphan.executionId,
      requestId: 'orphan-2',
      correlationId: orphan.executionId,
    });
    await handleExecution(streams, execution, {
      type: 'RequestCancel',
      data: {
        by: { userId: 'rita', admin: false },
        reason: 'asked through nats',
        now: new Date().toISOString(),
      },
    });

    // The request comes back (the agent's retry): watched_wait is idempotent, yet it is not run again.
    const answer = await h.agent.execute('watched_wait', { ms: 50 }, { token, requestId: 'orphan-2' });
    t.match(answer, { status: 'failed', error: { code: 'CANCELLED', message: /its runner test stopped/ } });
    t.strictSame(typesOf(await eventsOf(h, 'rita', 'orphan-2')), [
      'ToolRequested',
      'ToolExecuting',
      'ToolCancelRequested',
      'ToolFailed',
    ]);
    t.notOk(
      aborts.some((a) => a.executionId === orphan.executionId),
      'the tool never ran',
    );
  },
);

t.test('a tool on a worker: the cancel reaches the worker and the tool’s signal fires there', async (t) => {
  const h = await harness(t);
  const d = await h.start({}, options);
  const worker = await serveTools(h.nc, [remoteWatched], {
    workerId: 'cancel-worker',
    secret: h.config.WORKER_SECRET,
    announceIntervalMs: 0,
  });
  t.teardown(() => worker.stop());
  await eventually(() => d.registry.resolve('remote_watched_wait'), 10_000, 'the worker’s tool');
  const token = await h.token('wendy');
  const r = run(h, token, 'w-1', 'remote_watched_wait', { ms: 30_000 });
  await r.executing;
  const executionId = executionIdFor('wendy', 'w-1');
  const result = await h.agent.cancel({ requestId: 'w-1' }, { token });
  t.match(result, { cancelled: true, answer: { error: { code: 'CANCELLED' } } });
  await eventually(
    () => aborts.some((a) => a.executionId === executionId && a.reason === 'ToolRunError'),
    10_000,
    'the worker to abort the tool',
  );
  t.pass('the tool on the worker saw its signal fire (the worker was told)');
  t.ok(isCancelled(await r.answer));
});
