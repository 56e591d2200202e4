import t from 'tap';
import { jetstreamManager } from '@nats-io/jetstream';
import { jetstream as names, LIMITS, subjects } from '../../contracts/index.ts';
import { startNats } from '../../test/support/processes.ts';
import { signToken } from '../auth.ts';
import { connectionIdentity, connectNats } from '../nats.ts';
import { AgentClientError, createAgentClient } from './agent.ts';

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
    t.equal(msg.headers?.get('Nats-Msg-Id'), 'alice:r-1');
    const body = msg.json<Record<string, unknown>>();
    t.match(body, {
      requestId: 'r-1',
      tool: 'echo',
      version: '1.0.0',
      args: { a: 1 },
      correlationId: 'c-1',
      replyTo: new RegExp(`^_INBOX\\.${connectionIdentity(nc)}\\.`),
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
    const lookups = nc.subscribe(subjects.answers('alice'), {
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

  t.test('an oversized request is refused locally (the dispatcher could not answer it)', async (t) => {
    const a = await client.execute(
      'echo',
      { pad: 'x'.repeat(LIMITS.maxRequestBytes) },
      { token, requestId: 'r-4' },
    );
    t.match(a, { status: 'failed', requestId: 'r-4', error: { code: 'MALFORMED', message: /limit/ } });
  });
});
