/**
 * INTAKE_MAX_PER_AGENT: the intake holds at most that many requests of one user from one agent
 * (the stream's bound per subject, `toolbus.requests.<user>.<agent>`). The next one is refused at
 * once, nothing recorded, and the agent is told why; other users, and other agents of the same
 * user, are not held back by it; the refused request runs when sent again once there is room.
 *
 * The requests are made to wait by publishing while no dispatcher consumes.
 */
import t from 'tap';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { headers } from '@nats-io/transport-node';
import { jetstream as names, subjects } from '../../contracts/index.ts';
import { eventually, harness } from './test/harness.ts';

t.test('one agent holds at most INTAKE_MAX_PER_AGENT requests of one user in the intake', async (t) => {
  const h = await harness(t, { INTAKE_MAX_PER_AGENT: '2' });
  // Creates the intake with the bound, then stops consuming: what is published now waits.
  await (await h.start()).close();
  const jsm = await jetstreamManager(h.nc);
  t.match((await jsm.streams.info(names.requestsStream)).config, {
    max_msgs_per_subject: 2,
    discard_new_per_subject: true,
  });
  const alice = await h.token('alice');
  const bob = await h.token('bob');
  const stored = (n: number) =>
    eventually(
      async () => (await jsm.streams.info(names.requestsStream)).state.messages === n,
      20_000,
      `${n} requests stored`,
    );

  const run = (token: string, requestId: string) =>
    h.agent.execute('echo', { text: requestId }, { token, requestId, timeoutMs: 60_000 });
  const waiting = [run(alice, 'a-1'), run(alice, 'a-2')];
  await stored(2);

  const refused = await run(alice, 'a-3');
  t.match(refused, {
    status: 'failed',
    requestId: 'a-3',
    executionId: null,
    error: {
      code: 'OVERLOADED',
      message: /INTAKE_MAX_PER_AGENT.*nothing was recorded/,
      details: { retryAfterMs: Number, limit: 'agent' },
    },
  });
  t.equal((await jsm.streams.info(names.requestsStream)).state.messages, 2, 'the third was not stored');

  // Another user of the same agent, and another agent of the same user, still get in.
  waiting.push(run(bob, 'b-1'));
  await stored(3);
  const auth = headers();
  auth.set('Authorization', `Bearer ${alice}`);
  const ack = await jetstream(h.nc).publish(
    subjects.request('alice', 'another-agent'),
    JSON.stringify({ requestId: 'o-1', tool: 'echo', args: { text: 'o-1' } }),
    { msgID: 'alice:o-1', headers: auth },
  );
  t.notOk(ack.duplicate, "another agent's request for the same user was stored");

  // Once a dispatcher runs them, each is answered, and the refused one runs when sent again.
  await h.start();
  for (const answer of await Promise.all(waiting)) t.match(answer, { status: 'completed' });
  await eventually(
    async () =>
      (await h.events('alice')).some((e) => e.metadata.requestId === 'o-1' && e.type === 'ToolCompleted'),
    20_000,
    "the other agent's request ran",
  );
  t.match(await run(alice, 'a-3'), { status: 'completed', result: { text: 'a-3' } }, 'sent again, it runs');
  t.same(
    (await h.events('alice')).filter((e) => e.metadata.requestId === 'a-3').map((e) => e.type),
    ['ToolRequested', 'ToolExecuting', 'ToolCompleted'],
    'one execution of the refused request: its refusal recorded nothing',
  );
});

t.test('an instance started with another bound brings the stream in line; 0 lifts it', async (t) => {
  const h = await harness(t, { INTAKE_MAX_PER_AGENT: '5' });
  await (await h.start()).close();
  const jsm = await jetstreamManager(h.nc);
  t.match((await jsm.streams.info(names.requestsStream)).config, { max_msgs_per_subject: 5 });
  await (await h.start({ INTAKE_MAX_PER_AGENT: '0' })).close();
  const config = (await jsm.streams.info(names.requestsStream)).config;
  t.equal(config.max_msgs_per_subject, -1, 'no bound per subject');
  t.notOk(config.discard_new_per_subject);
});

t.test('a bound is not set over a backlog it would cut: nats-server would drop the oldest', async (t) => {
  const h = await harness(t, { INTAKE_MAX_PER_AGENT: '0' });
  await (await h.start()).close();
  const jsm = await jetstreamManager(h.nc);
  const alice = await h.token('alice');
  const waiting = ['w-1', 'w-2', 'w-3'].map((requestId) =>
    h.agent.execute('echo', { text: requestId }, { token: alice, requestId, timeoutMs: 60_000 }),
  );
  await eventually(
    async () => (await jsm.streams.info(names.requestsStream)).state.messages === 3,
    20_000,
    '3 requests stored',
  );
  // Started with a bound of 2 while alice's subject holds 3: left unbounded, nothing dropped.
  await h.start({ INTAKE_MAX_PER_AGENT: '2' });
  t.equal((await jsm.streams.info(names.requestsStream)).config.max_msgs_per_subject, -1, 'not set yet');
  t.match(h.logs.text, /INTAKE_MAX_PER_AGENT not applied yet/);
  for (const answer of await Promise.all(waiting)) t.match(answer, { status: 'completed' });
  // Once they are fewer, the next start sets it.
  await h.start({ INTAKE_MAX_PER_AGENT: '2' });
  t.equal((await jsm.streams.info(names.requestsStream)).config.max_msgs_per_subject, 2, 'set');
});

t.test('a bound on deliveries set on the consumer is lifted at start: waits would be dropped', async (t) => {
  const h = await harness(t);
  await (await h.start()).close();
  const jsm = await jetstreamManager(h.nc);
  // As an operator might, with the nats CLI: after 3 deliveries JetStream would stop handing the
  // request back, and a call waiting for approval (rechecked by redelivery) would never be answered.
  await jsm.consumers.update(names.requestsStream, names.dispatcherConsumer, { max_deliver: 3 });
  t.equal((await jsm.consumers.info(names.requestsStream, names.dispatcherConsumer)).config.max_deliver, 3);
  const d = await h.start();
  t.equal(
    (await jsm.consumers.info(names.requestsStream, names.dispatcherConsumer)).config.max_deliver,
    -1,
    'unbounded again',
  );
  t.match(h.logs.text, /"maxDeliverWas":3.*intake consumer updated/);
  const answer = await h.agent.execute('echo', { text: 'hi' }, { token: await h.token('alice') });
  t.match(answer, { status: 'completed' });
  await d.close();
});
