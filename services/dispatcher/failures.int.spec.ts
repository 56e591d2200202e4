import t from 'tap';
import { Redis } from 'ioredis';
import { subjects, verifyChain, type JsonObject } from '../../contracts/index.ts';
import type { EventData, ExpectedRevision } from '../../lib/eventstore/types.ts';
import { connectionIdentity } from '../../lib/nats.ts';
import { eventually, harness, rawRequest } from './test/harness.ts';

t.test('tools that fail end in ToolFailed with the right code, and others keep being served', async (t) => {
  const h = await harness(t, { DISPATCH_CONCURRENCY: '4' });
  const d = await h.start();
  const alice = await h.token('alice');
  const bob = await h.token('bob');

  t.test('TOOL_ERROR: a tool that throws', async (t) => {
    const a = await h.agent.execute(
      'fail',
      { message: 'disk on fire' },
      { token: alice, requestId: 'f-throw' },
    );
    t.match(a, { status: 'failed', error: { code: 'TOOL_ERROR', message: /disk on fire/ } });
    const events = (await h.events('alice')).filter((e) => e.metadata.requestId === 'f-throw');
    t.strictSame(
      events.map((e) => e.type),
      ['ToolRequested', 'ToolExecuting', 'ToolFailed'],
    );
    t.match(events[2]?.data, { error: { code: 'TOOL_ERROR' } });
    t.type(
      (events[2]?.data as { durationMs: unknown }).durationMs,
      'number',
      'a run that failed has a duration',
    );
  });

  t.test('OUTPUT_INVALID: a tool that returns the wrong shape', async (t) => {
    const a = await h.agent.execute('bad_output', {}, { token: alice, requestId: 'f-shape' });
    t.match(a, { status: 'failed', error: { code: 'OUTPUT_INVALID', message: /value/ } });
    const events = (await h.events('alice')).filter((e) => e.metadata.requestId === 'f-shape');
    t.strictSame(
      events.map((e) => e.type),
      ['ToolRequested', 'ToolExecuting', 'ToolFailed'],
    );
    t.notOk(JSON.stringify(events).includes('"wrong"'), 'the invalid output is not stored');
  });

  t.test('TIMEOUT: a tool that hangs (ignoring its signal) while another user is served', async (t) => {
    const hanging = h.agent.execute('hang', {}, { token: alice, requestId: 'f-hang' });
    const served: string[] = [];
    for (let i = 0; i < 5; i++) {
      const a = await h.agent.execute('echo', { i }, { token: bob, requestId: `f-bob-${i}` });
      if (a.status === 'completed') served.push(a.requestId);
    }
    t.equal(served.length, 5, 'bob is served while alice’s tool hangs');
    const a = await hanging;
    t.match(a, { status: 'failed', error: { code: 'TIMEOUT', details: { timeoutMs: 1500 } } });
    const events = (await h.events('alice')).filter((e) => e.metadata.requestId === 'f-hang');
    t.strictSame(
      events.map((e) => e.type),
      ['ToolRequested', 'ToolExecuting', 'ToolFailed'],
    );
    // Timers run on the event loop's cached millisecond clock: a millisecond early by performance.now().
    t.ok((events[2]?.data as { durationMs: number }).durationMs >= 1495, 'failed after its timeout');
  });

  t.test('TIMEOUT frees the slot: more hanging tools than slots still all end', async (t) => {
    // 4 slots; 6 hanging tools: the last two only run once the first ones time out.
    const answers = await Promise.all(
      Array.from({ length: 6 }, (_, i) =>
        h.agent.execute('hang', {}, { token: alice, requestId: `f-hang-many-${i}` }),
      ),
    );
    t.ok(
      answers.every((a) => a.status === 'failed' && a.error.code === 'TIMEOUT'),
      'all six timed out',
    );
    const ok = await h.agent.execute('noop', {}, { token: bob, requestId: 'f-after-hangs' });
    t.equal(ok.status, 'completed', 'and the dispatcher serves again');
    await eventually(() => d.active === 0, 10_000, 'every slot to be free');
    t.pass('no slot is left taken');
  });

  t.test('TIMEOUT: a tool that blocks the process past its deadline (cpu_hog)', async (t) => {
    const hog = h.agent.execute('cpu_hog', { ms: 2_500 }, { token: alice, requestId: 'f-hog' });
    const other = h.agent.execute('noop', {}, { token: bob, requestId: 'f-bob-during-hog' });
    t.match(await hog, { status: 'failed', error: { code: 'TIMEOUT' } });
    t.equal((await other).status, 'completed', 'the other user is answered (after the block)');
    const quick = await h.agent.execute('cpu_hog', { ms: 10 }, { token: alice, requestId: 'f-hog-short' });
    t.equal(quick.status, 'completed', 'a short spin completes');
  });

  t.test('the streams stay valid chains', async (t) => {
    t.equal(verifyChain(await h.events('alice')), null);
    t.equal(verifyChain(await h.events('bob')), null);
  });
});

