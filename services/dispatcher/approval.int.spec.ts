/**
 * Deadlines are enforced from the store: a wait whose request message is gone (lost by JetStream,
 * or dropped) still ends APPROVAL_EXPIRED once its deadline passed, found by the dispatchers'
 * sweep of the waiting list, once, however many dispatchers sweep. Real NATS, Redis, PostgreSQL.
 */
import { jetstreamManager } from '@nats-io/jetstream';
import t from 'tap';
import type { FastifyInstance } from 'fastify';
import {
  argsHash,
  executionIdFor,
  jetstream as names,
  subjects,
  type ApprovalsPage,
  type JsonObject,
} from '../../contracts/index.ts';
import { z } from 'zod';
import { defineTool, serveTools } from '../../lib/tools/index.ts';
import { eventually, harness, rawRequest } from './test/harness.ts';
import { connectionIdentity } from '../../lib/nats.ts';

const TEN_MINUTES_AND_MORE = 11 * 60_000;

/** POST /executions/:id/approve as the holder of `token`, confirming the hash of `args`. */
const approveAs = (
  app: { inject: FastifyInstance['inject'] },
  executionId: string,
  token: string,
  args: JsonObject,
) =>
  app.inject({
    method: 'POST',
    url: `/executions/${executionId}/approve`,
    headers: { authorization: `Bearer ${token}` },
    payload: { argsHash: argsHash(args) },
  });

t.test('a wait whose message is gone ends APPROVAL_EXPIRED from the store, once', async (t) => {
  const h = await harness(t, { APPROVAL_SWEEP_MS: '200' });
  const first = await h.start();
  const alice = await h.token('alice');
  const bob = await h.token('bob', ['approver']);
  const args = { text: 'nobody will look' };
  const requestId = 'exp-1';
  const executionId = executionIdFor('alice', requestId);
  void h.agent
    .execute('guarded_echo', args, { token: alice, requestId, timeoutMs: 5_000 })
    .catch(() => undefined);

  const listed = () =>
    first.app
      .inject({ method: 'GET', url: '/approvals', headers: { authorization: `Bearer ${bob}` } })
      .then((r) => r.json<ApprovalsPage>().approvals);
  await eventually(
    async () => (await listed()).some((a) => a.executionId === executionId),
    30_000,
    'the wait',
  );

  // The dispatcher stops and the request message is lost: only the store knows of the wait.
  await first.close();
  const jsm = await jetstreamManager(h.nc);
  // (The stream refuses a purge, decision 0039: deleted whole, it is made again by the next start.)
  await jsm.streams.delete(names.requestsStream);

  // Two dispatchers come up after the deadline (their clocks are ten minutes on) and sweep.
  const later = () => new Date(Date.now() + TEN_MINUTES_AND_MORE);
  const [a, b] = await Promise.all([h.start({}, { now: later }), h.start({}, { now: later })]);

  const events = await eventually(
    async () => {
      const mine = (await h.events('alice')).filter((e) => e.metadata.executionId === executionId);
      return mine.some((e) => e.type === 'ToolFailed') ? mine : null;
    },
    30_000,
    'the expiry',
  );
  t.same(
    events.map((e) => e.type),
    ['ToolRequested', 'ToolApprovalRequested', 'ToolFailed'],
    'requested, waited, ended',
  );
  const end = events.at(-1);
  t.equal(end?.type === 'ToolFailed' && end.data.error.code, 'APPROVAL_EXPIRED');

  const approve = await approveAs(a.app, executionId, bob, args);
  t.equal(approve.statusCode, 410, 'an approval now is too late');
  const after = await a.app.inject({
    method: 'GET',
    url: '/approvals',
    headers: { authorization: `Bearer ${bob}` },
  });
  t.same(after.json<ApprovalsPage>().approvals, [], 'the list is empty');
  // One more sweep of both finds nothing to do: still one end.
  await eventually(() => h.logs.text.includes('approval expired'), 10_000, 'the log line');
  const final = (await h.events('alice')).filter((e) => e.metadata.executionId === executionId);
  t.equal(final.filter((e) => e.type === 'ToolFailed').length, 1, 'one end, however many swept');
  const expiredCount = async (d: typeof a) => {
    const text = (await d.app.inject({ method: 'GET', url: '/metrics' })).body;
    return Number(/toolbus_approvals_total\{event="expired"[^}]*\} (\d+)/.exec(text)?.[1] ?? 0);
  };
  t.equal((await expiredCount(a)) + (await expiredCount(b)), 1, 'counted once in the metrics');
});

