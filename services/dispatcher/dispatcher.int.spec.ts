import t from 'tap';
import {
  eventIdFor,
  executionIdFor,
  GENESIS_HASH,
  Notification,
  subjects,
  ToolEvent,
  verifyChain,
} from '../../contracts/index.ts';
import { z } from 'zod';
import { defineTool } from '../../lib/tools/index.ts';
import { eventually, harness } from './test/harness.ts';

/** A tool that quotes its sensitive argument in the error it throws. */
const leaky = defineTool({
  name: 'leaky',
  version: '1.0.0',
  description: 'Test tool: fails with a message that quotes its password.',
  input: z.object({ user: z.string(), password: z.string() }),
  output: z.object({}),
  sensitive: { input: ['password'] },
  timeoutMs: 2_000,
  async run({ user, password }) {
    throw new Error(`login failed for ${user} with password ${password}`);
  },
});

t.test('the happy path: events, chain, answer, notifications', async (t) => {
  const h = await harness(t);
  await h.start();
  const token = await h.token('alice');

  const interim: string[] = [];
  const answer = await h.agent.execute(
    'echo',
    { text: 'hello', n: 2 },
    {
      token,
      requestId: 'req-happy',
      correlationId: 'corr-1',
      onProgress: (a) => interim.push(a.status),
    },
  );
  const executionId = executionIdFor('alice', 'req-happy');
  t.match(answer, {
    status: 'completed',
    requestId: 'req-happy',
    executionId,
    correlationId: 'corr-1',
    result: { text: 'hello', n: 2 },
    cached: false,
  });
  t.strictSame(interim, ['requested', 'executing'], 'interim answers before the terminal one');

  const events = await h.events('alice');
  t.strictSame(
    events.map((e) => e.type),
    ['ToolRequested', 'ToolExecuting', 'ToolCompleted'],
  );
  t.strictSame(
    events.map((e) => e.id),
    [
      eventIdFor(executionId, 'requested'),
      eventIdFor(executionId, 'executing:1'),
      eventIdFor(executionId, 'terminal'),
    ],
    'deterministic event ids',
  );
  for (const e of events) t.ok(ToolEvent.safeParse(e).success, `${e.type} passes its schema`);
  t.equal(verifyChain(events, GENESIS_HASH), null, 'the stream is a valid hash chain from genesis');
  t.strictSame(
    events.map((e) => e.metadata.causationId),
    ['req-happy', events[0]!.id, events[1]!.id],
    'each event is caused by the one before; the first by the request',
  );
  t.ok(events.every((e) => e.metadata.correlationId === 'corr-1' && e.metadata.userId === 'alice'));
  t.match(events[0]!.data, { tool: 'echo', version: '1.0.0', args: { text: 'hello', n: 2 } });
  t.match(events[1]!.data, { attempt: 1, runner: 'test-d1', timeoutMs: 5000 });

  // A second execution continues the same chain.
  const second = await h.agent.execute('noop', {}, { token, requestId: 'req-happy-2' });
  t.equal(second.status, 'completed');
  const all = await h.events('alice');
  t.equal(all.length, 6);
  t.equal(verifyChain(all), null, 'still one chain after a second execution');

  const mine = await eventually(
    () => {
      const n = h.published.filter((p) => p.kind === 'event' && p.userId === 'alice');
      return n.length === 6 && n;
    },
    10_000,
    'six published events',
  );
  for (const n of mine) t.ok(Notification.safeParse(n).success, 'published as a contracts Notification');
  t.strictSame(
    mine.map((n) => (n.kind === 'event' ? n.revision : -1)),
    [0, 1, 2, 3, 4, 5],
    'published once each, in revision order',
  );
  t.strictSame(
    mine.map((n) => (n.kind === 'event' ? n.name : '')),
    [
      'tool_requested',
      'tool_executing',
      'tool_completed',
      'tool_requested',
      'tool_executing',
      'tool_completed',
    ],
  );
  t.strictSame(
    mine.map((n) => (n.kind === 'event' ? n.event : null)),
    all,
    'the published events are the stored ones',
  );
});

