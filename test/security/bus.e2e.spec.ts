/**
 * The attacks of a local process on the bus, each against a stack whose NATS runs Toolbus's
 * generated authorization (as `npm start` runs it): each fails, with the server's refusal, and the
 * legitimate path beside it still works. See docs/security.md.
 */
import t from 'tap';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { headers, type NatsConnection } from '@nats-io/transport-node';
import { jetstream as names, subjects } from '../../contracts/index.ts';
import { connectionIdentity, connectNats, inboxFor } from '../../lib/nats.ts';
import { serveTools, toManifest } from '../../lib/tools/index.ts';
import { createAnnouncement } from '../../lib/tools/remote.ts';
import { costAnalyzer } from '../../services/dispatcher/tools/index.ts';
import { createIdentity } from '../../scripts/nats-auth.ts';
import { startTestStack, STACK_WORKER_SECRET } from '../support/stack.ts';
import { eventually } from '../../services/dispatcher/test/harness.ts';

const s = await startTestStack(t, { services: ['dispatcher'] });
const alice = await s.token('alice');
const victimToken = await s.token('victim');

/** Waits for the server to refuse something this connection did (a permission violation naming `subject`). */
async function refusal(nc: NatsConnection, subject: string): Promise<string> {
  for await (const status of nc.status()) {
    if (status.type !== 'error') continue;
    const message = status.error.message;
    if (message.includes(`"${subject}"`)) return message;
  }
  throw new Error('the connection closed before the refusal');
}

/** Subscribes and resolves with the error the subscription was closed with (null: it was not). */
async function subscribeRefused(nc: NatsConnection, subject: string, queue?: string): Promise<string | null> {
  const sub = nc.subscribe(subject, queue ? { queue } : {});
  const closed = await Promise.race([sub.closed, nc.flush().then(() => sub.closed)]);
  return closed instanceof Error ? closed.message : null;
}

/** A legitimate call still works beside the attack. */
async function stillWorks(tt: Tap): Promise<void> {
  const answer = await s.agent.execute('noop', {}, { token: alice, timeoutMs: 30_000 });
  tt.equal(answer.status, 'completed', 'a legitimate request is still answered');
}
type Tap = Parameters<Parameters<typeof t.test>[0]>[0];

t.test('no credentials, or a key the server does not know: the connection is refused', async (t) => {
  await t.rejects(connectNats(s.nats.url, 'anonymous'), { name: 'AuthorizationError' });
  const stranger = createIdentity('stranger', { kind: 'agent' });
  await t.rejects(connectNats(s.nats.url, 'stranger', { nkeySeed: stranger.seed }), {
    name: 'AuthorizationError',
  });
  await stillWorks(t);
});

t.test('sniffing: an agent cannot read requests, tokens, or anything but its own inbox', async (t) => {
  const spy = await s.connectAs('otherAgent');
  for (const subject of ['>', subjects.requestsAll, subjects.request('alice', connectionIdentity(s.nc))]) {
    t.match(
      await subscribeRefused(spy, subject),
      /Permissions Violation for Subscription/,
      `${subject} refused`,
    );
  }
  t.match(
    await subscribeRefused(spy, `_INBOX.${connectionIdentity(s.nc)}.>`),
    /Permissions Violation/,
    'another agent’s inbox is refused',
  );
  // JetStream's copy of the requests (the tokens in their headers) is out of reach too.
  const read = spy.request(`$JS.API.STREAM.MSG.GET.${names.requestsStream}`, JSON.stringify({ seq: 1 }), {
    timeout: 5_000,
  });
  await t.rejects(read, /Permissions Violation/, 'reading stored requests is refused');
  await stillWorks(t);
});

t.test('a spoofed answer to another agent’s inbox is refused by the server', async (t) => {
  const forger = await s.connectAs('otherAgent');
  const target = `${inboxFor(s.nc)}`;
  const refused = refusal(forger, target);
  forger.publish(target, JSON.stringify({ status: 'completed', requestId: 'x', result: { forged: true } }));
  t.match(await refused, /Permissions Violation for Publish/);
  await stillWorks(t);
});

