import { connectionIdentity } from '../../lib/nats.ts';
import t from 'tap';
import { executionIdFor, subjects, verifyChain, type ToolEvent } from '../../contracts/index.ts';
import { probeRunner } from './liveness.ts';
import { eventually, harness, rawRequest } from './test/harness.ts';

const runnersOf = (events: ToolEvent[]) =>
  events.flatMap((e) => (e.type === 'ToolExecuting' ? [e.data.runner] : []));

t.test('two dispatcher instances share the intake', async (t) => {
  const h = await harness(t, { DISPATCH_CONCURRENCY: '3' });
  const d1 = await h.start();
  const d2 = await h.start();
  const users = ['ann', 'ben'];
  const tokens = Object.fromEntries(
    await Promise.all(users.map(async (u) => [u, await h.token(u)] as const)),
  );

  const answers = await Promise.all(
    Array.from({ length: 24 }, (_, i) => {
      const user = users[i % 2]!;
      return h.agent.execute('sleep_idempotent', { ms: 200 }, { token: tokens[user]!, requestId: `s-${i}` });
    }),
  );
  t.ok(
    answers.every((a) => a.status === 'completed'),
    'every request completed',
  );

  const all = [...(await h.events('ann')), ...(await h.events('ben'))];
  const runners = runnersOf(all);
  t.equal(runners.length, 24, 'one execution per request');
  t.ok(
    runners.includes(d1.dispatcherId) && runners.includes(d2.dispatcherId),
    `both instances ran some (${runners.filter((r) => r === d1.dispatcherId).length} / ${runners.filter((r) => r === d2.dispatcherId).length})`,
  );
  for (const u of users) {
    const events = await h.events(u);
    t.equal(events.filter((e) => e.type === 'ToolCompleted').length, 12, `${u}: twelve terminal events`);
    t.equal(verifyChain(events), null, `${u}: both instances wrote one valid chain`);
  }
});

t.test('a live runner is asked before its execution is taken over', async (t) => {
  const h = await harness(t);
  const d1 = await h.start();
  const token = await h.token('liv');
  let executing = false;
  const running = h.agent.execute(
    'sleep',
    { ms: 1_500 },
    {
      token,
      requestId: 'live-1',
      onProgress: (a) => (executing ||= a.status === 'executing'),
    },
  );
  await eventually(() => executing, 10_000, 'the tool to run');
  const executionId = executionIdFor('liv', 'live-1');
  t.equal(
    await probeRunner(h.nc, d1.dispatcherId, executionId, 2_000),
    'running',
    'its runner says it runs it',
  );
  t.equal(
    await probeRunner(h.nc, d1.dispatcherId, executionIdFor('liv', 'other'), 2_000),
    'gone',
    'but not another one',
  );
  t.equal(
    await probeRunner(h.nc, 'no-such-dispatcher', executionId, 2_000),
    'gone',
    'a runner nobody answers for is gone',
  );
  t.equal(
    await probeRunner(h.nc, 'bad.id', executionId, 2_000),
    'gone',
    'an id that is not a subject token is gone',
  );
  t.match(await running, { status: 'completed' });
});

t.test('an instance that stops gracefully finishes what it runs; the other takes the rest', async (t) => {
  const h = await harness(t, { DISPATCH_CONCURRENCY: '2', SHUTDOWN_GRACE_MS: '5000' });
  const d1 = await h.start();
  const token = await h.token('gus');
  const pending = Array.from({ length: 6 }, (_, i) =>
    h.agent.execute('sleep', { ms: 400 }, { token, requestId: `g-${i}`, timeoutMs: 30_000 }),
  );
  await eventually(() => d1.active > 0, 10_000, 'd1 to start work');
  const d2 = await h.start();
  await d1.close();
  const answers = await Promise.all(pending);
  t.ok(
    answers.every((a) => a.status === 'completed'),
    'all six completed: none interrupted',
  );
  const events = await h.events('gus');
  t.equal(events.filter((e) => e.type === 'ToolExecuting').length, 6, 'each ran once');
  t.ok(runnersOf(events).includes(d2.dispatcherId), 'the second instance took over the queue');
});

t.test(
  'a duplicate reaching another instance while the first runs: deferred, then answered the same',
  async (t) => {
    const h = await harness(t);
    const d1 = await h.start();
    const d2 = await h.start();
    const token = await h.token('dora');
    let executing = false;
    const first = h.agent.execute(
      'sleep',
      { ms: 2_000 },
      {
        token,
        requestId: 'dd-1',
        timeoutMs: 60_000,
        onProgress: (a) => (executing ||= a.status === 'executing'),
      },
    );
    await eventually(() => executing, 10_000, 'the first to run');
    // Copies without Nats-Msg-Id: JetStream keeps them all; some reach the other instance.
    const copies = await Promise.all(
      [1, 2, 3, 4].map(() =>
        rawRequest(h, {
          subject: subjects.request('dora', connectionIdentity(h.nc)),
          body: { requestId: 'dd-1', tool: 'sleep', args: { ms: 2_000 } },
          token,
          waitMs: 30_000,
        }),
      ),
    );
    const answer = await first;
    t.match(answer, { status: 'completed' });
    for (const c of copies) t.strictSame(c, answer, 'each copy gets the first answer');
    const events = (await h.events('dora')).filter((e) => e.metadata.requestId === 'dd-1');
    t.strictSame(
      events.map((e) => e.type),
      ['ToolRequested', 'ToolExecuting', 'ToolCompleted'],
      'one run, never interrupted',
    );
    const metrics = (await d1.app.metrics.metrics()) + (await d2.app.metrics.metrics());
    t.ok(
      !/toolbus_recoveries_total\{[^}]*action="(rerun|interrupted)"/.test(metrics),
      'no take-over happened',
    );
  },
);

t.test('tools announced by a worker are run remotely', async (t) => {
  const h = await harness(t);
  const d = await h.start();
  const { serveTools } = await import('../../lib/tools/index.ts');
  const { z } = await import('zod');
  const { defineTool } = await import('../../lib/tools/index.ts');
  const remoteOnly = defineTool({
    name: 'remote_sum',
    version: '2.0.0',
    description: 'Adds two numbers, in a worker.',
    input: z.object({ a: z.number(), b: z.number() }),
    output: z.object({ sum: z.number(), pid: z.number() }),
    timeoutMs: 3_000,
    async run({ a, b }) {
      return { sum: a + b, pid: process.pid };
    },
  });
  const worker = await serveTools(h.nc, [remoteOnly], {
    workerId: 'worker-1',
    secret: h.config.WORKER_SECRET,
    announceIntervalMs: 0,
  });
  t.teardown(() => worker.stop());
  await eventually(() => d.registry.resolve('remote_sum'), 10_000, 'the announcement to be accepted');
  t.equal(d.registry.resolve('remote_sum')?.source, 'worker:worker-1');
  const token = await h.token('wanda');
  const a = await h.agent.execute('remote_sum', { a: 2, b: 3 }, { token, requestId: 'rm-1' });
  t.match(a, { status: 'completed', result: { sum: 5 } });
  const bad = await h.agent.execute('remote_sum', { a: 'x', b: 3 }, { token, requestId: 'rm-2' });
  t.match(bad, { status: 'failed', error: { code: 'VALIDATION' } });
  const events = (await h.events('wanda')).filter((e) => e.metadata.requestId === 'rm-1');
  t.strictSame(
    events.map((e) => e.type),
    ['ToolRequested', 'ToolExecuting', 'ToolCompleted'],
  );
  t.match(events[0]?.data, { tool: 'remote_sum', version: '2.0.0' });
});
