/**
 * Decision 0035: a request that waited in the intake longer than INTAKE_MAX_WAIT_MS before a
 * dispatcher could start it, with more behind it, is not run: its agent is told OVERLOADED at
 * once, nothing is recorded, and the same request id sent again (within JetStream's duplicate
 * window, so under the same message id) runs. Requests that started (something stored), requests
 * Redis knows, requests nobody waits for (no reply subject) and the last of a backlog always run.
 *
 * The wait is made by publishing while no dispatcher consumes, then waiting until the requests
 * are older than the bound: an age, not a time bound on anything the test measures.
 */
import t from 'tap';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { headers } from '@nats-io/transport-node';
import { createAgentClient } from '../../lib/clients/agent.ts';
import { connectionIdentity, inboxFor } from '../../lib/nats.ts';
import { jetstream as names, subjects, type ToolEvent } from '../../contracts/index.ts';
import { recordExecution } from '../../test/support/events.ts';
import { eventually, harness, type AgentAnswerLike } from './test/harness.ts';

const MAX_WAIT_MS = 1_000;

const typesOf = (events: ToolEvent[], requestId: string) =>
  events.filter((e) => e.metadata.requestId === requestId).map((e) => e.type);

/** Resolves once `ms` have passed since `since` (epoch ms): the requests published then are that old. */
const olderThan = async (since: number, ms: number) => {
  while (Date.now() - since <= ms) {
    await new Promise((r) => setTimeout(r, Math.max(1, since + ms + 1 - Date.now())));
  }
};

t.test('requests that waited longer than INTAKE_MAX_WAIT_MS are answered OVERLOADED unrun', async (t) => {
  const h = await harness(t, { INTAKE_MAX_WAIT_MS: String(MAX_WAIT_MS), ACK_WAIT_MS: '1000' });
  const token = await h.token('sia');
  // A request that ran; then no dispatcher consumes the intake while the others wait.
  const first = await h.start();
  const done = await h.agent.execute('echo', { text: 'done' }, { token, requestId: 'done-1' });
  t.match(done, { status: 'completed' });
  await first.close();

  const js = jetstream(h.nc);
  const jsm = await jetstreamManager(h.nc);
  const subject = subjects.request('sia', connectionIdentity(h.nc));
  /** Publishes by hand (a reply subject of its own unless `replyTo: false`); `answer`: its terminal answer. */
  const publish = async (
    body: Record<string, unknown>,
    o: { msgId?: string; replyTo?: false } = {},
  ): Promise<{ answer: Promise<AgentAnswerLike> }> => {
    const inbox = inboxFor(h.nc);
    const sub = h.nc.subscribe(inbox);
    const answer = (async () => {
      for await (const m of sub) {
        const a = m.json<AgentAnswerLike>();
        if (a.status === 'completed' || a.status === 'failed') return a;
      }
      throw new Error('no answer');
    })();
    answer.catch(() => undefined); // unsubscribed at teardown unanswered: only if awaited
    t.teardown(() => sub.unsubscribe());
    await js.publish(subject, JSON.stringify(o.replyTo === false ? body : { ...body, replyTo: inbox }), {
      headers: authHeaders(token),
      ...(o.msgId ? { msgID: o.msgId } : {}),
    });
    return { answer }; // not the promise itself: awaiting this must not wait for the answer
  };

  // Two requests a dispatcher took and died with (pulled, never acknowledged): delivered again.
  // One had started there, with Redis away (recorded in the store, unknown to Redis); the other
  // had not.
  await recordExecution(h.store, 'sia', {
    requestId: 'started',
    tool: 'sleep',
    args: { ms: 50 },
    outcome: 'executing',
  });
  const started = await publish({ requestId: 'started', tool: 'sleep', args: { ms: 50 } });
  const taken = await publish({ requestId: 'taken', tool: 'echo', args: { text: 'taken' } });
  const consumer = await js.consumers.get(names.requestsStream, names.dispatcherConsumer);
  const pulled = await consumer.fetch({ max_messages: 2, expires: 5_000 });
  const takenIds: string[] = [];
  for await (const m of pulled) takenIds.push(m.json<{ requestId: string }>().requestId);
  t.strictSame(takenIds, ['started', 'taken'], 'pulled, and left unacknowledged');

  const lookups: number[] = [];
  const waiting = h.agent.execute(
    'echo',
    { text: 'late' },
    { token, requestId: 'shed-1', timeoutMs: 60_000 },
  );
  // A late copy of the request that ran, under another message id (a new token, say).
  const lateCopy = await publish(
    { requestId: 'done-1', tool: 'echo', args: { text: 'done' } },
    { msgId: 'sia:done-1/another-copy' },
  );
  // A message sent again after a shedding (under ~3): it keeps its place, never shed.
  const bumped = await publish(
    { requestId: 'bumped', tool: 'echo', args: { text: 'bumped' } },
    { msgId: 'sia:bumped/x~3' },
  );
  // Nobody waits for this one (no reply subject): it runs however long it waited.
  await publish(
    { requestId: 'fire-and-forget', tool: 'echo', args: { text: 'unasked' } },
    { replyTo: false },
  );
  // The last of the backlog: nothing stands behind it.
  const tail = await publish({ requestId: 'tail', tool: 'echo', args: { text: 'tail' } });
  await eventually(
    async () => (await jsm.streams.info(names.requestsStream)).state.messages === 7,
    20_000,
    'the seven requests stored',
  );
  await olderThan(Date.now(), MAX_WAIT_MS);

  await h.start();
  const answer = await waiting;
  t.match(
    answer,
    {
      status: 'failed',
      requestId: 'shed-1',
      executionId: null,
      error: { code: 'OVERLOADED', details: { retryAfterMs: 5_000, waitedMs: Number, shed: 1 } },
    },
    'the waiting agent is told at once, with a retry hint',
  );
  t.match(answer.status === 'failed' ? answer.error.message : '', /not run and nothing of it was recorded/);
  t.strictSame(typesOf(await h.events('sia'), 'shed-1'), [], 'nothing recorded');
  t.strictSame(
    await lateCopy.answer,
    done,
    'a late copy of a request that ran gets its answer, not OVERLOADED',
  );
  t.match(
    await bumped.answer,
    { status: 'completed', result: { text: 'bumped' } },
    'a sending after a shedding (~3) runs however long it waited',
  );
  t.match(await tail.answer, { status: 'completed' }, 'the last of the backlog runs');
  t.match(
    await taken.answer,
    { status: 'failed', error: { code: 'OVERLOADED', details: { shed: 1 } } },
    'a request delivered again with nothing of it stored is shed too',
  );
  t.match(
    await started.answer,
    { status: 'failed', error: { code: 'INTERRUPTED', message: /its runner test stopped/ } },
    'one that had started is finished by the recovery, not shed',
  );
  await eventually(
    async () => typesOf(await h.events('sia'), 'fire-and-forget').includes('ToolCompleted'),
    30_000,
    'the request without a reply subject to run',
  );
  t.pass('the request without a reply subject ran though it waited as long');

  // The same request id again, within the duplicate window: JetStream drops the message id as a
  // repeat; the lookup says the request was shed, and the client sends it again under `~1`.
  const client = createAgentClient(h.nc, {
    lookupBackoff: { minMs: 50, maxMs: 200 },
    onLookup: ({ attempt }) => lookups.push(attempt),
  });
  const again = await client.execute(
    'echo',
    { text: 'late' },
    { token, requestId: 'shed-1', timeoutMs: 60_000 },
  );
  t.match(again, { status: 'completed', requestId: 'shed-1', result: { text: 'late' } }, 'the retry runs');
  t.ok(lookups.length >= 1, 'after a lookup that said the request was shed');
  t.strictSame(
    typesOf(await h.events('sia'), 'shed-1'),
    ['ToolRequested', 'ToolExecuting', 'ToolCompleted'],
    'once',
  );
  const third = await client.execute(
    'echo',
    { text: 'late' },
    { token, requestId: 'shed-1', timeoutMs: 60_000 },
  );
  t.strictSame(third, again, 'a later repeat gets the same answer');
  t.match(h.logs.text, /answered OVERLOADED unrun/, 'the shedding is logged');
});