t.test("a call outlives its agent's token while it waits: approved later, it runs", async (t) => {
  const h = await harness(t, { APPROVAL_RECHECK_MS: '200', JWT_CLOCK_TOLERANCE_S: '0' });
  const d = await h.start();
  const bob = await h.token('bob', ['approver']);
  const args = { text: 'slow approvers' };
  const listed = async (executionId: string) =>
    (await d.app.inject({ method: 'GET', url: '/approvals', headers: { authorization: `Bearer ${bob}` } }))
      .json<ApprovalsPage>()
      .approvals.some((a) => a.executionId === executionId);
  // A token short-lived enough to expire while its call waits, long enough to be recorded first
  // (a loaded machine may need a longer one: each try doubles it).
  for (let lifeS = 2; ; lifeS *= 2) {
    const token = await h.token('erin', ['user'], `${lifeS}s`);
    const expiresAt = Date.now() + lifeS * 1000;
    const requestId = `outlive-${lifeS}`;
    const executionId = executionIdFor('erin', requestId);
    let settled = false;
    const answer = h.agent.execute('guarded_echo', args, { token, requestId, timeoutMs: 120_000 });
    void answer.finally(() => (settled = true));
    await eventually(async () => settled || (await listed(executionId)), 60_000, 'the wait or its refusal');
    if (settled) {
      t.comment(`a ${lifeS} s token expired before its request was recorded; trying a longer one`);
      continue;
    }
    await eventually(() => Date.now() > expiresAt + 1_000, 120_000, 'the token to expire');
    const approve = await approveAs(d.app, executionId, bob, args);
    t.equal(approve.statusCode, 200);
    t.match(
      await answer,
      { status: 'completed', result: { text: 'slow approvers' } },
      'it ran and was answered',
    );
    const types = (await h.events('erin'))
      .filter((e) => e.metadata.requestId === requestId)
      .map((e) => e.type);
    t.same(types, [
      'ToolRequested',
      'ToolApprovalRequested',
      'ToolApproved',
      'ToolExecuting',
      'ToolCompleted',
    ]);
    break;
  }
});

t.test("an approved call runs within its user's concurrency limit", async (t) => {
  const h = await harness(t, { APPROVAL_RECHECK_MS: '100', USER_CONCURRENCY: '1' });
  const d = await h.start();
  const fay = await h.token('fay');
  const bob = await h.token('bob', ['approver']);
  const args = { text: 'after the sleep' };
  const guarded = h.agent.execute('guarded_echo', args, {
    token: fay,
    requestId: 'slot-g',
    timeoutMs: 60_000,
  });
  const executionId = executionIdFor('fay', 'slot-g');
  // Logged once it waits and its slot is free again.
  await eventually(() => h.logs.text.includes('execution awaits approval'), 30_000, 'the wait');
  // The waiting call holds no slot: another call of hers runs meanwhile, and holds the only one.
  const sleeping = h.agent.execute(
    'sleep',
    { ms: 1_500 },
    { token: fay, requestId: 'slot-s', timeoutMs: 60_000 },
  );
  await eventually(
    async () => (await h.events('fay')).some((e) => e.type === 'ToolExecuting'),
    30_000,
    'the sleep',
  );
  const approve = await approveAs(d.app, executionId, bob, args);
  t.equal(approve.statusCode, 200);
  t.match(await sleeping, { status: 'completed' });
  t.match(await guarded, { status: 'completed' });
  const order = (await h.events('fay'))
    .filter((e) => e.type === 'ToolExecuting' || e.type === 'ToolCompleted')
    .map((e) => `${e.metadata.requestId} ${e.type}`);
  t.same(
    order,
    ['slot-s ToolExecuting', 'slot-s ToolCompleted', 'slot-g ToolExecuting', 'slot-g ToolCompleted'],
    'the approved call started only once the slot was free',
  );
});