t.test('queue-group hijack and liveness lies: only dispatchers serve dispatcher subjects', async (t) => {
  const rogue = await s.connectAs('otherAgent');
  t.match(await subscribeRefused(rogue, subjects.answersAll, 'toolbus-dispatchers'), /Permissions Violation/);
  t.match(await subscribeRefused(rogue, subjects.cancelAll, 'toolbus-dispatchers'), /Permissions Violation/);
  t.match(await subscribeRefused(rogue, 'toolbus.dispatchers.>'), /Permissions Violation/);
  const lie = 'toolbus.dispatchers.some-dispatcher.inflight';
  const refused = refusal(rogue, lie);
  rogue.publish(lie, JSON.stringify({ running: true }));
  t.match(await refused, /Permissions Violation for Publish/);
  // A worker identity cannot either.
  const worker = await s.connectAs('worker');
  t.match(
    await subscribeRefused(worker, subjects.answersAll, 'toolbus-dispatchers'),
    /Permissions Violation/,
  );
  await stillWorks(t);
});

t.test('JetStream: purging the request stream or deleting the consumer is refused', async (t) => {
  const rogue = await s.connectAs('otherAgent');
  for (const api of [
    `$JS.API.STREAM.PURGE.${names.requestsStream}`,
    `$JS.API.STREAM.DELETE.${names.requestsStream}`,
    `$JS.API.CONSUMER.DELETE.${names.requestsStream}.${names.dispatcherConsumer}`,
    `$JS.API.CONSUMER.MSG.NEXT.${names.requestsStream}.${names.dispatcherConsumer}`,
    '$JS.API.INFO',
  ]) {
    await t.rejects(rogue.request(api, '{}', { timeout: 5_000 }), /Permissions Violation/, `${api} refused`);
  }
  // The notifier's and a worker's identities have no JetStream rights either.
  const worker = await s.connectAs('worker');
  await t.rejects(
    worker.request(`$JS.API.STREAM.PURGE.${names.requestsStream}`, '{}', { timeout: 5_000 }),
    /Permissions Violation/,
  );
  await stillWorks(t);
});

t.test(
  "JetStream's acknowledgement sent to its own API (a publish's reply subject) cannot purge the intake",
  async (t) => {
    // nats-server 2.9 sends a publish's acknowledgement to its reply subject unchecked, as the
    // server, and its API reads `{"stream","seq"}` as a purge up to `seq` (or a deletion of `seq`).
    // The stream refuses both whoever asks (deny_purge, deny_delete: decision 0039).
    const rogue = await s.connectAs('otherAgent');
    const dispatcherJsm = await jetstreamManager(await s.connectAs('dispatcher'));
    const info = await dispatcherJsm.streams.info(names.requestsStream);
    t.ok(info.config.deny_purge && info.config.deny_delete, 'the intake refuses purges and deletions');
    await t.rejects(dispatcherJsm.streams.purge(names.requestsStream), /purge/i, 'even for the dispatcher');

    // A call that waits for an approver: its request stays in the stream until it is decided.
    const waiting = s.agent.execute('guarded_echo', { text: 'pay' }, { token: alice, timeoutMs: 120_000 });
    waiting.catch(() => undefined);
    const held = async () => (await dispatcherJsm.streams.info(names.requestsStream)).state.messages;
    await eventually(async () => (await held()) >= 1, 30_000, 'the waiting request in the stream');
    const before = await held();

    // The trick: a publish on the agent's own subject, its reply subject the API's purge.
    const own = subjects.request('alice', connectionIdentity(rogue));
    rogue.publish(own, '{}', { reply: `$JS.API.STREAM.PURGE.${names.requestsStream}` });
    await rogue.flush();
    await stillWorks(t); // by then the trick's message was stored, acknowledged and answered
    t.ok((await held()) >= before, `the waiting request is still in the stream (${before} held)`);

    // Sent to the API's deletions of the stream and of the consumer, it is refused (they take an
    // empty body): both are the ones made before (a recreated one would be younger).
    const made = async () => ({
      stream: (await dispatcherJsm.streams.info(names.requestsStream)).created,
      consumer: (await dispatcherJsm.consumers.info(names.requestsStream, names.dispatcherConsumer)).created,
    });
    const first = await made();
    for (const api of [
      `$JS.API.STREAM.DELETE.${names.requestsStream}`,
      `$JS.API.CONSUMER.DELETE.${names.requestsStream}.${names.dispatcherConsumer}`,
      `$JS.API.STREAM.MSG.DELETE.${names.requestsStream}`,
    ]) {
      rogue.publish(own, '{}', { reply: api });
      await rogue.flush();
      await stillWorks(t);
      t.same(await made(), first, `${api}: nothing deleted`);
    }
    t.ok((await held()) >= before, 'the waiting request is still there');
  },
);

