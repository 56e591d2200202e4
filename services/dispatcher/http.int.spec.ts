import t from 'tap';
import { executionIdFor, ToolManifest } from '../../contracts/index.ts';
import { pollUntil } from '../../test/support/processes.ts';
import { harness } from './test/harness.ts';

t.test('HTTP API', async (t) => {
  const h = await harness(t, { RATE_LIMIT_PER_SEC: '1', RATE_LIMIT_BURST: '30' });
  // Fastify's warnings (deprecated options, FSTDEP…; error handlers, FSTWRN…) reach every operator's log.
  const warnings: string[] = [];
  const onWarning = (w: Error & { code?: string }) => warnings.push(`${w.code ?? w.name}: ${w.message}`);
  process.on('warning', onWarning);
  const d = await h.start();
  await d.app.ready();
  process.off('warning', onWarning);
  t.strictSame(
    warnings.filter((w) => w.startsWith('FST')),
    [],
    'the dispatcher starts without a Fastify warning',
  );
  const app = d.app;
  const alice = await h.token('alice');
  const bob = await h.token('bob');
  const auth = (token: string) => ({ authorization: `Bearer ${token}` });
  const post = (token: string | null, payload: unknown) =>
    app.inject({
      method: 'POST',
      url: '/executions',
      headers: token ? auth(token) : {},
      payload: payload as Record<string, unknown>,
    });

  t.test('GET /tools lists the manifests with JSON Schemas', async (t) => {
    const res = await app.inject({ method: 'GET', url: '/tools' });
    t.equal(res.statusCode, 200);
    const { tools } = res.json<{ tools: unknown[] }>();
    t.ok(tools.length >= 10);
    t.ok(
      tools.every((m) => ToolManifest.safeParse(m).success),
      'each is a valid manifest',
    );
    const echo = tools.find((m) => (m as { name: string }).name === 'echo') as ToolManifest;
    t.match(echo, { inputSchema: { type: 'object' }, sensitive: { input: ['secret'] } });
    // Annotated destructive, no policy of its own: its calls wait (APPROVAL_DESTRUCTIVE=require,
    // the default), and its manifest says so, as the MCP gateway and agents read it.
    const destructive = tools.find(
      (m) => (m as { name: string }).name === 'destructive_noop',
    ) as ToolManifest;
    t.match(
      destructive.approval,
      { approverRoles: ['approver'], allowSelfApproval: false },
      "a destructive tool shows the operator's default policy",
    );
    t.equal(echo.approval, undefined, 'a tool that never waits shows none');
  });

  t.test('POST /executions: answers with the terminal answer and a fitting status', async (t) => {
    const ok = await post(alice, { requestId: 'h-1', tool: 'echo', args: { a: 1 } });
    t.equal(ok.statusCode, 200);
    t.match(ok.json(), { status: 'completed', requestId: 'h-1', result: { a: 1 } });
    const again = await post(alice, { requestId: 'h-1', tool: 'echo', args: { a: 1 } });
    t.strictSame(again.json(), ok.json(), 'the same request id: the same answer');
    const reused = await post(alice, { requestId: 'h-1', tool: 'echo', args: { a: 2 } });
    t.equal(reused.statusCode, 409, 'the same request id with other arguments: a conflict');
    t.match(reused.json(), {
      status: 'failed',
      requestId: 'h-1',
      executionId: null,
      error: { code: 'IDEMPOTENCY_CONFLICT', message: /request id h-1 was first used with another tool/ },
    });

    const generated = await post(alice, { tool: 'noop', args: {} });
    t.equal(generated.statusCode, 200);
    t.type(
      generated.json<{ requestId: string }>().requestId,
      'string',
      'a request id is generated when none is given',
    );

    const cases: Array<[string, unknown, number, string]> = [
      ['bad arguments', { requestId: 'h-2', tool: 'sleep', args: { ms: 'x' } }, 400, 'VALIDATION'],
      ['an unknown key', { requestId: 'h-3', tool: 'noop', args: {}, extra: true }, 400, 'VALIDATION'],
      ['an unknown tool', { requestId: 'h-4', tool: 'nope', args: {} }, 404, 'UNKNOWN_TOOL'],
      ['another user', { requestId: 'h-5', tool: 'noop', args: {}, userId: 'bob' }, 403, 'FORBIDDEN'],
      ['an admin-only tool', { requestId: 'h-6', tool: 'admin_runtime_info', args: {} }, 403, 'FORBIDDEN'],
      ['a tool error', { requestId: 'h-7', tool: 'fail', args: {} }, 502, 'TOOL_ERROR'],
      ['invalid output', { requestId: 'h-8', tool: 'bad_output', args: {} }, 502, 'OUTPUT_INVALID'],
      ['a timeout', { requestId: 'h-9', tool: 'hang', args: {} }, 504, 'TIMEOUT'],
      ['a bad request id', { requestId: 'a b', tool: 'noop', args: {} }, 400, 'MALFORMED'],
    ];
    for (const [what, payload, status, code] of cases) {
      const res = await post(alice, payload);
      t.equal(res.statusCode, status, `${what}: ${status}`);
      t.match(res.json(), { status: 'failed', error: { code } }, `${what}: ${code}`);
    }
    const events = await h.events('alice');
    for (const id of ['h-2', 'h-3', 'h-4', 'h-5', 'h-6', 'h-7', 'h-8', 'h-9']) {
      t.ok(
        events.some((e) => e.metadata.requestId === id && e.type === 'ToolFailed'),
        `${id} is recorded`,
      );
    }
    const notObject = await app.inject({
      method: 'POST',
      url: '/executions',
      headers: { ...auth(alice), 'content-type': 'application/json' },
      payload: '[1,2]',
    });
    t.equal(notObject.statusCode, 400);
    const notJson = await app.inject({
      method: 'POST',
      url: '/executions',
      headers: { ...auth(alice), 'content-type': 'application/json' },
      payload: '{nope',
    });
    t.equal(notJson.statusCode, 400);
    // Parsed, but nested too deeply to be written out again: refused for good, not "retry later".
    const deep = await app.inject({
      method: 'POST',
      url: '/executions',
      headers: { ...auth(alice), 'content-type': 'application/json' },
      payload: `{"tool":"noop","args":{"x":${'['.repeat(100_000)}${']'.repeat(100_000)}}}`,
    });
    t.equal(deep.statusCode, 400, 'deep nesting is a bad request');
    t.match(deep.json(), { status: 'failed', error: { code: 'VALIDATION' } });
  });

  t.test(
    'POST /executions: a body that does not parse spends only a request id the caller chose',
    async (t) => {
      const chosen = await post(alice, { requestId: 'h-spent', tool: 'noop', args: {}, extra: true });
      t.equal(chosen.statusCode, 400);
      t.match(chosen.json(), {
        status: 'failed',
        error: { code: 'VALIDATION', message: /extra.*\(request id h-spent is now spent on this refusal/s },
      });
      const made = await post(alice, { tool: 'noop', args: {}, extra: true });
      t.equal(made.statusCode, 400);
      const answer = made.json<{ requestId: string; error: { code: string; message: string } }>();
      t.equal(answer.error.code, 'VALIDATION');
      t.match(answer.error.message, /extra/, 'says what is wrong');
      t.notMatch(
        answer.error.message,
        /spent|new one|request id/,
        'no request id to replace: the route made it (the corrected request is sent as this one was)',
      );
      t.ok(
        (await h.events('alice')).some(
          (e) => e.metadata.requestId === answer.requestId && e.type === 'ToolFailed',
        ),
        'still recorded under the id the route made',
      );
    },
  );

  t.test('a request id with a line break is a bad request (400), not an overload to retry', async (t) => {
    for (const requestId of ['x\ny', 'x\r\ny', 'x\r']) {
      const res = await post(alice, { requestId, tool: 'noop', args: {} });
      t.equal(res.statusCode, 400, `${JSON.stringify(requestId)}: 400`);
      t.notOk(res.headers['retry-after'], 'nothing to retry');
      t.match(
        res.json(),
        {
          status: 'failed',
          requestId: null,
          error: { code: 'MALFORMED', message: /request id must match/ },
        },
        'MALFORMED (nothing to record it under), saying what a request id is',
      );
      // The agent client (NATS) is answered the same, rather than failing to publish.
      const answer = await h.agent.execute('noop', {}, { token: alice, requestId, timeoutMs: 10_000 });
      t.match(
        answer,
        {
          status: 'failed',
          requestId: null,
          error: { code: 'MALFORMED', message: /request id must match/ },
        },
        'the agent client: the same refusal',
      );
    }
    t.notMatch(h.logs.text, /not accepted by the intake/, 'nothing logged as an intake failure');
  });

  t.test('POST /executions: 401 without a valid token', async (t) => {
    const none = await post(null, { tool: 'noop', args: {} });
    t.equal(none.statusCode, 401);
    t.match(none.json(), { status: 'failed', error: { code: 'UNAUTHENTICATED' } });
    const expired = await post(await h.token('alice', [], Math.floor(Date.now() / 1000) - 5), {
      tool: 'noop',
      args: {},
    });
    t.equal(expired.statusCode, 401);
    const forged = await post(`${alice.slice(0, -3)}xyz`, { tool: 'noop', args: {} });
    t.equal(forged.statusCode, 401);
    // The token is checked before the body is read: without one, no body is parsed, however
    // large or malformed (a stranger cannot make the dispatcher parse megabytes of JSON).
    for (const [what, payload] of [
      ['over the body limit', `{"args":"${'x'.repeat(2 * 1024 * 1024)}"}`],
      ['not JSON', '{"tool": nope'],
    ] as const) {
      for (const url of ['/executions', `/executions/r-1/cancel`, '/executions/r-1/approve']) {
        const res = await app.inject({
          method: 'POST',
          url,
          headers: { 'content-type': 'application/json' },
          payload,
        });
        t.equal(res.statusCode, 401, `${url}, ${what}: 401, not a complaint about the body`);
      }
    }
  });

  t.test(
    'POST /executions: a body that is not JSON is answered as any refusal, saying what to send',
    async (t) => {
      const send = (headers: Record<string, string>, payload: string) =>
        app.inject({ method: 'POST', url: '/executions', headers: { ...auth(alice), ...headers }, payload });
      // What `curl -d` sends without -H 'content-type: application/json'.
      const form = await send({ 'content-type': 'application/x-www-form-urlencoded' }, '{"tool":"noop"}');
      t.equal(form.statusCode, 415);
      t.match(form.json(), {
        status: 'failed',
        requestId: null,
        error: { code: 'MALFORMED', message: /content-type: application\/json/ },
      });
      const text = await send({ 'content-type': 'text/plain' }, '{"tool":"noop","args":{}}');
      t.equal(text.statusCode, 415, 'JSON sent as text/plain: the content type is named, not the body');
      t.match(text.json(), { status: 'failed', error: { code: 'MALFORMED', message: /content-type/ } });
      const broken = await send({ 'content-type': 'application/json' }, '{"tool":');
      t.equal(broken.statusCode, 400);
      t.match(broken.json(), { status: 'failed', error: { code: 'MALFORMED', message: /not JSON/ } });
      const huge = await send(
        { 'content-type': 'application/json' },
        JSON.stringify({ tool: 'echo', args: { a: 'x'.repeat(2 * 1024 * 1024) } }),
      );
      t.equal(huge.statusCode, 413);
      t.match(huge.json(), { status: 'failed', error: { code: 'MALFORMED', message: /too large/ } });
      // Other routes keep their own answers to an unreadable body.
      const approve = await app.inject({
        method: 'POST',
        url: `/executions/${executionIdFor('alice', 'h-1')}/approve`,
        headers: { ...auth(alice), 'content-type': 'application/json' },
        payload: '{"reason":',
      });
      t.equal(approve.statusCode, 400);
      t.notMatch(approve.json(), { status: 'failed' }, 'not an AgentAnswer');
    },
  );

  t.test('GET /executions/:id: from the caller’s own stream only', async (t) => {
    const executionId = executionIdFor('alice', 'h-1');
    const own = await app.inject({ method: 'GET', url: `/executions/${executionId}`, headers: auth(alice) });
    t.equal(own.statusCode, 200);
    t.match(own.json(), {
      executionId,
      requestId: 'h-1',
      tool: 'echo',
      status: 'completed',
      answer: { status: 'completed', result: { a: 1 } },
    });
    t.strictSame(
      own.json<{ events: Array<{ type: string }> }>().events.map((e) => e.type),
      ['ToolRequested', 'ToolExecuting', 'ToolCompleted'],
    );
    const upper = await app.inject({
      method: 'GET',
      url: `/executions/${executionId.toUpperCase()}`,
      headers: auth(alice),
    });
    t.match(
      upper.json(),
      { executionId, status: 'completed' },
      'the id in upper case names the same execution',
    );
    const asBob = await app.inject({ method: 'GET', url: `/executions/${executionId}`, headers: auth(bob) });
    t.equal(asBob.statusCode, 404, "another user's execution is not found");
    const byRequestId = await app.inject({ method: 'GET', url: '/executions/h-1', headers: auth(alice) });
    t.match(byRequestId.json(), { executionId, requestId: 'h-1' }, 'named by its request id, found too');
    const notHers = await app.inject({ method: 'GET', url: '/executions/h-1', headers: auth(bob) });
    t.equal(notHers.statusCode, 404, "a request id names the caller's own execution only");
    const longest = 'r'.repeat(128); // the longest request id there is: a 404, not a 414
    const long = await app.inject({ method: 'GET', url: `/executions/${longest}`, headers: auth(alice) });
    t.match(long.json(), {
      error: { code: 'NOT_FOUND', message: new RegExp(executionIdFor('alice', longest)) },
    });
    const bad = await app.inject({ method: 'GET', url: '/executions/not%20an%20id', headers: auth(alice) });
    t.equal(bad.statusCode, 400, 'neither an execution id nor a request id');
    // Its errors have the HTTP APIs' shape, not an agent's answer (no `status: 'failed'` that reads
    // as the execution's), and the code the cancel route gives the same path.
    t.strictSame(Object.keys(bad.json()), ['error'], 'the error shape');
    t.match(bad.json(), { error: { code: 'MALFORMED', message: /names an execution by its id/ } });
    const badCancel = await app.inject({
      method: 'POST',
      url: '/executions/not%20an%20id/cancel',
      headers: auth(alice),
    });
    t.equal(badCancel.json().error.code, bad.json().error.code, 'the cancel route: the same code');
    const badUser = await app.inject({
      method: 'GET',
      url: `/executions/${executionId}?userId=a.b`,
      headers: auth(alice),
    });
    t.equal(badUser.statusCode, 400);
    t.strictSame(Object.keys(badUser.json()), ['error'], 'a bad userId: the error shape');
    t.equal(badUser.json().error.code, 'MALFORMED');
    for (const headers of [{}, auth(`${alice.slice(0, -3)}xyz`)]) {
      const anon = await app.inject({ method: 'GET', url: `/executions/${executionId}`, headers });
      t.equal(anon.statusCode, 401);
      t.strictSame(Object.keys(anon.json()), ['error'], '401: the error shape');
      t.equal(anon.json().error.code, 'UNAUTHENTICATED');
    }
  });

  t.test('GET /executions on the dispatcher says where the lists are', async (t) => {
    const res = await app.inject({ method: 'GET', url: '/executions', headers: auth(alice) });
    t.equal(res.statusCode, 404);
    t.match(res.json(), {
      error: { code: 'NOT_FOUND', message: /projector's: GET \/executions on the projector/ },
    });
    t.notMatch(res.json().error.message, /port|8081/, 'DISPATCHER_PROJECTOR_URL unset: no address guessed');
    // Told where the projector is, it names it.
    const told = await h.start({ DISPATCHER_PROJECTOR_URL: 'http://projector.example:9181/' });
    const named = await told.app.inject({ method: 'GET', url: '/executions', headers: auth(alice) });
    t.equal(named.statusCode, 404);
    t.match(named.json(), {
      error: { code: 'NOT_FOUND', message: /projector's: GET http:\/\/projector\.example:9181\/executions / },
    });
  });

  t.test('health and metrics', async (t) => {
    const ready = await app.inject({ method: 'GET', url: '/health/ready' });
    t.equal(ready.statusCode, 200);
    t.match(ready.json(), {
      status: 'ready',
      checks: { nats: 'ok', eventstore: 'ok', redis: 'ok', intake: 'ok' },
    });
    const metrics = (await app.inject({ method: 'GET', url: '/metrics' })).body;
    t.match(metrics, /toolbus_executions_total\{[^}]*tool="echo"[^}]*outcome="completed"[^}]*\} \d/);
    t.match(metrics, /toolbus_executions_total\{[^}]*tool="hang"[^}]*outcome="TIMEOUT"/);
    t.match(metrics, /toolbus_execution_duration_seconds_bucket/);
    t.match(metrics, /toolbus_executions_in_flight/);
    t.match(metrics, /toolbus_rate_limited_total/);
    t.match(metrics, /toolbus_redis_errors_total/);
  });

  t.test('no token in the logs of HTTP requests', async (t) => {
    t.ok(h.logs.lines.length > 0);
    t.notOk(h.logs.text.includes(alice), 'the token is not logged');
    t.notOk(h.logs.text.includes(alice.split('.')[2]!), 'nor its signature');
  });
});