/** Test tool: holds its slot until its signal fires (a cancel) or a minute passes. */
const holdsSlot = defineTool({
  name: 'holds_slot',
  version: '1.0.0',
  description: 'Test tool: waits until cancelled.',
  input: z.object({}),
  output: z.object({}),
  timeoutMs: 60_000,
  idempotent: true,
  run: (_args, ctx) =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(() => resolve({}), 60_000);
      ctx.signal.addEventListener('abort', () => {
        clearTimeout(timer);
        reject(ctx.signal.reason as Error);
      });
    }),
});

t.test(
  'the same request id with other arguments after the approval: refused to that attempt only; the approved call answers',
  async (t) => {
    const h = await harness(t, { APPROVAL_RECHECK_MS: '100', USER_CONCURRENCY: '1' });
    const d = await h.start({}, { tools: [holdsSlot] });
    const fay = await h.token('fay');
    const bob = await h.token('bob', ['approver']);
    const args = { text: 'harmless' };
    const guarded = h.agent.execute('guarded_echo', args, {
      token: fay,
      requestId: 'swap',
      timeoutMs: 60_000,
    });
    const executionId = executionIdFor('fay', 'swap');
    await eventually(() => h.logs.text.includes('execution awaits approval'), 30_000, 'the wait');
    // A call holding her only slot keeps the approved one waiting, approved, while the other comes.
    const holding = h.agent.execute('holds_slot', {}, { token: fay, requestId: 'swap-h', timeoutMs: 60_000 });
    await eventually(
      async () => (await h.events('fay')).some((e) => e.type === 'ToolExecuting'),
      30_000,
      'the holding call',
    );
    const approve = await approveAs(d.app, executionId, bob, args);
    t.equal(approve.statusCode, 200);
    // Another of her tokens (another message id: JetStream keeps it), the same request id, other
    // arguments, on the same connection (as the HTTP API's requests all are).
    const other = await h.token('fay', [], '2h');
    const swapped = h.agent.execute(
      'guarded_echo',
      { text: 'EVIL' },
      { token: other, requestId: 'swap', timeoutMs: 60_000 },
    );
    // Its message id binds its arguments: JetStream keeps it, and the dispatcher refuses it.
    t.match(
      await swapped,
      {
        status: 'failed',
        executionId: null,
        error: {
          code: 'IDEMPOTENCY_CONFLICT',
          message: /request id swap was first used with another tool or other arguments/,
        },
      },
      'the swapped attempt is refused, naming no execution: nothing was recorded for it',
    );
    const cancelled = await h.agent.cancel({ requestId: 'swap-h' }, { token: fay });
    t.equal(cancelled.cancelled, true, 'the holding call is cancelled, freeing the slot');
    t.match(await holding, { status: 'failed', error: { code: 'CANCELLED' } });
    t.match(
      await guarded,
      { status: 'completed', result: args },
      'the approved call answers with its own result, never the refusal of the other attempt',
    );
    const requested = (await h.events('fay')).flatMap((e) =>
      e.type === 'ToolRequested' && e.metadata.executionId === executionId ? [e.data.args] : [],
    );
    t.strictSame(requested, [args], 'nothing of the swapped attempt was recorded');
  },
);