t.test('forged events and forged progress: only the dispatcher may publish them', async (t) => {
  for (const who of ['otherAgent', 'worker', 'notifier'] as const) {
    const forger = await s.connectAs(who);
    for (const subject of [subjects.events('victim'), subjects.progress('victim')]) {
      const refused = refusal(forger, subject);
      forger.publish(subject, JSON.stringify({ type: 'ToolCompleted', revision: 1 }));
      t.match(await refused, /Permissions Violation for Publish/, `${who} may not publish ${subject}`);
    }
  }
  await stillWorks(t);
});

t.test('forged workers: only a worker identity serves a tool, and only its own tools', async (t) => {
  const agent = await s.connectAs('otherAgent');
  t.match(await subscribeRefused(agent, 'toolbus.tools.run.>', 'toolbus-workers'), /Permissions Violation/);
  t.match(await subscribeRefused(agent, subjects.toolAnnounceAll), /Permissions Violation/);

  // A worker allowed only `intruder_tool` may not serve or announce the cost analyzer...
  const narrow = await s.connectAs('narrowWorker');
  t.match(
    await subscribeRefused(narrow, 'toolbus.tools.run.cost_analyzer.*', 'toolbus-workers'),
    /Permissions Violation/,
  );
  const announce = subjects.toolAnnounce('cost_analyzer');
  const refused = refusal(narrow, announce);
  narrow.publish(announce, '{}');
  t.match(await refused, /Permissions Violation for Publish/);

  // A worker process with that identity is told at start, instead of claiming to serve.
  const another = await s.connectAs('narrowWorker');
  await t.rejects(
    serveTools(another, [costAnalyzer], { workerId: 'narrow', secret: STACK_WORKER_SECRET }),
    /NATS refused this worker's subscription to toolbus\.tools\.run\.cost_analyzer/,
  );

  // ...nor pass a manifest of another tool off under its own subject: the dispatcher refuses it.
  const before = s.logText('dispatcher').split('tool announcement refused').length;
  const manifest = { ...toManifest(costAnalyzer), version: '9.9.9' };
  narrow.publish(
    subjects.toolAnnounce('intruder_tool'),
    JSON.stringify(createAnnouncement('intruder', [manifest], STACK_WORKER_SECRET)),
  );
  await narrow.flush();
  await waitUntil(() => s.logText('dispatcher').split('tool announcement refused').length > before);
  t.match(s.logText('dispatcher'), /names another tool/, 'refused: the manifest names another tool');
  await stillWorks(t);
});

