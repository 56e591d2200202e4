import { connectionIdentity } from '../../lib/nats.ts';
import t from 'tap';
import { Redis } from 'ioredis';
import { subjects, verifyChain, type JsonObject, type ToolEvent } from '../../contracts/index.ts';
import { eventually, harness, rawRequest, type Harness } from './test/harness.ts';

const executionsOf = (events: ToolEvent[], requestId: string) =>
  events.filter((e) => e.metadata.requestId === requestId);

async function redisClient(t: { teardown(fn: () => void): void }, h: Harness): Promise<Redis> {
  const r = new Redis(h.redis.url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  await r.connect();
  t.teardown(() => r.disconnect());
  return r;
}

t.test('one execution per request id', async (t) => {
  const h = await harness(t);
  await h.start();
  const token = await h.token('ida');
  const redis = await redisClient(t, h);

  t.test(
    'the same request sent three times at once (agent client): one run, three equal answers',
    async (t) => {
      const answers = await Promise.all(
        [1, 2, 3].map(() => h.agent.execute('sleep', { ms: 300 }, { token, requestId: 'dup-1' })),
      );
      t.match(answers[0], { status: 'completed', result: { slept: 300 } });
      t.strictSame(answers[1], answers[0]);
      t.strictSame(answers[2], answers[0]);
      const events = executionsOf(await h.events('ida'), 'dup-1');
      t.strictSame(
        events.map((e) => e.type),
        ['ToolRequested', 'ToolExecuting', 'ToolCompleted'],
        'one execution',
      );
    },
  );

  t.test('three copies that JetStream does not deduplicate (no Nats-Msg-Id): still one run', async (t) => {
    const body = { requestId: 'dup-2', tool: 'sleep', args: { ms: 300 } };
    const answers = await Promise.all(
      [1, 2, 3].map(() =>
        rawRequest(h, { subject: subjects.request('ida', connectionIdentity(h.nc)), body, token }),
      ),
    );
    t.match(answers[0], { status: 'completed' });
    t.strictSame(answers[1], answers[0]);
    t.strictSame(answers[2], answers[0]);
    const events = executionsOf(await h.events('ida'), 'dup-2');
    t.strictSame(
      events.map((e) => e.type),
      ['ToolRequested', 'ToolExecuting', 'ToolCompleted'],
      'one execution',
    );
  });

  t.test('Redis flushed: the event store is the guard', async (t) => {
    const first = await h.agent.execute('sleep', { ms: 50 }, { token, requestId: 'dup-3' });
    t.equal(first.status, 'completed');
    const refused = await h.agent.execute(
      'noop',
      {},
      { token, requestId: 'dup-3-refused', version: '7.0.0' },
    );
    t.match(refused, { status: 'failed', error: { code: 'UNKNOWN_TOOL' } });
    await redis.flushall();
    t.equal(await redis.dbsize(), 0, 'Redis remembers nothing');

    const viaIntake = await rawRequest(h, {
      subject: subjects.request('ida', connectionIdentity(h.nc)),
      body: { requestId: 'dup-3', tool: 'sleep', args: { ms: 50 } },
      token,
    });
    t.strictSame(viaIntake, first, 'a new copy through the intake gets the first answer');
    const viaClient = await h.agent.execute('sleep', { ms: 50 }, { token, requestId: 'dup-3' });
    t.strictSame(viaClient, first, 'a retry through the client (JetStream duplicate) gets it too');
    const refusedAgain = await rawRequest(h, {
      subject: subjects.request('ida', connectionIdentity(h.nc)),
      body: { requestId: 'dup-3-refused', tool: 'noop', version: '7.0.0', args: {} },
      token,
    });
    t.strictSame(refusedAgain, refused, 'a refusal is answered the same way again');
    const events = await h.events('ida');
    t.equal(executionsOf(events, 'dup-3').length, 3, 'still one execution');
    t.equal(executionsOf(events, 'dup-3-refused').length, 2, 'still one refusal');
    t.equal(verifyChain(events), null);
    t.ok(await redis.exists(`tb:{ida}:a:dup-3`), 'the answer found in the store is remembered again');
  });

  t.test(
    'the request id reused with other arguments or another tool: refused, the first stands',
    async (t) => {
      const first = await h.agent.execute('echo', { v: 1 }, { token, requestId: 'dup-4' });
      const conflict = {
        status: 'failed',
        requestId: 'dup-4',
        executionId: null,
        error: { code: 'IDEMPOTENCY_CONFLICT', message: /first used with another tool or other arguments/ },
      };
      t.match(
        await h.agent.execute('echo', { v: 2 }, { token, requestId: 'dup-4' }),
        conflict,
        'through the client, within the duplicate window: not taken for a repeat',
      );
      t.match(
        await h.agent.execute('noop', { v: 1 }, { token, requestId: 'dup-4' }),
        conflict,
        'another tool',
      );
      // A new message each time (no Nats-Msg-Id): JetStream keeps it, a dispatcher handles it.
      const viaIntake = (args: JsonObject) =>
        rawRequest(h, {
          subject: subjects.request('ida', connectionIdentity(h.nc)),
          body: { requestId: 'dup-4', tool: 'echo', args },
          token,
        });
      t.match(
        await viaIntake({ v: 2 }),
        conflict,
        'a new copy through the intake (the answer remembered in Redis)',
      );
      await redis.del('tb:{ida}:a:dup-4');
      t.match(await viaIntake({ v: 3 }), conflict, 'Redis has forgotten it: the store tells');
      t.strictSame(
        await h.agent.execute('echo', { v: 1 }, { token, requestId: 'dup-4' }),
        first,
        'the same request again still gets the first answer',
      );
      t.strictSame(
        await h.agent.execute('echo', { v: 1 }, { token, requestId: 'dup-4' }),
        first,
        'and again, its answer remembered in Redis with what it asked',
      );
      const events = await h.events('ida');
      t.equal(executionsOf(events, 'dup-4').length, 3, 'one execution, nothing recorded for the others');
    },
  );

  t.test('a reused request id sent twice at once, and again: every attempt refused', async (t) => {
    // With `secret` (sensitive: redacted in the event), what the first asked is known whole only
    // from its request, kept in Redis beside its answer.
    for (const [requestId, extra] of [
      ['dup-6', {}],
      ['dup-6s', { secret: 's' }],
    ] as Array<[string, JsonObject]>) {
      const first = await h.agent.execute('echo', { v: 1, ...extra }, { token, requestId });
      t.match(first, { status: 'completed' });
      // JetStream keeps one of the two copies; the other attempt, a duplicate, looks its answer up
      // (saying what it asks), and must not be handed the first request's.
      const refused = { status: 'failed', executionId: null, error: { code: 'IDEMPOTENCY_CONFLICT' } };
      const reuse = () =>
        h.agent.execute('echo', { v: 2, ...extra }, { token, requestId, timeoutMs: 60_000 });
      t.match(await Promise.all([reuse(), reuse()]), [refused, refused], `${requestId}: both refused`);
      t.match(await reuse(), refused, `${requestId}: a retry within the duplicate window too`);
      t.strictSame(
        await h.agent.execute('echo', { v: 1, ...extra }, { token, requestId }),
        first,
        `${requestId}: the first request's retry still gets its answer`,
      );
    }
  });

  t.test('the request id reused while its request runs: refused at once; the first runs on', async (t) => {
    const running = h.agent.execute('sleep', { ms: 1_500 }, { token, requestId: 'dup-5' });
    await eventually(
      async () =>
        (await h.events('ida')).some((e) => e.type === 'ToolExecuting' && e.metadata.requestId === 'dup-5'),
      30_000,
      'the first to run',
    );
    t.match(
      await h.agent.execute('sleep', { ms: 1 }, { token, requestId: 'dup-5' }),
      { status: 'failed', executionId: null, error: { code: 'IDEMPOTENCY_CONFLICT' } },
      'refused, while the first still runs',
    );
    t.match(await running, { status: 'completed', requestId: 'dup-5' }, 'the first gets its own answer');
    t.equal(executionsOf(await h.events('ida'), 'dup-5').length, 3);
  });
});

t.test('result cache for cacheable tools', async (t) => {
  const h = await harness(t);
  await h.start();
  const token = await h.token('cara');
  const first = await h.agent.execute('cached_echo', { q: 'zod' }, { token, requestId: 'c-1' });
  t.match(first, { status: 'completed', cached: false, result: { args: { q: 'zod' } } });
  const second = await h.agent.execute('cached_echo', { q: 'zod' }, { token, requestId: 'c-2' });
  t.match(second, { status: 'completed', cached: true });
  t.strictSame(
    (second as { result: unknown }).result,
    (first as { result: unknown }).result,
    'the cached result (same runId)',
  );
  const events = executionsOf(await h.events('cara'), 'c-2');
  t.strictSame(
    events.map((e) => e.type),
    ['ToolRequested', 'ToolExecuting', 'ToolCompleted'],
    'a cache hit is still recorded',
  );
  t.match(events[2]?.data, { cached: true });

  const otherArgs = await h.agent.execute('cached_echo', { q: 'other' }, { token, requestId: 'c-3' });
  t.match(otherArgs, { cached: false }, 'other arguments miss');
  const sameArgsOtherOrder = await h.agent.execute(
    'cached_echo',
    { a: 1, b: 2 },
    { token, requestId: 'c-4' },
  );
  const reordered = await h.agent.execute('cached_echo', { b: 2, a: 1 }, { token, requestId: 'c-5' });
  t.match(sameArgsOtherOrder, { cached: false });
  t.match(reordered, { cached: true }, 'the key is over canonical JSON: key order does not matter');
  const otherUser = await h.agent.execute(
    'cached_echo',
    { q: 'zod' },
    { token: await h.token('carl'), requestId: 'c-6' },
  );
  t.match(otherUser, { cached: false }, 'the cache is per user');
});

t.test('Redis stopped mid-run: executions finish, no duplicate, limits fail open', async (t) => {
  const h = await harness(t);
  const d = await h.start();
  const token = await h.token('rex');
  const running = Promise.all(
    [0, 1, 2].map((i) => h.agent.execute('sleep', { ms: 1_000 }, { token, requestId: `rs-${i}` })),
  );
  // Redis goes while all three run (admitted through it, not finished).
  await eventually(
    async () => (await h.events('rex')).filter((e) => e.type === 'ToolExecuting').length === 3,
    20_000,
    'the three executions running',
  );
  await h.redis.kill('SIGKILL');
  const answers = await running;
  t.ok(
    answers.every((a) => a.status === 'completed'),
    'the running executions complete',
  );

  const during = await h.agent.execute('echo', { x: 1 }, { token, requestId: 'rs-during' });
  t.match(during, { status: 'completed' }, 'new requests are served without Redis');
  const dupDuring = await rawRequest(h, {
    subject: subjects.request('rex', connectionIdentity(h.nc)),
    body: { requestId: 'rs-0', tool: 'sleep', args: { ms: 1_000 } },
    token,
  });
  t.strictSame(dupDuring, answers[0], 'a duplicate without Redis gets the first answer from the store');

  await h.redis.start();
  const after = await h.agent.execute('noop', {}, { token, requestId: 'rs-after' });
  t.equal(after.status, 'completed', 'and with Redis back');

  const events = await h.events('rex');
  for (const id of ['rs-0', 'rs-1', 'rs-2', 'rs-during']) {
    t.equal(executionsOf(events, id).filter((e) => e.type === 'ToolExecuting').length, 1, `${id} ran once`);
    t.equal(
      executionsOf(events, id).filter((e) => e.type === 'ToolCompleted').length,
      1,
      `${id} completed once`,
    );
  }
  t.equal(verifyChain(events), null);
  const metrics = await d.app.metrics.metrics();
  t.match(metrics, /toolbus_redis_errors_total\{[^}]*op="admit"[^}]*\} [1-9]/, 'redis errors are counted');
});