t.test(
  'a waiting call’s message comes back while a reuse of its request id is being admitted: neither takes the other’s place',
  async (t) => {
    const h = await harness(t, { APPROVAL_RECHECK_MS: '100', APPROVAL_RECHECK_MAX_MS: '100' });
    const d = await h.start();
    const ann = await h.token('ann');
    const bob = await h.token('bob', ['approver']);
    const args = { text: 'harmless' };
    const executionId = executionIdFor('ann', 'race');
    const owner = h.agent.execute('guarded_echo', args, { token: ann, requestId: 'race', timeoutMs: 60_000 });
    await eventually(() => h.logs.text.includes('execution awaits approval'), 30_000, 'the wait');
    // Redis stopped: the reuse waits in its admission, in flight, while the waiting call's message
    // comes back (every 100 ms) and meets it there, before either is found recorded.
    await h.redis.pause();
    const reuse = rawRequest(h, {
      subject: subjects.request('ann', connectionIdentity(h.nc)),
      body: { requestId: 'race', tool: 'guarded_echo', args: { text: 'EVIL' } },
      token: ann,
      waitMs: 60_000,
    });
    await eventually(() => d.dispatcher.inFlightCount > 0, 30_000, 'a request in flight (in its admission)');
    // The owner's message comes back every 100 ms meanwhile; whichever came second joined the first.
    await new Promise((r) => setTimeout(r, 1_000));
    h.redis.resume();
    t.match(
      await reuse,
      { status: 'failed', executionId: null, error: { code: 'IDEMPOTENCY_CONFLICT' } },
      'the reuse is refused',
    );
    t.equal((await approveAs(d.app, executionId, bob, args)).statusCode, 200, 'the wait is still there');
    t.match(await owner, { status: 'completed', result: args }, 'the approved call runs and answers');
  },
);

t.test('GET /approvals: the waits the caller may decide, oldest first, in pages', async (t) => {
  const h = await harness(t, { RATE_LIMIT_BURST: '100' });
  const d = await h.start();
  const gus = await h.token('gus');
  const get = async (token: string, query = '') => {
    const r = await d.app.inject({
      method: 'GET',
      url: `/approvals${query}`,
      headers: { authorization: `Bearer ${token}` },
    });
    return { status: r.statusCode, body: r.json<ApprovalsPage & { error?: { code: string } }>() };
  };
  const ids: string[] = [];
  for (const n of [1, 2, 3]) {
    const requestId = `page-${n}`;
    void h.agent
      .execute('guarded_echo', { n }, { token: gus, requestId, timeoutMs: 5_000 })
      .catch(() => undefined);
    ids.push(executionIdFor('gus', requestId));
    // One after the other, so that "oldest first" has an order to keep.
    await eventually(
      async () => (await h.events('gus')).filter((e) => e.type === 'ToolApprovalRequested').length === n,
      30_000,
      `wait ${n}`,
    );
  }
  const approver = await h.token('hal', ['approver']);
  const first = await get(approver, '?limit=2');
  t.equal(first.status, 200);
  t.same(
    first.body.approvals.map((a) => a.executionId),
    ids.slice(0, 2),
    'the two oldest',
  );
  t.type(first.body.next, 'string', 'and a cursor');
  const second = await get(approver, `?limit=2&after=${encodeURIComponent(first.body.next!)}`);
  t.same(
    second.body.approvals.map((a) => a.executionId),
    ids.slice(2),
    'then the rest',
  );
  t.equal(second.body.next, null, 'the last page');
  t.same(second.body.approvals[0]?.args, { n: 3 }, 'with the arguments as stored');

  t.same((await get(await h.token('ivy', ['finance']))).body.approvals, [], 'another role sees none');
  t.equal((await get(await h.token('ada', ['admin']))).body.approvals.length, 3, 'an admin sees them all');
  t.same(
    (await get(await h.token('gus', ['user', 'approver']))).body.approvals,
    [],
    'the requester is not shown their own calls (self-approval is not allowed)',
  );
  t.equal((await get(approver, '?after=garbage')).status, 400, 'a cursor that is not one');
  t.equal((await get(approver, '?limit=0')).status, 400, 'a limit out of range');
  const unknown = await get(approver, '?foo=1');
  t.equal(unknown.status, 400, 'an unknown parameter');
  t.match(
    (unknown.body as { error?: { message?: string } }).error?.message,
    /^query: /,
    'named as a query problem',
  );
  t.equal((await get('not-a-token')).status, 401);

  // A decision's path that names no execution is MALFORMED, as on the read and the cancel; a
  // body without what the decision binds to is VALIDATION.
  const badPath = await approveAs(d.app, 'not-an-id', approver, { n: 1 });
  t.equal(badPath.statusCode, 400);
  t.equal(
    badPath.json<{ error: { code: string } }>().error.code,
    'MALFORMED',
    'a path that names no execution',
  );
  const noHash = await d.app.inject({
    method: 'POST',
    url: `/executions/${ids[0]}/approve`,
    headers: { authorization: `Bearer ${approver}` },
    payload: {},
  });
  t.equal(noHash.statusCode, 400);
  t.equal(noHash.json<{ error: { code: string } }>().error.code, 'VALIDATION', 'a body without argsHash');
});