t.test(
  'a request naming another agent’s inbox (or any subject) as replyTo is not answered there',
  async (t) => {
    const other = await s.connectAs('otherAgent');
    const otherInbox = inboxFor(other);
    const received: string[] = [];
    other.subscribe(otherInbox, {
      callback: (_e, m) => {
        received.push(m.string());
      },
    });
    await other.flush();

    const requestId = `foreign-reply-${Date.now()}`;
    const h = headers();
    h.set('Authorization', `Bearer ${victimToken}`);
    await jetstream(s.nc).publish(
      subjects.request('victim', connectionIdentity(s.nc)),
      JSON.stringify({ requestId, tool: 'noop', args: {}, replyTo: otherInbox }),
      { headers: h, msgID: `victim:${requestId}` },
    );
    // The request is recorded, refused, and its answer is there for its own agent to look up.
    const reply = await waitForAnswer(s.nc, 'victim', requestId);
    t.match(reply, { status: 'failed', error: { code: 'VALIDATION', message: /replyTo must be an inbox/ } });
    t.same(received, [], 'nothing reached the other agent’s inbox');

    // Publishing under another agent's identity is refused by the server.
    const spoofed = subjects.request('victim', connectionIdentity(s.nc));
    const refused = refusal(other, spoofed);
    other.publish(spoofed, '{}');
    t.match(await refused, /Permissions Violation for Publish/);
    await stillWorks(t);
  },
);

t.test("a message id chosen to match another user's request does not drop that request", async (t) => {
  // JetStream drops a repeat of a Nats-Msg-Id whoever publishes it. An agent holding only its own
  // user's token publishes first under the ids the victim's request would have (the plain
  // `<user>:<request>` of older clients, and one with a guessed fingerprint).
  const requestId = `squatted-${Date.now()}`;
  const h = headers();
  h.set('Authorization', `Bearer ${alice}`);
  const js = jetstream(s.nc);
  for (const msgID of [`victim:${requestId}`, `victim:${requestId}/0123456789abcdef`]) {
    const ack = await js.publish(
      subjects.request('alice', connectionIdentity(s.nc)),
      JSON.stringify({ requestId, tool: 'noop', args: {} }),
      { headers: h, msgID },
    );
    t.notOk(ack.duplicate, `the squatting publish was taken (${msgID})`);
  }
  const answer = await s.agent.execute('noop', {}, { token: victimToken, requestId, timeoutMs: 30_000 });
  t.equal(answer.status, 'completed', "the victim's request runs and is answered");
});

t.test("the answers service replies only into the asker's own inbox (no reflection)", async (t) => {
  const attacker = await s.connectAs('otherAgent');
  const victimInbox = inboxFor(s.nc);
  const received: string[] = [];
  s.nc.subscribe(victimInbox, {
    callback: (_e, m) => {
      received.push(m.string());
    },
  });
  await s.nc.flush();
  const h = headers();
  h.set('Authorization', `Bearer ${victimToken}`);
  // On its own subject, but naming the victim's inbox as the reply subject: no reply is sent.
  attacker.publish(
    subjects.answers('victim', connectionIdentity(attacker)),
    JSON.stringify({ requestId: 'x' }),
    {
      headers: h,
      reply: victimInbox,
    },
  );
  // On the victim agent's subject: refused by the server.
  const spoofed = subjects.answers('victim', connectionIdentity(s.nc));
  const refused = refusal(attacker, spoofed);
  attacker.publish(spoofed, JSON.stringify({ requestId: 'x' }), { headers: h, reply: victimInbox });
  t.match(await refused, /Permissions Violation for Publish/);
  // A legitimate lookup of the attacker's own, asked after the reflected one, is answered: by
  // then the reflected one was handled (one dispatcher, one subscription, in order).
  const own = await attacker.request(
    subjects.answers('victim', connectionIdentity(attacker)),
    JSON.stringify({ requestId: 'nothing-here' }),
    { timeout: 10_000, headers: h },
  );
  t.same(own.json(), { answer: null }, 'its own lookup is answered');
  await s.nc.flush();
  t.same(received, [], "nothing reached the victim agent's inbox");
});

async function waitForAnswer(nc: NatsConnection, userId: string, requestId: string): Promise<unknown> {
  const h = headers();
  h.set('Authorization', `Bearer ${victimToken}`);
  for (;;) {
    const m = await nc.request(
      subjects.answers(userId, connectionIdentity(nc)),
      JSON.stringify({ requestId }),
      {
        timeout: 10_000,
        headers: h,
      },
    );
    const { answer } = m.json<{ answer: unknown }>();
    if (answer) return answer;
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function waitUntil(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((r) => setTimeout(r, 50));
}
