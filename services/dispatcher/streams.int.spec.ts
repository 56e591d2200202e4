import t from 'tap';
import { pino } from 'pino';
import { executionIdFor, verifyChain, type ExecutionCommand } from '../../contracts/index.ts';
import { createPostgresEventStore } from '../../lib/eventstore/postgres.ts';
import { connectNats } from '../../lib/nats.ts';
import { readUserEvents } from '../../test/support/events.ts';
import { createTestDatabase } from '../../test/support/postgres.ts';
import { startNats } from '../../test/support/processes.ts';
import { handleExecution } from './commands.ts';
import { newExecution, UserStreams } from './streams.ts';

const request = (tool: string): ExecutionCommand => ({
  type: 'Request',
  data: { tool, version: '1.0.0', args: {}, redacted: [] },
});
const start = (runner: string): ExecutionCommand => ({
  type: 'StartAttempt',
  data: { runner, timeoutMs: 1000 },
});
/** A re-run: the runner of the running attempt is dead and the tool idempotent. */
const rerunOn = (runner: string): ExecutionCommand => ({
  type: 'Recover',
  data: {
    liveness: 'dead',
    idempotent: true,
    maxAttempts: 10,
    runner,
    timeoutMs: 1000,
    now: new Date().toISOString(),
  },
});
const complete = (n: number): ExecutionCommand => ({
  type: 'Complete',
  data: { result: { n }, redacted: [], durationMs: 1, cached: false },
});
const ref = (userId: string, requestId: string) => ({
  userId,
  requestId,
  executionId: executionIdFor(userId, requestId),
  correlationId: requestId,
});

/** Two writers (as two dispatcher instances would be) on one store and one user stream. */
async function setup(t: { teardown(fn: () => Promise<void> | void): void }, tailTrustMs?: number) {
  const nats = await startNats();
  const db = await createTestDatabase();
  const store = await createPostgresEventStore({ connectionString: db.url });
  const nc = await connectNats(nats.url, 'streams-test');
  let conflicts = 0;
  const log = pino({ level: 'silent' });
  const make = () =>
    new UserStreams({
      store,
      nc,
      log,
      now: () => new Date(),
      onConflict: () => conflicts++,
      ...(tailTrustMs === undefined ? {} : { tailTrustMs }),
    });
  t.teardown(async () => {
    await nc.close();
    await store.close();
    await nats.stop();
    await db.drop();
  });
  return { store, nc, a: make(), b: make(), conflicts: () => conflicts };
}

t.test('two writers on one user stream: every append lands, the chain holds', async (t) => {
  const { store, a, b, conflicts } = await setup(t);
  const runs = Array.from({ length: 30 }, (_, i) => {
    const writer = i % 2 === 0 ? a : b;
    const execution = newExecution(ref('uma', `r-${i}`));
    return (async () => {
      await handleExecution(writer, execution, [request('noop'), start(`w${i % 2}`)], { onlyNew: true });
      await handleExecution(writer, execution, complete(i), { attempt: 1 });
      return execution;
    })();
  });
  const executions = await Promise.all(runs);
  t.ok(
    executions.every((e) => e.state.status === 'completed'),
    'every execution completed',
  );
  const events = await readUserEvents(store, 'uma');
  t.equal(events.length, 90);
  t.strictSame(
    events.map((e) => e.revision),
    Array.from({ length: 90 }, (_, i) => i),
    'contiguous revisions',
  );
  t.equal(verifyChain(events.map((e) => e.event)), null, 'one valid chain');
  t.ok(conflicts() > 0, `the writers did conflict (${conflicts()} times) and recovered`);
});

t.test(
  'two writers taking turns on one user: after each has met the other once, no append conflicts',
  async (t) => {
    // Trust no cached tail once another writer showed (in production, tails older than 10 ms).
    const { store, a, b, conflicts } = await setup(t, 0);
    const rounds = 12;
    for (let i = 0; i < rounds; i++) {
      // One execution at a time, each on the other writer: the other's tail is always stale.
      const writer = i % 2 === 0 ? a : b;
      const execution = newExecution(ref('tess', `turn-${i}`));
      await handleExecution(writer, execution, [request('noop'), start(`w${i % 2}`)], { onlyNew: true });
      await handleExecution(writer, execution, complete(i), { attempt: 1 });
      t.equal(execution.state.status, 'completed', `execution ${i} completed`);
    }
    // Each writer's first stale tail conflicts once (b's first turn reads, having none cached).
    t.ok(
      conflicts() <= 2,
      `${conflicts()} conflicts in ${rounds} turns (a stale tail each turn without the re-check)`,
    );
    const events = (await readUserEvents(store, 'tess')).map((e) => e.event);
    t.equal(events.length, 3 * rounds, 'every event of every turn is stored once');
    t.equal(verifyChain(events), null, 'the chain holds');
  },
);