t.test('a cancel while it waits ends it CANCELLED; an approval then is refused', async (t) => {
  const h = await harness(t, { APPROVAL_RECHECK_MS: '200' });
  const d = await h.start();
  const jo = await h.token('jo');
  const bob = await h.token('bob', ['approver']);
  const args = { text: 'never mind' };
  const executionId = executionIdFor('jo', 'cancel-wait');
  const listed = async () =>
    (
      await d.app.inject({ method: 'GET', url: '/approvals', headers: { authorization: `Bearer ${bob}` } })
    ).json<ApprovalsPage>().approvals;
  const answer = h.agent.execute('guarded_echo', args, {
    token: jo,
    requestId: 'cancel-wait',
    timeoutMs: 60_000,
  });
  await eventually(() => h.logs.text.includes('execution awaits approval'), 30_000, 'the wait');
  const cancel = await d.app.inject({
    method: 'POST',
    url: `/executions/${executionId}/cancel`,
    headers: { authorization: `Bearer ${jo}` },
    payload: {},
  });
  t.equal(cancel.statusCode, 200, 'cancelled');
  t.match(await answer, { status: 'failed', error: { code: 'CANCELLED' } }, 'the agent hears it');
  // The list is settled by the cancel (and again by whoever handles it next).
  await eventually(async () => (await listed()).length === 0, 30_000, 'it to leave the list');
  const approve = await approveAs(d.app, executionId, bob, args);
  t.equal(approve.statusCode, 409, 'too late to approve');
  t.equal(approve.json<{ error: { code: string } }>().error.code, 'NOT_AWAITING');
  const types = (await h.events('jo')).map((e) => e.type);
  t.same(types, ['ToolRequested', 'ToolApprovalRequested', 'ToolCancelRequested', 'ToolFailed'], 'one end');
  t.same(await listed(), [], 'it stays off the list');
});

t.test("a worker's tool announces its rule, and the dispatcher holds its calls to it", async (t) => {
  const h = await harness(t, { APPROVAL_RECHECK_MS: '200' });
  const d = await h.start();
  const transfer = defineTool({
    name: 'remote_transfer',
    version: '1.0.0',
    description: 'Moves money (pretend); above 1000 a finance approver looks first.',
    input: z.object({ amount: z.number(), to: z.string() }),
    output: z.object({ moved: z.number() }),
    approval: { approverRoles: ['finance'], when: [{ path: 'amount', op: 'gt', value: 1000 }] },
    async run({ amount }) {
      return { moved: amount };
    },
  });
  const worker = await serveTools(h.nc, [transfer], {
    workerId: 'transfer-worker',
    secret: h.config.WORKER_SECRET,
    announceIntervalMs: 0,
  });
  t.teardown(() => worker.stop());
  await eventually(() => d.registry.resolve('remote_transfer'), 10_000, "the worker's tool");
  const kim = await h.token('kim');
  const small = await h.agent.execute(
    'remote_transfer',
    { amount: 10, to: 'bo' },
    { token: kim, timeoutMs: 60_000 },
  );
  t.match(small, { status: 'completed', result: { moved: 10 } }, 'below the rule: it runs unasked');

  const args = { amount: 5000, to: 'bo' };
  const big = h.agent.execute('remote_transfer', args, { token: kim, requestId: 'big', timeoutMs: 60_000 });
  const executionId = executionIdFor('kim', 'big');
  const finance = await h.token('fin', ['finance']);
  await eventually(
    async () =>
      (
        await d.app.inject({
          method: 'GET',
          url: '/approvals',
          headers: { authorization: `Bearer ${finance}` },
        })
      )
        .json<ApprovalsPage>()
        .approvals.some((a) => a.executionId === executionId),
    30_000,
    'the wait',
  );
  const approve = await approveAs(d.app, executionId, finance, args);
  t.equal(approve.statusCode, 200);
  t.match(await big, { status: 'completed', result: { moved: 5000 } }, 'approved: it runs on the worker');
});