t.test(
  'a request whose handling keeps failing is given up: INTERNAL, recorded and answered once',
  async (t) => {
    const h = await harness(t, { DISPATCHER_MAX_FAILURES: '3' });
    // The real store, except that it refuses to start one request's execution: a fault that no
    // retry mends (a bug, an event the store will not take).
    let refused = 0;
    const store = new Proxy(h.store, {
      get(target, prop) {
        if (prop === 'append') {
          return (stream: string, events: EventData[], expected: ExpectedRevision) => {
            const poisoned = events.some(
              (e) => e.type === 'ToolExecuting' && JSON.stringify(e.metadata).includes('"poison"'),
            );
            if (poisoned) {
              refused++;
              return Promise.reject(new Error('the store refuses this event'));
            }
            return target.append(stream, events, expected);
          };
        }
        const value: unknown = Reflect.get(target, prop);
        return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
      },
    });
    await h.start({}, { store });
    const carol = await h.token('carol');

    const poisoned = h.agent.execute('noop', {}, { token: carol, requestId: 'poison', timeoutMs: 60_000 });
    const other = await h.agent.execute('echo', { x: 1 }, { token: carol, requestId: 'healthy' });
    t.equal(other.status, 'completed', 'the same user is served while the bad request is retried');

    const answer = await poisoned;
    t.match(answer, { status: 'failed', error: { code: 'INTERNAL', details: { failures: 3 } } });
    t.equal(refused, 3, 'handled three times, then given up');
    const events = (await h.events('carol')).filter((e) => e.metadata.requestId === 'poison');
    t.strictSame(
      events.map((e) => e.type),
      ['ToolRequested', 'ToolFailed'],
      'one terminal event, after a ToolRequested',
    );
    const again = await h.agent.execute('noop', {}, { token: carol, requestId: 'poison' });
    t.match(again, { status: 'failed', error: { code: 'INTERNAL' } }, 'a repeat gets the same answer');
    t.equal(refused, 3, 'and runs nothing');
    t.equal(verifyChain(await h.events('carol')), null);
  },
);

t.test('a request given up and then repeated gets its INTERNAL answer, not a conflict', async (t) => {
  const h = await harness(t, { DISPATCHER_MAX_FAILURES: '2' });
  // The store refuses these requests' refusal (unknown tool) and first step (known tool).
  const store = new Proxy(h.store, {
    get(target, prop) {
      if (prop === 'append') {
        return (stream: string, events: EventData[], expected: ExpectedRevision) =>
          events.some(
            (e) =>
              JSON.stringify(e.metadata).includes('"poison') &&
              (JSON.stringify(e.data).includes('UNKNOWN_TOOL') || e.type === 'ToolExecuting'),
          )
            ? Promise.reject(new Error('the store refuses this event'))
            : target.append(stream, events, expected);
      }
      const value: unknown = Reflect.get(target, prop);
      return typeof value === 'function' ? (value as (...a: unknown[]) => unknown).bind(target) : value;
    },
  });
  await h.start({}, { store });
  const token = await h.token('carol');
  const redis = new Redis(h.redis.url);
  t.teardown(() => redis.disconnect());
  const cases: Array<[string, string, JsonObject]> = [
    ['poison-u', 'no_such_tool', { a: 1 }],
    ['poison-k', 'echo', { a: 1, n: { z: [1] } }],
  ];
  for (const [requestId, tool, args] of cases) {
    const first = await h.agent.execute(tool, args, { token, requestId, timeoutMs: 60_000 });
    t.match(first, { status: 'failed', error: { code: 'INTERNAL' } }, `${requestId}: given up`);
    await redis.flushall();
    const again = await rawRequest(h, {
      subject: subjects.request('carol', connectionIdentity(h.nc)),
      body: { requestId, tool, args },
      token,
    });
    t.match(
      again,
      { error: { code: 'INTERNAL' } },
      `${requestId}: a repeat, read from the store, gets it again`,
    );
  }
});
