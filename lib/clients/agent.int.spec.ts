import { createHash } from 'node:crypto';
import t, { type Test } from 'tap';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { executionIdFor, jetstream as names, LIMITS, subjects } from '../../contracts/index.ts';
import { startNats } from '../../test/support/processes.ts';
import { startProxy } from '../../test/support/proxy.ts';
import { signToken } from '../auth.ts';
import { connectionIdentity, connectNats } from '../nats.ts';
import { AgentClientError, createAgentClient, type TerminalAnswer } from './agent.ts';

const SECRET = 's'.repeat(40);

t.test('the agent client against a bare NATS (no dispatcher)', async (t) => {
  const nats = await startNats(t);
  const nc = await connectNats(nats.url, 'agent-test');
  t.teardown(() => nc.close());
  const client = createAgentClient(nc, { pollIntervalMs: 50 });
  const token = await signToken(SECRET, { sub: 'alice' });

  t.test('no intake stream: the request is not accepted', async (t) => {
    await t.rejects(client.execute('noop', {}, { token, requestId: 'r-0', timeoutMs: 5_000 }), {
      name: 'AgentClientError',
      code: 'PUBLISH_FAILED',
    });
  });

  const jsm = await jetstreamManager(nc);
  await jsm.streams.add({
    name: names.requestsStream,
    subjects: [subjects.requestsAll],
    duplicate_window: 120_000_000_000,
  });

  t.test('what goes on the wire: subject, headers, body', async (t) => {
    const sub = nc.subscribe(subjects.request('alice', connectionIdentity(nc)), { max: 1 });
    const pending = client.execute(
      'echo',
      { a: 1 },
      { token, requestId: 'r-1', correlationId: 'c-1', version: '1.0.0', timeoutMs: 300 },
    );
    const seen = [];
    for await (const m of sub) seen.push(m);
    await t.rejects(pending, AgentClientError, 'nobody answers: a timeout');
    t.equal(seen.length, 1, 'published on toolbus.requests.<user of the token>.<agent identity>');
    const msg = seen[0]!;
    t.equal(msg.headers?.get('Authorization'), `Bearer ${token}`);
    // What it asks, key order aside: {"args":{"a":1},"tool":"echo"}.
    const ask = createHash('sha256').update('{"args":{"a":1},"tool":"echo"}').digest('hex').slice(0, 16);
    t.equal(
      msg.headers?.get('Nats-Msg-Id'),
      `alice:r-1/${createHash('sha256').update(token).digest('hex').slice(0, 16)}${ask}`,
      'Nats-Msg-Id: user, request id, a fingerprint of the token and one of the tool and arguments',
    );
    const body = msg.json<Record<string, unknown>>();
    t.match(body, {
      requestId: 'r-1',
      tool: 'echo',
      version: '1.0.0',
      args: { a: 1 },
      correlationId: 'c-1',
      replyTo: new RegExp(`^_INBOX\\.${connectionIdentity(nc)}\\.[^.]+\\.${ask}\\.\\d+$`),
    });
    t.notOk('progress' in body, 'progress is only asked for with onProgress');
  });

  t.test('the terminal answer on the inbox resolves; interim answers go to onProgress', async (t) => {
    const sub = nc.subscribe(subjects.request('alice', connectionIdentity(nc)), {
      callback: (_e, m) => {
        const { requestId, replyTo, progress } = m.json<{
          requestId: string;
          replyTo: string;
          progress?: boolean;
        }>();
        const ids = { requestId, executionId: 'e', correlationId: 'c' };
        if (progress) nc.publish(replyTo, JSON.stringify({ status: 'progress', ...ids, fraction: 0.5 }));
        nc.publish(replyTo, JSON.stringify({ status: 'nonsense' }));
        nc.publish(
          replyTo,
          JSON.stringify({ status: 'completed', ...ids, result: 42, durationMs: 1, cached: false }),
        );
      },
    });
    t.teardown(() => sub.unsubscribe());
    const seen: string[] = [];
    const a = await client.execute(
      'noop',
      {},
      { token, requestId: 'r-2', onProgress: (p) => seen.push(p.status) },
    );
    t.match(a, { status: 'completed', result: 42 });
    t.strictSame(seen, ['progress']);
  });

  t.test('a duplicate (same request id within the window) asks the dispatchers for the answer', async (t) => {
    const answer = {
      status: 'completed',
      requestId: 'r-3',
      executionId: 'e',
      correlationId: 'c',
      result: 'first',
      durationMs: 1,
      cached: false,
    };
    const asked: string[] = [];
    const lookups = nc.subscribe(subjects.answers('alice', connectionIdentity(nc)), {
      callback: (_e, m) => {
        asked.push(m.headers?.get('Authorization') ?? '');
        m.respond(JSON.stringify({ answer: asked.length < 3 ? null : answer }));
      },
    });
    t.teardown(() => lookups.unsubscribe());
    await t.rejects(client.execute('noop', {}, { token, requestId: 'r-3', timeoutMs: 200 }), {
      code: 'TIMEOUT',
    });
    const again = await client.execute('noop', {}, { token, requestId: 'r-3', timeoutMs: 10_000 });
    t.strictSame(again, answer, 'the answer the lookup finally gives');
    t.ok(asked.length >= 3, 'asked until there was one');
    t.ok(
      asked.every((h) => h === `Bearer ${token}`),
      'with the token',
    );
  });

  /** A fake dispatcher: remembers each request's replyTo; the test answers when it wants. */
  const fakeDispatcher = (t: Test) => {
    const seen: Array<{ requestId: string; replyTo: string }> = [];
    const sub = nc.subscribe(subjects.request('alice', connectionIdentity(nc)), {
      callback: (_e, m) => {
        seen.push(m.json<{ requestId: string; replyTo: string }>());
      },
    });
    t.teardown(() => sub.unsubscribe());
    return {
      seen,
      async received(n: number) {
        while (seen.length < n) await new Promise((r) => setTimeout(r, 5));
      },
      answer(replyTo: string, requestId: string, result: unknown) {
        const done: TerminalAnswer = {
          status: 'completed',
          requestId,
          executionId: executionIdFor('alice', requestId),
          correlationId: 'c',
          result: result as never,
          durationMs: 1,
          cached: false,
        };
        nc.publish(replyTo, JSON.stringify(done));
        return done;
      },
    };
  };

  /** Stops the server (SIGSTOP) until the returned function (or the test's end) resumes it. */
  const pauseNats = async (t: Test) => {
    await nats.pause();
    let resumed = false;
    const resume = () => {
      if (!resumed) nats.resume();
      resumed = true;
    };
    t.teardown(resume);
    return resume;
  };

  /** Counts the lookups on toolbus.answers.alice, answering each with `reply(n)`. */
  const fakeAnswers = (t: Test, reply: (n: number) => unknown) => {
    let n = 0;
    const sub = nc.subscribe(subjects.answers('alice', connectionIdentity(nc)), {
      callback: (_e, m) => {
        m.respond(JSON.stringify(reply(++n)));
      },
    });
    t.teardown(() => sub.unsubscribe());
    return { count: () => n };
  };

  t.test(
    'an acknowledgement that does not come (a stalled server): published again with the same id, stored once, answered',
    async (t) => {
      const dispatcher = fakeDispatcher(t);
      const lookups = fakeAnswers(t, () => ({ answer: null }));
      // The real JetStream client, with a short acknowledgement timeout, its publishes counted.
      const js = jetstream(nc, { timeout: 500 });
      let publishes = 0;
      let acknowledged = false;
      const publish = js.publish.bind(js);
      js.publish = (...args: Parameters<typeof js.publish>) => {
        publishes++;
        return publish(...args).then((ack) => {
          acknowledged = true;
          return ack;
        });
      };
      // Lookups, were there any, would go at once.
      const stalled = createAgentClient(nc, { js, lookupBackoff: { minMs: 1, maxMs: 1 } });
      await nc.flush();
      const stored = async () => (await jsm.streams.info(names.requestsStream)).state.messages;
      const before = await stored();
      const resume = await pauseNats(t);
      const answer = stalled.execute('noop', {}, { token, requestId: 'r-stalled', timeoutMs: 60_000 });
      // The server reads nothing while stopped: the first publish goes unacknowledged.
      while (publishes < 2) await new Promise((r) => setTimeout(r, 20));
      resume();
      await dispatcher.received(1);
      // The answer waits until a publish was acknowledged (as a duplicate: the first copy was kept)
      // and a lookup, were one made, has had the time to reach the server.
      while (!acknowledged) await new Promise((r) => setTimeout(r, 20));
      await new Promise((r) => setTimeout(r, 50));
      await nc.flush();
      const sent = dispatcher.answer(dispatcher.seen[0]!.replyTo, 'r-stalled', 'once');
      t.strictSame(await answer, sent, 'the answer, not PUBLISH_FAILED');
      t.equal((await stored()) - before, 1, 'JetStream kept one copy of the request');
      t.equal(lookups.count(), 0, 'its duplicate acknowledgements were its own copy: no lookup');
    },
  );

  t.test(
    'a duplicate acknowledgement after an unacknowledged publish, of an earlier attempt’s copy: looked up',
    async (t) => {
      const dispatcher = fakeDispatcher(t);
      const other = await connectNats(nats.url, 'agent-test-retry');
      t.teardown(() => other.close());
      const js = jetstream(other, { timeout: 500 });
      let publishes = 0;
      const publish = js.publish.bind(js);
      js.publish = (...args: Parameters<typeof js.publish>) => {
        publishes++;
        return publish(...args);
      };
      const retrying = createAgentClient(other, {
        js,
        lookupBackoff: { minMs: 1, maxMs: 1, ownCopyMs: 200 },
      });
      // An earlier attempt on another connection, given up: JetStream keeps its copy, and its answer
      // goes to that connection's inbox.
      await t.rejects(client.execute('noop', {}, { token, requestId: 'r-earlier', timeoutMs: 300 }), {
        code: 'TIMEOUT',
      });
      await dispatcher.received(1);
      const sent = dispatcher.answer(dispatcher.seen[0]!.replyTo, 'r-earlier', 'first');
      const lookups = fakeAnswers(t, () => ({ answer: sent }));
      await nc.flush();
      // The retry's first publish goes unacknowledged (the server is stopped); the next one is
      // acknowledged as a duplicate of the earlier attempt's copy, not of its own.
      const before = publishes;
      const resume = await pauseNats(t);
      const retry = retrying.execute('noop', {}, { token, requestId: 'r-earlier', timeoutMs: 60_000 });
      while (publishes < before + 2) await new Promise((r) => setTimeout(r, 20));
      resume();
      t.strictSame(await retry, sent, 'the answer, found by a lookup (before: no answer until the timeout)');
      t.ok(lookups.count() >= 1, 'it looked up');
    },
  );

  t.test('an answer sent while the connection was away: looked up after the reconnect', async (t) => {
    const dispatcher = fakeDispatcher(t);
    // The agent's connection goes through a proxy the test can cut; the fake dispatcher's does not.
    const proxy = await startProxy(nats.port, t);
    const away = await connectNats(proxy.url('nats'), 'agent-away');
    t.teardown(() => away.close());
    const statuses: string[] = [];
    void (async () => {
      for await (const s of away.status()) statuses.push(s.type);
    })();
    const agent = createAgentClient(away, { lookupBackoff: { minMs: 1, maxMs: 50 } });
    let recorded: TerminalAnswer | null = null;
    const lookups = fakeAnswers(t, () => ({ answer: recorded }));
    const answer = agent.execute('noop', {}, { token, requestId: 'r-away', timeoutMs: 30_000 });
    await dispatcher.received(1);
    const request = dispatcher.seen.find((r) => r.requestId === 'r-away')!;
    // Cut: the connection is reset, and every new one until the proxy passes again.
    proxy.set({ kind: 'reset' });
    while (!statuses.includes('disconnect')) await new Promise((r) => setTimeout(r, 20));
    t.equal(lookups.count(), 0, 'no lookup while the answer could still come to the inbox');
    recorded = dispatcher.answer(request.replyTo, 'r-away', 'sent while away');
    await nc.flush();
    proxy.set({ kind: 'pass' });
    t.strictSame(
      await answer,
      recorded,
      'the answer, found by a lookup after the reconnect (before: nothing until the timeout)',
    );
    t.ok(statuses.includes('reconnect'), 'the connection came back');
    t.ok(lookups.count() >= 1, 'it looked up');
  });

  t.test('many concurrent requests on one client share one subscription', async (t) => {
    const own = await connectNats(nats.url, 'agent-shared');
    t.teardown(() => own.close());
    let subscriptions = 0;
    const subscribe = own.subscribe.bind(own);
    own.subscribe = (...args: Parameters<typeof own.subscribe>) => {
      subscriptions++;
      return subscribe(...args);
    };
    const ownClient = createAgentClient(own);
    const sub = nc.subscribe(subjects.request('alice', connectionIdentity(own)), {
      callback: (_e, m) => {
        const { requestId, replyTo } = m.json<{ requestId: string; replyTo: string }>();
        const ids = { requestId, executionId: executionIdFor('alice', requestId), correlationId: 'c' };
        nc.publish(
          replyTo,
          JSON.stringify({ status: 'completed', ...ids, result: requestId, durationMs: 1, cached: false }),
        );
      },
    });
    t.teardown(() => sub.unsubscribe());
    await nc.flush();
    const ids = Array.from({ length: 50 }, (_, i) => `many-${i}`);
    const answers = await Promise.all(
      ids.map((id) => ownClient.execute('noop', {}, { token, requestId: id, timeoutMs: 30_000 })),
    );
    t.strictSame(
      answers.map((a) => (a.status === 'completed' ? a.result : a.status)),
      ids,
      'each request got its own answer',
    );
    t.equal(subscriptions, 1, 'one subscription for all of them');
  });

  t.test("a duplicate's answer arrives without a lookup while the first attempt here waits", async (t) => {
    const dispatcher = fakeDispatcher(t);
    const lookups = fakeAnswers(t, () => ({ answer: null }));
    await nc.flush();
    const first = client.execute('noop', {}, { token, requestId: 'r-5', timeoutMs: 30_000 });
    await dispatcher.received(1);
    const again = client.execute('noop', {}, { token, requestId: 'r-5', timeoutMs: 30_000 });
    // JetStream drops the second publish: the fake dispatcher sees one request.
    const done = dispatcher.answer(dispatcher.seen[0]!.replyTo, 'r-5', 'once');
    t.strictSame(await first, done);
    t.strictSame(await again, done, 'the retry gets the same answer');
    t.equal(lookups.count(), 0, 'no lookup');
    const later = await client.execute('noop', {}, { token, requestId: 'r-5', timeoutMs: 30_000 });
    t.strictSame(later, done, 'a retry after the answer came gets it from this client');
    t.equal(lookups.count(), 0, 'still no lookup');
  });

  t.test('lookups back off with jitter and honour an OVERLOADED retry hint', async (t) => {
    const dispatcher = fakeDispatcher(t);
    await nc.flush();
    await t.rejects(client.execute('noop', {}, { token, requestId: 'r-6', timeoutMs: 100 }), {
      code: 'TIMEOUT',
    });
    await dispatcher.received(1);
    const done = {
      status: 'completed',
      requestId: 'r-6',
      executionId: 'x',
      correlationId: 'c',
      result: 'late',
      durationMs: 1,
      cached: false,
    };
    const lookups = fakeAnswers(t, (n) =>
      n === 2
        ? { answer: null, overloaded: { retryAfterMs: 120 } }
        : n < 5
          ? { answer: null }
          : { answer: done },
    );
    const waits: number[] = [];
    const other = createAgentClient(nc, {
      lookupBackoff: { minMs: 10, maxMs: 40, random: () => 0.5 },
      onLookup: ({ waitedMs }) => waits.push(waitedMs),
    });
    const again = await other.execute('noop', {}, { token, requestId: 'r-6', timeoutMs: 30_000 });
    t.strictSame(again, done, 'the answer the fifth lookup gave');
    t.equal(lookups.count(), 5, 'asked until there was one');
    // Half of each ceiling (10, 20, 40, 40, ...), except after the OVERLOADED reply: its hint.
    t.strictSame(waits, [5, 10, 120, 20, 20]);
  });

  t.test(
    'a lookup that says the request was shed: sent again under <message id>~<n>, once per n',
    async (t) => {
      const sent: Array<{ msgId: string; replyTo: string }> = [];
      const sub = nc.subscribe(subjects.request('alice', connectionIdentity(nc)), {
        callback: (_e, m) => {
          sent.push({
            msgId: m.headers?.get('Nats-Msg-Id') ?? '',
            replyTo: m.json<{ replyTo: string }>().replyTo,
          });
        },
      });
      t.teardown(() => sub.unsubscribe());
      await nc.flush();
      // The first call's message is stored; the (absent) dispatcher sheds it: nobody answers it.
      await t.rejects(client.execute('noop', {}, { token, requestId: 'r-7', timeoutMs: 100 }), {
        code: 'TIMEOUT',
      });
      let phase: 'retry' | 'repeat' = 'retry';
      let repeatLookups = 0;
      const done = {
        status: 'completed',
        requestId: 'r-7',
        executionId: executionIdFor('alice', 'r-7'),
        correlationId: 'c',
        result: 'ran',
        durationMs: 1,
        cached: false,
      };
      fakeAnswers(t, () => {
        if (phase === 'retry') return { answer: null, shed: 1 };
        // The repeat: told "shed once" twice (its own `~1` is no news), then the answer.
        return ++repeatLookups <= 2 ? { answer: null, shed: 1 } : { answer: done };
      });
      const other = createAgentClient(nc, { lookupBackoff: { minMs: 10, maxMs: 20 } });
      const retry = other.execute('noop', {}, { token, requestId: 'r-7', timeoutMs: 30_000 });
      while (!sent.some((s) => s.msgId.endsWith('~1'))) await new Promise((r) => setTimeout(r, 5));
      const base = sent[0]!.msgId;
      t.notOk(base.includes('~'), 'the first sending: the plain message id');
      const again = sent.find((s) => s.msgId.endsWith('~1'))!;
      t.equal(again.msgId, `${base}~1`, 'sent again under <message id>~1');
      nc.publish(again.replyTo, JSON.stringify(done));
      t.strictSame(await retry, done, 'its answer comes to the retry');

      phase = 'repeat';
      // On another connection: this one's inbox remembers the answer.
      const nc2 = await connectNats(nats.url, 'agent-test');
      t.teardown(() => nc2.close());
      const elsewhere = createAgentClient(nc2, { lookupBackoff: { minMs: 10, maxMs: 20 } });
      const repeat = await elsewhere.execute('noop', {}, { token, requestId: 'r-7', timeoutMs: 30_000 });
      t.strictSame(repeat, done, 'a later repeat gets the answer by lookup');
      t.equal(repeatLookups, 3, 'after asking again, not sending again, while told the same count');
      t.equal(
        sent.filter((s) => s.msgId.endsWith('~1')).length,
        2,
        'under ~1 once per call told so (JetStream drops the second as a repeat)',
      );
      t.notOk(
        sent.some((s) => s.msgId.endsWith('~2')),
        'never under a count no dispatcher gave',
      );
    },
  );

  t.test('an oversized request is refused locally (the dispatcher could not answer it)', async (t) => {
    const a = await client.execute(
      'echo',
      { pad: 'x'.repeat(LIMITS.maxRequestBytes) },
      { token, requestId: 'r-4' },
    );
    t.match(a, { status: 'failed', requestId: 'r-4', error: { code: 'MALFORMED', message: /limit/ } });
  });
});