t.test(
  'Redis down: one log line for the outage, not one per failed call, and one when it is back',
  async (t) => {
    const h = await harness(t);
    // Longer than the test: every line but the first and the last of the outage would be a repeat.
    const d = await h.start({}, { redisLogIntervalMs: 3_600_000 });
    const token = await h.token('lou');
    t.match(await h.agent.execute('noop', {}, { token, requestId: 'ro-before' }), { status: 'completed' });
    const lines = () =>
      h.logs.lines
        .map((l) => JSON.parse(l) as { level: number; msg: string; [k: string]: unknown })
        .filter((l) => /^redis /.test(l.msg));
    t.same(lines(), [], 'nothing while Redis answers');

    await h.redis.kill('SIGKILL');
    const answers = await Promise.all(
      Array.from({ length: 20 }, (_, i) => h.agent.execute('noop', {}, { token, requestId: `ro-${i}` })),
    );
    t.ok(
      answers.every((a) => a.status === 'completed'),
      'every request is served without Redis',
    );
    const failedCalls = async () => {
      const text = await d.app.metrics.metrics();
      return [...text.matchAll(/^toolbus_redis_errors_total\{[^}]*\} (\d+)$/gm)].reduce(
        (sum, m) => sum + Number(m[1]),
        0,
      );
    };
    const failed = await failedCalls();
    t.ok(failed >= 20, `the failed calls are all counted (${failed})`);
    t.equal(lines().length, 1, `one line for ${failed} failed calls`);
    t.match(
      lines()[0],
      { level: 40, msg: /^redis unavailable; continuing without it/, op: String, err: { stack: String } },
      'a warning with the first error',
    );

    await h.redis.start();
    let n = 0;
    await eventually(
      async () => {
        await h.agent.execute('noop', {}, { token, requestId: `ro-after-${n++}` });
        return lines().some((l) => l.msg === 'redis answers again');
      },
      30_000,
      'the line saying Redis is back',
    );
    t.equal(lines().length, 2, 'and one line when it is back');
    const back = lines()[1];
    t.match(back, { level: 30, msg: 'redis answers again' });
    t.ok(Number(back?.['failures']) >= failed, 'counting the failed calls of the outage');
    t.equal(
      Number(back?.['failures']),
      Number(back?.['unlogged']) + 1,
      'all of them but the first left out of the log',
    );
  },
);
