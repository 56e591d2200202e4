/**
 * Decision 0035: a request that waited in the intake longer than INTAKE_MAX_WAIT_MS before a
 * dispatcher could start it is not run: its agent is told OVERLOADED at once, nothing is
 * recorded, and the same request id sent again (within JetStream's duplicate window, so under the
 * same message id) runs. Requests that may have started (delivered again) and requests nobody
 * waits for (no reply subject) always run.
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
import { eventually, harness } from './test/harness.ts';

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
  // The intake exists; then no dispatcher consumes it while the requests wait.
  await (await h.start()).close();
  const token = await h.token('sia');

  const js = jetstream(h.nc);
  const jsm = await jetstreamManager(h.nc);
  const subject = subjects.request('sia', connectionIdentity(h.nc));
  // A request a dispatcher took and died with (pulled, never acknowledged): delivered again.
  await js.publish(
    subject,
    JSON.stringify({ requestId: 'taken', tool: 'echo', args: { text: 'taken' }, replyTo: inboxFor(h.nc) }),
    { headers: authHeaders(token) },
  );
  const consumer = await js.consumers.get(names.requestsStream, names.dispatcherConsumer);
  const pulled = await consumer.fetch({ max_messages: 1, expires: 5_000 });
  const takenIds: string[] = [];
  for await (const m of pulled) takenIds.push(m.json<{ requestId: string }>().requestId);
  t.strictSame(takenIds, ['taken'], 'pulled, and left unacknowledged');

  const lookups: number[] = [];
  const waiting = h.agent.execute(
    'echo',
    { text: 'late' },
    { token, requestId: 'shed-1', timeoutMs: 60_000 },
  );
  // Nobody waits for this one (no reply subject): it runs however long it waited.
  await js.publish(
    subject,
    JSON.stringify({ requestId: 'fire-and-forget', tool: 'echo', args: { text: 'unasked' } }),
    { headers: authHeaders(token) },
  );
  await eventually(
    async () => (await jsm.streams.info(names.requestsStream)).state.messages === 3,
    20_000,
    'the three requests stored',
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
  t.match(answer.status === 'failed' ? answer.error.message : '', /not run and nothing was recorded/);
  t.strictSame(typesOf(await h.events('sia'), 'shed-1'), [], 'nothing recorded');

  await eventually(
    async () => typesOf(await h.events('sia'), 'fire-and-forget').includes('ToolCompleted'),
    30_000,
    'the request without a reply subject to run',
  );
  await eventually(
    async () => typesOf(await h.events('sia'), 'taken').includes('ToolCompleted'),
    30_000,
    'the request delivered again to run',
  );
  t.pass('a request without a reply subject, and one delivered again, ran though they waited as long');

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
  const waiting = h.agent.execute(
    'echo',
    { text: 'patient' },
    { token, requestId: 'wait-1', timeoutMs: 60_000 },
  );
  const jsm = await jetstreamManager(h.nc);
  await eventually(
    async () => (await jsm.streams.info(names.requestsStream)).state.messages === 1,
    20_000,
    'the request stored',
  );
  await olderThan(Date.now(), MAX_WAIT_MS);
  await h.start();
  t.match(await waiting, { status: 'completed', result: { text: 'patient' } });
});

function authHeaders(token: string) {
  const h = headers();
  h.set('Authorization', `Bearer ${token}`);
  return h;
}