t.test(
  'who may not decide a wait learns nothing of it (but that it is their own): the same 404 as an execution that never waited',
  async (t) => {
    const h = await harness(t, { APPROVAL_RECHECK_MS: '200', RATE_LIMIT_BURST: '100' });
    const d = await h.start();
    const kim = await h.token('kim');
    const args = { text: 'is anyone waiting?' };
    const executionId = executionIdFor('kim', 'leak-1');
    const answer = h.agent.execute('guarded_echo', args, {
      token: kim,
      requestId: 'leak-1',
      timeoutMs: 60_000,
    });
    await eventually(
      async () => (await h.events('kim')).some((e) => e.type === 'ToolApprovalRequested'),
      30_000,
      'the wait',
    );
    const decide = async (id: string, kind: 'approve' | 'deny', token: string, payload: object) => {
      const r = await d.app.inject({
        method: 'POST',
        url: `/executions/${id}/${kind}`,
        headers: { authorization: `Bearer ${token}` },
        payload,
      });
      return { status: r.statusCode, body: r.json<{ error?: { code: string; message: string } }>() };
    };
    const hash = argsHash(args);
    const unknownId = executionIdFor('kim', 'never-asked');
    const unknown = await decide(unknownId, 'approve', await h.token('bob'), { argsHash: hash });
    t.equal(unknown.status, 404, 'an execution that never waited: 404');
    const asUnknown = (r: typeof unknown, id: string) => ({
      status: r.status,
      body: JSON.parse(JSON.stringify(r.body).replaceAll(id, unknownId)) as unknown,
    });
    for (const [who, roles] of [
      ['bob', ['user']],
      ['ivy', ['finance']],
    ] as const) {
      const token = await h.token(who, [...roles]);
      for (const kind of ['approve', 'deny'] as const) {
        const r = await decide(executionId, kind, token, { argsHash: hash, reason: 'curious' });
        t.same(
          asUnknown(r, executionId),
          unknown,
          `${who} (${roles.join(', ')}) asks to ${kind}: the same 404`,
        );
      }
    }

    // The requester, without an approver role, learns only what they know: it is their own call.
    for (const kind of ['approve', 'deny'] as const) {
      t.match(
        await decide(executionId, kind, kim, { argsHash: hash, reason: 'mine' }),
        { status: 403, body: { error: { code: 'SELF_APPROVAL', message: /your own call.*approver/ } } },
        `kim asks to ${kind} her own call: 403`,
      );
    }

    // Who may decide it is told as before: a wrong hash, their own call, then the approval.
    const other = await decide(executionId, 'approve', await h.token('bob', ['approver']), {
      argsHash: argsHash({ text: 'something else' }),
    });
    t.match(other, { status: 409, body: { error: { code: 'HASH_MISMATCH' } } }, 'an approver: 409');
    const self = await decide(executionId, 'approve', await h.token('kim', ['user', 'approver']), {
      argsHash: hash,
    });
    t.match(
      self,
      { status: 403, body: { error: { code: 'SELF_APPROVAL' } } },
      'the requester as approver: 403',
    );
    const byAdmin = await decide(executionId, 'approve', await h.token('ada', ['admin']), { argsHash: hash });
    t.equal(byAdmin.status, 200, 'an admin approves');
    t.match(await answer, { status: 'completed' }, 'and it runs');
    const late = await decide(executionId, 'deny', await h.token('bob'), { argsHash: hash, reason: 'x' });
    t.same(asUnknown(late, executionId), unknown, 'once decided, still a 404 for who may not decide it');
  },
);