t.test('POST /executions: 429 when rate limited', async (t) => {
  const h = await harness(t, { RATE_LIMIT_PER_SEC: '1', RATE_LIMIT_BURST: '1' });
  const d = await h.start();
  const token = await h.token('rl');
  const statuses: number[] = [];
  for (let i = 0; i < 4; i++) {
    const res = await d.app.inject({
      method: 'POST',
      url: '/executions',
      headers: { authorization: `Bearer ${token}` },
      payload: { requestId: `rl-${i}`, tool: 'noop', args: {} },
    });
    statuses.push(res.statusCode);
    if (res.statusCode === 429) {
      t.match(res.json(), { error: { code: 'RATE_LIMITED', details: { retryAfterMs: Number } } });
      t.match(res.headers['retry-after'], /^[1-9]\d*$/, 'with Retry-After in seconds');
    }
  }
  t.equal(statuses[0], 200);
  t.ok(statuses.includes(429), `a burst beyond the limit gets 429 (${statuses.join(',')})`);
});

t.test(
  'POST /executions: 504 when the wait ends first; the same request id waits for the same run',
  async (t) => {
    const h = await harness(t, { HTTP_WAIT_MS: '300' });
    const d = await h.start();
    const token = await h.token('slow');
    const post = () =>
      d.app.inject({
        method: 'POST',
        url: '/executions',
        headers: { authorization: `Bearer ${token}` },
        payload: { requestId: 'w-1', tool: 'sleep', args: { ms: 1_500 } },
      });
    const first = await post();
    const executionId = executionIdFor('slow', 'w-1');
    t.equal(first.statusCode, 504);
    t.equal(first.headers['location'], `/executions/${executionId}`);
    t.match(first.json(), {
      status: 'pending',
      requestId: 'w-1',
      executionId,
      message: /waiting for a dispatcher or running.*requestId w-1.*not run twice.*OVERLOADED/s,
    });
    const read = () =>
      d.app.inject({
        method: 'GET',
        url: `/executions/${executionId}`,
        headers: { authorization: `Bearer ${token}` },
      });
    await pollUntil('the execution is recorded completed', async () =>
      (await read()).json<{ status?: string }>().status === 'completed' ? true : undefined,
    );
    const again = await post();
    t.equal(again.statusCode, 200, 'sent again with its request id: the answer of the same run');
    t.match(again.json(), { status: 'completed', requestId: 'w-1', executionId });
    const runs = (await h.events('slow')).filter((e) => e.type === 'ToolExecuting');
    t.equal(runs.length, 1, 'run once');
  },
);