t.test('sensitive fields are redacted everywhere: events, notifications, answers, logs', async (t) => {
  const h = await harness(t);
  await h.start({}, { tools: [leaky] });
  const token = await h.token('bob');
  const secret = 'hunter2-very-secret-value';
  const answer = await h.agent.execute(
    'echo',
    { text: 'visible', secret },
    { token, requestId: 'req-secret' },
  );
  t.match(answer, { status: 'completed', result: { text: 'visible', secret: '[REDACTED]' } });

  const events = await h.events('bob');
  t.match(events[0]!.data, { args: { text: 'visible', secret: '[REDACTED]' }, redacted: ['secret'] });
  t.match(events[2]!.data, { result: { text: 'visible', secret: '[REDACTED]' }, redacted: ['secret'] });
  await eventually(() => h.published.filter((p) => p.kind === 'event' && p.userId === 'bob').length === 3);
  t.notOk(JSON.stringify(events).includes(secret), 'not in the stored events');
  t.notOk(JSON.stringify(h.published).includes(secret), 'not in the published events');
  t.notOk(h.logs.text.includes(secret), 'not in the logs');
  const again = await h.agent.execute(
    'echo',
    { text: 'visible', secret },
    { token, requestId: 'req-secret' },
  );
  t.strictSame(again, answer, 'a retry gets the same (redacted) answer');

  const password = 'correct-horse-battery';
  const failed = await h.agent.execute('leaky', { user: 'bob', password }, { token, requestId: 'req-leaky' });
  t.match(failed, {
    status: 'failed',
    error: { code: 'TOOL_ERROR', message: 'login failed for bob with password [REDACTED]' },
  });
  const all = JSON.stringify(await h.events('bob'));
  t.notOk(all.includes(password), 'a sensitive value quoted in an error message is cut out of it');
  t.notOk(h.logs.text.includes(password));
});

t.test('progress: published on toolbus.progress.<user> and answered when asked for', async (t) => {
  const h = await harness(t);
  await h.start({}, { progressIntervalMs: 0 });
  const token = await h.token('carol');
  const seen: Notification[] = [];
  h.nc.subscribe(subjects.progress('carol'), {
    callback: (_e, m) => {
      seen.push(m.json<Notification>());
    },
  });
  const fractions: number[] = [];
  const answer = await h.agent.execute(
    'progress',
    { steps: 4, delayMs: 30 },
    {
      token,
      requestId: 'req-progress',
      onProgress: (a) => {
        if (a.status === 'progress') fractions.push(a.fraction);
      },
    },
  );
  t.match(answer, { status: 'completed', result: { steps: 4 } });
  t.strictSame(fractions, [0.25, 0.5, 0.75, 1], 'progress answers, increasing');
  await eventually(() => seen.length >= 4, 5_000, 'progress notifications');
  t.ok(
    seen.every((n) => Notification.safeParse(n).success && n.kind === 'progress'),
    'progress notifications are contracts Notifications',
  );
  t.match(seen[0], {
    kind: 'progress',
    userId: 'carol',
    executionId: executionIdFor('carol', 'req-progress'),
    fraction: 0.25,
  });
  const types = (await h.events('carol')).map((e) => e.type);
  t.strictSame(types, ['ToolRequested', 'ToolExecuting', 'ToolCompleted'], 'progress is not stored');
});

t.test('logs never carry a token', async (t) => {
  const h = await harness(t);
  await h.start();
  const good = await h.token('dave');
  const expired = await h.token('dave', ['user'], Math.floor(Date.now() / 1000) - 60);
  const forged = `${good.slice(0, -4)}AAAA`;
  await h.agent.execute('noop', {}, { token: good, requestId: 'req-log-1' });
  for (const [i, token] of [expired, forged].entries()) {
    const a = await h.agent.execute('noop', {}, { token, requestId: `req-log-bad-${i}` });
    t.match(a, { status: 'failed', error: { code: 'UNAUTHENTICATED' } });
  }
  await h.agent.execute('fail', {}, { token: good, requestId: 'req-log-2' });
  t.ok(h.logs.lines.length > 5, 'there are logs');
  t.ok(h.logs.text.includes('request refused: unauthenticated'), 'the refusal is logged');
  for (const token of [good, expired, forged]) {
    t.notOk(h.logs.text.includes(token), 'no token in the logs');
    t.notOk(h.logs.text.includes(token.split('.')[2]!), 'not even its signature');
  }
});