t.test('two writers ending the same execution: exactly one terminal event', async (t) => {
  const { store, a, b } = await setup(t);
  const r = ref('vic', 'same');
  const first = newExecution(r);
  await handleExecution(a, first, [request('sleep'), start('a')], { onlyNew: true });

  // b learns of the execution from the store, as a dispatcher does after a redelivery.
  const seen = await b.load(r);
  t.equal(seen.state.status, 'executing');
  const [ra, rb] = await Promise.all([
    handleExecution(a, first, complete(1), { attempt: 1 }),
    handleExecution(b, seen, complete(2), { attempt: 1 }),
  ]);
  t.equal(ra.appended.length + rb.appended.length, 1, 'one of them appended the terminal event');
  t.equal(first.state.status, 'completed');
  t.equal(seen.state.status, 'completed', 'the other sees the terminal event after its conflict');
  const events = (await readUserEvents(store, 'vic')).map((e) => e.event);
  t.strictSame(
    events.map((e) => e.type),
    ['ToolRequested', 'ToolExecuting', 'ToolCompleted'],
  );
  t.equal(verifyChain(events), null);
});

t.test('an append of an execution that already exists (lost idempotency cache) finds it', async (t) => {
  const { store, a, b } = await setup(t);
  const r = ref('wes', 'again');
  const e1 = newExecution(r);
  await handleExecution(a, e1, [request('noop'), start('a')], { onlyNew: true });
  await handleExecution(a, e1, complete(1), { attempt: 1 });
  for (let i = 0; i < 5; i++)
    await handleExecution(a, newExecution(ref('wes', `other-${i}`)), [request('noop'), start('a')]);

  // b believes the execution is new (as after a Redis flush): the append conflicts and b reads it back.
  const e2 = newExecution(r);
  const result = await handleExecution(b, e2, [request('noop'), start('b')], { onlyNew: true });
  t.strictSame(result.appended, [], 'nothing appended');
  t.equal(e2.state.status, 'completed', 'the stored execution was found');
  t.strictSame(
    e2.events.map((e) => e.type),
    ['ToolRequested', 'ToolExecuting', 'ToolCompleted'],
  );
  t.equal((await readUserEvents(store, 'wes')).length, 13);
});

t.test('a writer that read an execution before another ended it appends nothing after the end', async (t) => {
  const { store, a, b } = await setup(t);
  const r = ref('xan', 'taken-for-dead');
  const running = newExecution(r);
  await handleExecution(a, running, [request('sleep'), start('a')], { onlyNew: true });

  // b reads the execution (a redelivery, its runner not answering a probe), then a finishes it,
  // and b's view of the stream's tail is refreshed by another execution of the same user.
  const seen = await b.load(r);
  await handleExecution(a, running, complete(1), { attempt: 1 });
  await handleExecution(b, newExecution(ref('xan', 'unrelated')), [request('noop'), start('b')]);

  const result = await handleExecution(b, seen, rerunOn('b'), { attempt: 1 });
  t.strictSame(result.appended, [], 'no second attempt');
  t.equal(seen.state.status, 'completed', 'b now knows the execution ended');
  const types = (await readUserEvents(store, 'xan'))
    .filter((e) => e.event.metadata.requestId === 'taken-for-dead')
    .map((e) => e.event.type);
  t.strictSame(types, ['ToolRequested', 'ToolExecuting', 'ToolCompleted']);
});

t.test('the same, when the writer reads the stream tail only after the execution ended', async (t) => {
  const { store, a, b } = await setup(t);
  const r = ref('yul', 'taken-for-dead');
  const running = newExecution(r);
  await handleExecution(a, running, [request('sleep'), start('a')], { onlyNew: true });
  const seen = await b.load(r);
  await handleExecution(a, running, complete(1), { attempt: 1 });

  const result = await handleExecution(b, seen, rerunOn('b'), { attempt: 1 });
  t.strictSame(result.appended, [], 'no second attempt');
  t.equal(seen.state.status, 'completed');
  t.equal((await readUserEvents(store, 'yul')).length, 3);
});

t.test(
  'two views of one execution in one process: the later step sees what the other appended',
  async (t) => {
    const { store, a } = await setup(t);
    const r = ref('zoe', 'two-views');
    // The handling of a redelivery, and a cancel that read the execution on its own.
    const handling = newExecution(r);
    await handleExecution(a, handling, [request('sleep'), start('a')], { onlyNew: true });
    const cancel = await a.load(r);
    await handleExecution(a, handling, complete(1), { attempt: 1 });

    const fail: ExecutionCommand = {
      type: 'Fail',
      data: { error: { code: 'CANCELLED', message: 'cancelled' }, durationMs: null },
    };
    const result = await handleExecution(a, cancel, fail, { attempt: 1 });
    t.strictSame(result.appended, [], 'no second terminal event');
    t.equal(cancel.state.status, 'completed', 'the cancel learns the execution completed');
    t.strictSame(
      (await readUserEvents(store, 'zoe')).map((e) => e.event.type),
      ['ToolRequested', 'ToolExecuting', 'ToolCompleted'],
    );
  },
);
