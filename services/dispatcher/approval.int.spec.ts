/**
 * Deadlines are enforced from the store: a wait whose request message is gone (lost by JetStream,
 * or dropped) still ends APPROVAL_EXPIRED once its deadline passed, found by the dispatchers'
 * sweep of the waiting list, once, however many dispatchers sweep. Real NATS, Redis, PostgreSQL.
 */
import { jetstreamManager } from '@nats-io/jetstream';
import t from 'tap';
import { argsHash, executionIdFor, jetstream as names, type ApprovalsPage } from '../../contracts/index.ts';
import { eventually, harness } from './test/harness.ts';

const TEN_MINUTES_AND_MORE = 11 * 60_000;

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
  await jsm.streams.purge(names.requestsStream);

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

  const approve = await a.app.inject({
    method: 'POST',
    url: `/executions/${executionId}/approve`,
    headers: { authorization: `Bearer ${bob}` },
    payload: { argsHash: argsHash(args) },
  });
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
  const shortLived = await h.token('erin', ['user'], '2s');
  const { exp } = JSON.parse(Buffer.from(shortLived.split('.')[1]!, 'base64url').toString('utf8')) as {
    exp: number;
  };
  const bob = await h.token('bob', ['approver']);
  const args = { text: 'slow approvers' };
  const requestId = 'outlive-1';
  const executionId = executionIdFor('erin', requestId);
  const answer = h.agent.execute('guarded_echo', args, { token: shortLived, requestId, timeoutMs: 60_000 });
  const listed = async () =>
    (
      await d.app.inject({ method: 'GET', url: '/approvals', headers: { authorization: `Bearer ${bob}` } })
    ).json<ApprovalsPage>().approvals;
  await eventually(
    async () => (await listed()).some((a) => a.executionId === executionId),
    30_000,
    'the wait',
  );
  await eventually(() => Date.now() > exp * 1000 + 500, 30_000, 'the token to expire');

  const approve = await d.app.inject({
    method: 'POST',
    url: `/executions/${executionId}/approve`,
    headers: { authorization: `Bearer ${bob}` },
    payload: { argsHash: argsHash(args) },
  });
  t.equal(approve.statusCode, 200);
  t.match(
    await answer,
    { status: 'completed', result: { text: 'slow approvers' } },
    'it ran and was answered',
  );
  const types = (await h.events('erin')).map((e) => e.type);
  t.same(types, ['ToolRequested', 'ToolApprovalRequested', 'ToolApproved', 'ToolExecuting', 'ToolCompleted']);
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
  await eventually(
    async () => (await h.events('fay')).some((e) => e.type === 'ToolApprovalRequested'),
    30_000,
    'the wait',
  );
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
  const approve = await d.app.inject({
    method: 'POST',
    url: `/executions/${executionId}/approve`,
    headers: { authorization: `Bearer ${bob}` },
    payload: { argsHash: argsHash(args) },
  });
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
  t.equal((await get(approver, '?after=garbage')).status, 400, 'a cursor that is not one');
  t.equal((await get(approver, '?limit=0')).status, 400, 'a limit out of range');
  t.equal((await get('not-a-token')).status, 401);
});