t.test('INTAKE_MAX_WAIT_MS=0: requests wait as long as it takes', async (t) => {
  const h = await harness(t, { INTAKE_MAX_WAIT_MS: '0' });
  await (await h.start()).close();
  const token = await h.token('sib');
  // Two: the first has a queue behind it, as a shed request does.
  const waiting = ['wait-1', 'wait-2'].map((requestId) =>
    h.agent.execute('echo', { text: 'patient' }, { token, requestId, timeoutMs: 60_000 }),
  );
  const jsm = await jetstreamManager(h.nc);
  await eventually(
    async () => (await jsm.streams.info(names.requestsStream)).state.messages === 2,
    20_000,
    'the requests stored',
  );
  await olderThan(Date.now(), MAX_WAIT_MS);
  await h.start();
  for (const answer of await Promise.all(waiting)) {
    t.match(answer, { status: 'completed', result: { text: 'patient' } });
  }
});

function authHeaders(token: string) {
  const h = headers();
  h.set('Authorization', `Bearer ${token}`);
  return h;
}

t.test('requests queued in an instance behind a busy user count as a standing queue', async (t) => {
  // One slot per user: the user's later requests wait in the instance's fair queue, each pulled
  // as it came (nothing behind it in JetStream then), while the first holds the slot.
  const h = await harness(t, {
    INTAKE_MAX_WAIT_MS: String(MAX_WAIT_MS),
    DISPATCH_CONCURRENCY: '2',
    USER_DISPATCH_SLOTS: '1',
  });
  await h.start();
  const token = await h.token('sic');
  const jsm = await jetstreamManager(h.nc);
  const consumer = () => jsm.consumers.info(names.requestsStream, names.dispatcherConsumer);
  const blocker = h.agent.execute('sleep', { ms: 4_500 }, { token, requestId: 'blocker' });
  await eventually(
    async () => typesOf(await h.events('sic'), 'blocker').includes('ToolExecuting'),
    20_000,
    'the first request to hold the slot',
  );
  const queued: Array<ReturnType<typeof h.agent.execute>> = [];
  for (let i = 1; i <= 3; i++) {
    queued.push(h.agent.execute('echo', { i }, { token, requestId: `queued-${i}`, timeoutMs: 60_000 }));
    await eventually(
      async () => (await consumer()).num_pending === 0,
      20_000,
      `queued-${i} pulled into the instance`,
    );
  }
  t.match(await blocker, { status: 'completed' });
  const [first, second, last] = await Promise.all(queued);
  t.match(
    first,
    { status: 'failed', error: { code: 'OVERLOADED', details: { shed: 1 } } },
    'the oldest, with others waiting behind it in the instance, is shed',
  );
  t.ok(second, 'the second is answered');
  t.match(last, { status: 'completed', result: { i: 3 } }, 'the last, with nothing behind it, runs');
});