t.test("one user's calls waiting for approval are bounded; another user's are not", async (t) => {
  const h = await harness(t, { APPROVAL_RECHECK_MS: '200', APPROVAL_MAX_WAITS_PER_USER: '2' });
  const d = await h.start();
  const [mia, zoe] = [await h.token('mia'), await h.token('zoe')];
  const bob = await h.token('bob', ['approver']);
  const ask = (token: string, requestId: string) =>
    h.agent.execute('guarded_echo', { text: requestId }, { token, requestId, timeoutMs: 60_000 });
  const waiting = async (userId: string) =>
    (await d.app.inject({ method: 'GET', url: '/approvals', headers: { authorization: `Bearer ${bob}` } }))
      .json<ApprovalsPage>()
      .approvals.filter((w) => w.userId === userId);

  const first = [ask(mia, 'w1'), ask(mia, 'w2')];
  await eventually(async () => (await waiting('mia')).length === 2, 30_000, "mia's two waits");
  const third = await ask(mia, 'w3');
  t.match(
    third,
    {
      status: 'failed',
      requestId: 'w3',
      error: { code: 'RATE_LIMITED', details: { limit: 'approvals', waiting: 2 } },
    },
    'the third is refused at once',
  );
  t.match(third.status === 'failed' && third.error.message, /APPROVAL_MAX_WAITS_PER_USER/);
  const zoes = ask(zoe, 'z1');
  await eventually(async () => (await waiting('zoe')).length === 1, 30_000, "zoe's wait");
  t.equal((await waiting('mia')).length, 2, "mia's refusal left no wait");

  // One decided, the room is back.
  const w1 = executionIdFor('mia', 'w1');
  t.equal((await approveAs(d.app, w1, bob, { text: 'w1' })).statusCode, 200);
  t.match(await first[0], { status: 'completed' }, 'the approved call ran');
  await eventually(async () => (await waiting('mia')).length === 1, 30_000, 'w1 off the list');
  const again = ask(mia, 'w4');
  await eventually(async () => (await waiting('mia')).length === 2, 30_000, 'w4 waits');
  const types = (await h.events('mia')).filter((e) => e.metadata.requestId === 'w3').map((e) => e.type);
  t.strictSame(types, ['ToolRequested', 'ToolFailed'], 'the refusal is recorded, no wait asked');

  for (const [userId, requestId, p] of [
    ['mia', 'w2', first[1]!],
    ['zoe', 'z1', zoes],
    ['mia', 'w4', again],
  ] as const) {
    const deny = await d.app.inject({
      method: 'POST',
      url: `/executions/${executionIdFor(userId, requestId)}/deny`,
      headers: { authorization: `Bearer ${bob}` },
      payload: { argsHash: argsHash({ text: requestId }), reason: 'test over' },
    });
    t.equal(deny.statusCode, 200, `${requestId} denied`);
    t.match(await p, { status: 'failed', error: { code: 'DENIED' } });
  }
});

t.test('a waiting call comes back less and less often, and still starts once approved', async (t) => {
  const h = await harness(t, { APPROVAL_RECHECK_MS: '100', APPROVAL_RECHECK_MAX_MS: '800' });
  const d = await h.start();
  const kim = await h.token('kim');
  const bob = await h.token('bob', ['approver']);
  const args = { text: 'slowly' };
  // The consumer's sequence counts every delivery, a message handed back and delivered again too.
  const jsm = await jetstreamManager(h.nc);
  const delivered = async () =>
    (await jsm.consumers.info(names.requestsStream, names.dispatcherConsumer)).delivered.consumer_seq;
  const answer = h.agent.execute('guarded_echo', args, { token: kim, requestId: 'slow', timeoutMs: 60_000 });
  await eventually(() => h.logs.text.includes('execution awaits approval'), 30_000, 'the wait');
  const first = await delivered();
  const since = performance.now();
  await eventually(async () => (await delivered()) - first >= 6, 30_000, 'six rechecks');
  // Each after as long as the call has waited (100 ms at least, 800 at most): at 0.1, 0.2, 0.4,
  // 0.8, 1.6 and 2.4 s, so six take over 2.2 s from when the wait was seen (0.6 s at a fixed
  // 100 ms). A busy machine only makes it longer.
  const took = performance.now() - since;
  t.ok(took >= 1_500, `six rechecks took ${Math.round(took)} ms: each waited longer than the one before`);
  t.equal((await approveAs(d.app, executionIdFor('kim', 'slow'), bob, args)).statusCode, 200);
  t.match(await answer, { status: 'completed', result: args }, 'approved, it starts at its next recheck');
});
