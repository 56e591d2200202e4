import { spawn } from 'node:child_process';
import { request } from 'node:http';
import { connect as connectTcp } from 'node:net';
import { Client, ProtocolError, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import t from 'tap';
import { z } from 'zod';
import { userStream, type ToolEvent } from '../../contracts/index.ts';
import { verifyHistory } from '../../services/auditor/verify.ts';
import { signToken } from '../../lib/auth.ts';
import { STACK_JWT_SECRET, startTestStack, type TestStack } from '../support/stack.ts';
import { postMcp } from '../support/mcp.ts';

/**
 * The MCP gateway end to end: the SDK's own client over real HTTP against the gateway process,
 * the dispatcher process behind it, the store underneath. What an MCP client sees, and what the
 * user's stream holds afterwards.
 */

const KEY = 'io.toolbus/idempotencyKey';

async function connect(ts: TestStack, token: string, modern = false): Promise<Client> {
  const client = new Client(
    { name: 'toolbus-e2e', version: '1.0.0' },
    modern ? { versionNegotiation: { mode: { pin: '2026-07-28' } } } : {},
  );
  const transport = new StreamableHTTPClientTransport(new URL(`${ts.url('gateway')}/mcp`), {
    requestInit: { headers: { authorization: `Bearer ${token}` } },
  });
  await client.connect(transport);
  return client;
}

async function eventsOf(ts: TestStack, userId: string): Promise<ToolEvent[]> {
  const out: ToolEvent[] = [];
  for await (const e of ts.store.readStream(userStream(userId))) out.push(e as unknown as ToolEvent);
  return out;
}

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>): Promise<T> {
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The execution of `tool` that has started (its ToolExecuting is recorded), if any. */
async function startedExecution(
  ts: TestStack,
  userId: string,
  tool: string,
  args: Record<string, unknown>,
): Promise<string | undefined> {
  const events = await eventsOf(ts, userId);
  const requested = events.filter(
    (e) =>
      e.type === 'ToolRequested' &&
      e.data.tool === tool &&
      JSON.stringify(e.data.args) === JSON.stringify(args),
  );
  const ids = new Set(requested.map((e) => e.metadata.executionId));
  return events.find((e) => e.type === 'ToolExecuting' && ids.has(e.metadata.executionId))?.metadata
    .executionId;
}

const terminalOf = async (ts: TestStack, userId: string, executionId: string) =>
  (await eventsOf(ts, userId)).find((e) => e.type === 'ToolFailed' && e.metadata.executionId === executionId);

const executionOf = (result: { _meta?: Record<string, unknown> }) =>
  (result._meta?.['io.toolbus/execution'] as { executionId: string }).executionId;

/** The JSON-RPC message of a response, whether sent as JSON or as one SSE event. */
async function rpcOf(res: Response): Promise<unknown> {
  const text = await res.text();
  if (!res.headers.get('content-type')?.startsWith('text/event-stream')) return JSON.parse(text);
  const data = text.split('\n').find((l) => l.startsWith('data: '));
  return data ? JSON.parse(data.slice(6)) : null;
}

/**
 * A raw HTTP/1.1 connection to `base`, for what fetch cannot do (send a body slowly, see the
 * connection's fate). `until` fails as soon as the connection closes without what it waits for.
 */
function rawConnection(t: { teardown: (fn: () => unknown) => void }, base: string) {
  const url = new URL(base);
  const socket = connectTcp(Number(url.port), url.hostname);
  t.teardown(() => socket.destroy());
  let received = '';
  let ended = false;
  const errors: Error[] = [];
  socket.on('data', (d: Buffer) => (received += d.toString('latin1')));
  socket.on('error', (e) => errors.push(e));
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  void closed.then(() => (ended = true));
  return {
    socket,
    errors,
    closed,
    received: () => received,
    clear: () => void (received = ''),
    head: (length: number, token: string | null) =>
      `POST /mcp HTTP/1.1\r\nhost: ${url.host}\r\n${token ? `authorization: Bearer ${token}\r\n` : ''}` +
      `content-type: application/json\r\naccept: application/json, text/event-stream\r\n` +
      `mcp-protocol-version: 2025-11-25\r\ncontent-length: ${length}\r\n\r\n`,
    async until(what: string, seen: (received: string) => boolean) {
      while (!seen(received)) {
        if (ended)
          throw new Error(`the connection closed before ${what}; received: ${received.slice(0, 300)}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
  };
}

const post = (ts: TestStack, body: string, headers: Record<string, string> = {}) =>
  postMcp(`${ts.url('gateway')}/mcp`, body, headers);

t.test(
  'an MCP client lists and calls tools through the gateway; every call is an audited execution',
  async (t) => {
    const ts = await startTestStack(t, { services: ['dispatcher', 'gateway'] });
    const token = await ts.token('ann');
    const client = await connect(ts, token);
    t.teardown(() => client.close());

    t.test('tools/list: the user’s tools, in name order, with schemas and annotations', async (t) => {
      const { tools } = await client.listTools();
      const names = tools.map((x) => x.name);
      t.same(names, [...names].sort(), 'stable order');
      t.ok(names.includes('echo') && names.includes('progress'), 'the user’s tools');
      t.notOk(names.includes('admin_runtime_info'), 'an admin-only tool is not listed for a user');
      const stats = tools.find((x) => x.name === 'dataset_stats')!;
      t.equal(stats.title, 'Dataset statistics');
      t.match(stats.annotations, {
        readOnlyHint: true,
        destructiveHint: false,
        idempotentHint: true,
        openWorldHint: false,
      });
      t.equal(stats.inputSchema.type, 'object');
      t.equal(stats.outputSchema?.type, 'object');
      const admin = await connect(ts, await ts.token('root', ['user', 'admin']));
      t.teardown(() => admin.close());
      t.ok(
        (await admin.listTools()).tools.some((x) => x.name === 'admin_runtime_info'),
        'an admin sees it',
      );
      await client.setLoggingLevel('info'); // accepted (2025 era)
    });

    t.test('tools/call: structured result and text, progress as notifications', async (t) => {
      const seen: Array<{ progress: number; total?: number; message?: string }> = [];
      const result = await client.callTool(
        { name: 'progress', arguments: { steps: 3, delayMs: 30 } },
        { onprogress: (p) => seen.push(p) },
      );
      t.notOk(result.isError);
      t.same(result.structuredContent, { steps: 3 });
      t.same(JSON.parse((result.content as Array<{ text: string }>)[0]!.text), { steps: 3 });
      t.ok(seen.length >= 1, `progress reached the client (${seen.length})`);
      t.match(seen.at(-1), { progress: 1, total: 1, message: 'step 3 of 3' });
      t.ok(
        seen.every((p, i) => i === 0 || p.progress > seen[i - 1]!.progress),
        'progress only goes forward',
      );
    });

    t.test('a tool’s failure and bad arguments are tool errors with the typed code', async (t) => {
      const failed = await client.callTool({ name: 'fail', arguments: { message: 'boom' } });
      t.equal(failed.isError, true);
      t.match((failed.content as Array<{ text: string }>)[0]!.text, /^TOOL_ERROR: /);
      t.match(failed._meta?.['io.toolbus/error'], { code: 'TOOL_ERROR' });
      const bad = await client.callTool({ name: 'sleep', arguments: { ms: 'long' } });
      t.equal(bad.isError, true);
      t.match(bad._meta?.['io.toolbus/error'], { code: 'VALIDATION' });
    });

    t.test('an unknown tool (or one the user may not call) is a JSON-RPC invalid-params error', async (t) => {
      for (const name of ['no_such_tool', 'admin_runtime_info']) {
        const e = await client.callTool({ name, arguments: {} }).then(
          () => null,
          (e: unknown) => e,
        );
        t.ok(e instanceof ProtocolError, name);
        t.equal((e as ProtocolError).code, -32602, name);
      }
    });

    t.test(
      'an idempotency key: the same key gets the first answer; other arguments are refused',
      async (t) => {
        const first = await client.callTool({ name: 'echo', arguments: { n: 1 }, _meta: { [KEY]: 'k-1' } });
        const again = await client.callTool({ name: 'echo', arguments: { n: 1 }, _meta: { [KEY]: 'k-1' } });
        t.same(again.structuredContent, { n: 1 });
        t.equal(executionOf(again), executionOf(first), 'the same execution');
        const conflict = await client
          .callTool({ name: 'echo', arguments: { n: 2 }, _meta: { [KEY]: 'k-1' } })
          .then(
            () => null,
            (e: unknown) => e,
          );
        t.ok(conflict instanceof ProtocolError);
        t.equal((conflict as ProtocolError).code, -32602);
        t.match((conflict as ProtocolError).data, {
          code: 'IDEMPOTENCY_CONFLICT',
          executionId: executionOf(first),
        });
        // Another user's same key is another execution.
        const bob = await connect(ts, await ts.token('bob'));
        t.teardown(() => bob.close());
        const bobs = await bob.callTool({ name: 'echo', arguments: { n: 2 }, _meta: { [KEY]: 'k-1' } });
        t.not(executionOf(bobs), executionOf(first));
      },
    );

    t.test('the client cancelling a call cancels the execution: it ends CANCELLED', async (t) => {
      const abort = new AbortController();
      const call = client.callTool(
        { name: 'sleep_idempotent', arguments: { ms: 4_000 } },
        { signal: abort.signal },
      );
      call.catch(() => undefined);
      const started = await waitFor('the execution to start', () =>
        startedExecution(ts, 'ann', 'sleep_idempotent', { ms: 4_000 }),
      );
      abort.abort(new Error('the user changed their mind'));
      await t.rejects(call);
      const failed = await waitFor('the execution to end', () => terminalOf(ts, 'ann', started));
      t.match(
        failed,
        {
          data: {
            error: {
              code: 'CANCELLED',
              details: { reason: /^the MCP client: (Error: )?the user changed their mind$/ },
            },
          },
        },
        'the record says who gave it up, and why',
      );
    });

    t.test('the 2026-07-28 revision: list and call, and closing the call’s stream cancels it', async (t) => {
      const modern = await connect(ts, token, true);
      t.teardown(() => modern.close());
      t.ok((await modern.listTools()).tools.some((x) => x.name === 'echo'));
      const r = await modern.callTool({ name: 'echo', arguments: { era: 'modern' } });
      t.same(r.structuredContent, { era: 'modern' });
      const abort = new AbortController();
      const call = modern.callTool({ name: 'sleep', arguments: { ms: 4_500 } }, { signal: abort.signal });
      call.catch(() => undefined);
      const started = await waitFor('the execution to start', () =>
        startedExecution(ts, 'ann', 'sleep', { ms: 4_500 }),
      );
      abort.abort();
      const failed = await waitFor('the execution to end', () => terminalOf(ts, 'ann', started));
      t.match(failed, { data: { error: { code: 'CANCELLED', details: { reason: /^the MCP client: / } } } });
    });

    t.test('bad HTTP and JSON-RPC get the spec’s errors and record nothing', async (t) => {
      const before = (await eventsOf(ts, 'ann')).length;
      const auth = { authorization: `Bearer ${token}` };
      const notJson = await post(ts, '{"jsonrpc": "2.0", "id": 1, "method": ', auth);
      t.equal(notJson.status, 400);
      t.match(await rpcOf(notJson), { error: { code: -32700 } });
      const unknown = await post(
        ts,
        JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'tools/explode', params: {} }),
        auth,
      );
      t.match(await rpcOf(unknown), { error: { code: -32601 } }, 'unknown method');
      const huge = await post(
        ts,
        JSON.stringify({
          jsonrpc: '2.0',
          id: 3,
          method: 'tools/call',
          params: { name: 'echo', arguments: { x: 'x'.repeat(2_000_000) } },
        }),
        auth,
      );
      t.equal(huge.status, 413, 'a body over the limit');
      t.match(await rpcOf(huge), { error: { code: -32600 } });
      const badVersion = await post(
        ts,
        JSON.stringify({ jsonrpc: '2.0', id: 4, method: 'tools/list', params: {} }),
        {
          ...auth,
          'mcp-protocol-version': '1999-01-01',
        },
      );
      t.equal(badVersion.status, 400, 'an unsupported protocol version');
      t.match(await rpcOf(badVersion), { error: { message: /Unsupported protocol version/ } });
      const batch = await post(
        ts,
        JSON.stringify([
          { jsonrpc: '2.0', id: 5, method: 'tools/list', params: {} },
          { jsonrpc: '2.0', id: 6, method: 'tools/call', params: { name: 'echo', arguments: {} } },
        ]),
        auth,
      );
      t.equal(batch.status, 400, 'a batch');
      t.match(await rpcOf(batch), { error: { code: -32600, message: /batches are not supported/ } });
      const notRpc = await post(ts, JSON.stringify({ hello: 'world' }), auth);
      t.equal(notRpc.status, 400, 'not a JSON-RPC message');
      t.match(await rpcOf(notRpc), { error: { code: -32600 } });
      t.equal((await eventsOf(ts, 'ann')).length, before, 'nothing recorded');
    });

    t.test(
      'a client still sending an over-limit body reads the 413, and its connection stays usable',
      async (t) => {
        const raw = rawConnection(t, ts.url('gateway'));
        const total = 3 * 1024 * 1024;
        const chunk = Buffer.alloc(64 * 1024, 'x');
        raw.socket.write(raw.head(total, token));
        raw.socket.write(chunk);
        // The answer comes before the body is sent: the client goes on sending, as a slow upload would.
        await raw.until('the 413', (r) => /\r\n\r\n/.test(r));
        t.match(raw.received(), /^HTTP\/1\.1 413 /, 'answered before the body ends');
        t.notMatch(raw.received(), /connection: close/i, 'the connection is kept');
        for (let sent = chunk.length; sent < total; sent += chunk.length) {
          await new Promise<void>((resolve, reject) =>
            raw.socket.write(chunk.subarray(0, Math.min(chunk.length, total - sent)), (e) =>
              e ? reject(e) : resolve(),
            ),
          );
        }
        raw.clear();
        const list = JSON.stringify({ jsonrpc: '2.0', id: 9, method: 'tools/list', params: {} });
        raw.socket.write(raw.head(Buffer.byteLength(list), token) + list);
        await raw.until('the second answer', (r) => /"tools"/.test(r));
        t.match(raw.received(), /^HTTP\/1\.1 200 /, 'a request after it on the same connection is answered');
        t.same(raw.errors, [], 'no write was reset');
      },
    );

    t.test('a body sent without a token: 401 at once; one past the size limit is cut off', async (t) => {
      const small = rawConnection(t, ts.url('gateway'));
      small.socket.write(small.head(1_000, null) + 'x'.repeat(1_000));
      await small.until('the 401', (r) => /\r\n\r\n/.test(r));
      t.match(small.received(), /^HTTP\/1\.1 401 /);
      t.notMatch(small.received(), /connection: close/i, 'a body within the limit: the connection is kept');
      const big = rawConnection(t, ts.url('gateway'));
      big.socket.write(big.head(64 * 1024 * 1024, null));
      big.socket.write(Buffer.alloc(64 * 1024, 'x'));
      await big.until('the 401', (r) => /\r\n\r\n/.test(r));
      t.match(big.received(), /^HTTP\/1\.1 401 /);
      const cut = t.match(
        big.received(),
        /connection: close/i,
        'a body past the limit is not read: the connection closes',
      );
      if (cut) await big.closed;
    });

    t.test(
      'scripts/mcp.ts, the README’s client: calls, and gives up only after MCP_TIMEOUT_MS',
      async (t) => {
        const script = (env: Record<string, string>, ...args: string[]) =>
          new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
            const child = spawn(process.execPath, ['--import', 'tsx', 'scripts/mcp.ts', ...args], {
              env: { ...process.env, MCP_URL: `${ts.url('gateway')}/mcp`, ...env },
            });
            let [out, err] = ['', ''];
            child.stdout.on('data', (d: Buffer) => (out += d.toString()));
            child.stderr.on('data', (d: Buffer) => (err += d.toString()));
            child.once('exit', (code) => resolve({ code, out, err }));
          });
        const sam = await ts.token('sam');
        const called = await script({ TOOLBUS_TOKEN: sam }, 'call', 'echo', '{"from":"the script"}');
        t.equal(called.code, 0, called.err);
        t.match(JSON.parse(called.out), { structuredContent: { from: 'the script' } });
        // A failed call prints its result and exits 1: a script can tell.
        const failed = await script({ TOOLBUS_TOKEN: await ts.token('sue') }, 'call', 'fail', '{}');
        t.equal(failed.code, 1, 'a failed call exits 1');
        t.match(JSON.parse(failed.out), { isError: true });
        // Its own deadline, not the SDK's 60 s: a 1 s one gives up on a 4 s call, which is cancelled.
        const gaveUp = await script(
          { TOOLBUS_TOKEN: sam, MCP_TIMEOUT_MS: '1000' },
          'call',
          'sleep',
          '{"ms":4000}',
        );
        t.equal(gaveUp.code, 1);
        t.match(gaveUp.err, /^error: .*timed out/im);
        const ended = await waitFor('the sleep to end', async () => {
          const events = await eventsOf(ts, 'sam');
          return events.find((e) => e.type === 'ToolFailed');
        });
        t.match(ended, { data: { error: { code: 'CANCELLED', details: { reason: /^the MCP client: / } } } });
      },
    );

    t.test('afterwards the user’s stream holds exactly those executions, and it verifies', async (t) => {
      const events = await eventsOf(ts, 'ann');
      const byExecution = new Map<string, string[]>();
      for (const e of events)
        byExecution.set(e.metadata.executionId, [...(byExecution.get(e.metadata.executionId) ?? []), e.type]);
      const terminal = (types: string[]) => types.filter((x) => x === 'ToolCompleted' || x === 'ToolFailed');
      // progress, fail, sleep (bad args), echo k-1 (once for two calls and a conflict), sleep_idempotent
      // (cancelled), echo (modern), sleep (modern, cancelled).
      t.equal(byExecution.size, 7, 'one execution per call, none for a retry, a conflict or a refusal');
      for (const [id, types] of byExecution) {
        t.equal(types[0], 'ToolRequested', `${id} starts requested`);
        t.equal(terminal(types).length, 1, `${id} ends exactly once`);
      }
      const report = await verifyHistory(ts.store, 'ann');
      t.ok(report.ok, `the auditor's verification passes (${JSON.stringify(report.break)})`);
      const metrics = await (await fetch(`${ts.url('gateway')}/metrics`)).text();
      t.match(metrics, /toolbus_mcp_calls_total\{[^}]*outcome="completed"[^}]*\} [1-9]/, 'calls are counted');
      t.match(metrics, /toolbus_mcp_calls_total\{[^}]*outcome="CANCELLED"[^}]*\} [1-9]/);
      t.match(
        metrics,
        /toolbus_mcp_calls_total\{[^}]*outcome="refused"[^}]*\} [1-9]/,
        'unknown tool, conflict',
      );
    });
  },
);

t.test('authorization: metadata, 401 challenges, audience and Origin', async (t) => {
  const ts = await startTestStack(t, {
    services: ['dispatcher', 'gateway'],
    env: {
      JWT_ISSUER: 'https://id.example.test',
      JWT_AUDIENCE: 'toolbus-mcp',
      GATEWAY_ALLOWED_ORIGINS: 'localhost,app.example.test',
    },
  });
  const gw = ts.url('gateway');
  const list = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list', params: {} });

  const none = await post(ts, list);
  t.equal(none.status, 401, 'no token');
  const challenge = none.headers.get('www-authenticate') ?? '';
  t.match(challenge, /^Bearer resource_metadata="([^"]+)"$/);
  const metadataUrl = /resource_metadata="([^"]+)"/.exec(challenge)![1]!;
  t.equal(metadataUrl, `${gw}/.well-known/oauth-protected-resource/mcp`);
  const metadata = (await (await fetch(metadataUrl)).json()) as Record<string, unknown>;
  t.match(metadata, {
    resource: `${gw}/mcp`,
    authorization_servers: ['https://id.example.test'],
    bearer_methods_supported: ['header'],
  });
  t.same(await (await fetch(`${gw}/.well-known/oauth-protected-resource`)).json(), metadata);

  t.equal((await post(ts, 'x'.repeat(2_000_000))).status, 401, 'no body is read before the token is checked');
  const wrong = await post(ts, list, { authorization: 'Bearer not-a-token' });
  t.equal(wrong.status, 401, 'a bad token');
  t.match(wrong.headers.get('www-authenticate'), /error="invalid_token"/);
  // A token of no issuer (or another) is refused: the gateway verifies as every service does.
  t.equal(
    (await post(ts, list, { authorization: `Bearer ${await ts.token('ann')}` })).status,
    401,
    'no issuer',
  );
  const sign = (aud: string) =>
    signToken(STACK_JWT_SECRET, { sub: 'ann', roles: ['user'], iss: 'https://id.example.test', aud });
  const otherAudience = await post(ts, list, { authorization: `Bearer ${await sign('another-api')}` });
  t.equal(otherAudience.status, 401, 'a token for another audience');
  const right = await post(ts, list, { authorization: `Bearer ${await sign('toolbus-mcp')}` });
  t.equal(right.status, 200, 'the right issuer and audience');

  const rebound = await new Promise<number>((resolve, reject) => {
    const req = request(
      `${gw}/mcp`,
      { method: 'POST', headers: { host: 'evil.example.com', 'content-type': 'application/json' } },
      (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      },
    );
    req.on('error', reject);
    req.end(list);
  });
  t.equal(rebound, 403, 'a Host that is not this (loopback) gateway’s: DNS rebinding');
  const bad = await post(ts, list, { origin: 'https://evil.example', authorization: 'Bearer x' });
  t.equal(bad.status, 403, 'an Origin not allowed');
  const good = await post(ts, list, { origin: 'https://app.example.test' });
  t.equal(good.status, 401, 'an allowed Origin goes on to authentication');
  t.equal((await eventsOf(ts, 'ann')).length, 0, 'nothing recorded');
});

t.test(
  'test mode: a request without a token acts as the fixed test principal, recorded as any user',
  async (t) => {
    const ts = await startTestStack(t, {
      services: ['dispatcher', 'gateway'],
      env: { GATEWAY_TEST_PRINCIPAL: 'conformance' },
    });
    const client = new Client({ name: 'conformance-like', version: '1.0.0' });
    await client.connect(new StreamableHTTPClientTransport(new URL(`${ts.url('gateway')}/mcp`)));
    t.teardown(() => client.close());
    const r = await client.callTool({ name: 'echo', arguments: { who: 'test mode' } });
    t.same(r.structuredContent, { who: 'test mode' });
    const events = await eventsOf(ts, 'conformance');
    t.same(
      events.map((e) => e.type),
      ['ToolRequested', 'ToolExecuting', 'ToolCompleted'],
      'in the test principal’s own stream',
    );
    t.equal(
      (await post(ts, '{}', { authorization: 'Bearer not-a-token' })).status,
      401,
      'a bad token is still refused',
    );
    t.match(ts.logText('gateway'), /TEST MODE/, 'the gateway says it runs in test mode');
  },
);

const TaskResult = z.looseObject({
  task: z.looseObject({ taskId: z.string(), status: z.string(), pollInterval: z.number().optional() }),
});
const TaskState = z.looseObject({
  taskId: z.string(),
  status: z.string(),
  statusMessage: z.string().optional(),
});
const ToolResult = z.looseObject({
  structuredContent: z.unknown().optional(),
  _meta: z.record(z.string(), z.unknown()),
});

t.test(
  'tasks (2025-11-25): a long call as a task, polled to completion across a gateway restart',
  async (t) => {
    const ts = await startTestStack(t, {
      services: ['dispatcher', 'gateway'],
      // The `progress` test tool (timeout 10 s) is long-running here; `echo` (5 s) is not.
      env: { GATEWAY_TASK_MIN_TIMEOUT_MS: '10000' },
    });
    const client = await connect(ts, await ts.token('tess'));
    t.teardown(() => client.close());
    const { tools } = await client.listTools();
    t.match(
      tools.find((x) => x.name === 'progress'),
      { execution: { taskSupport: 'optional' } },
    );
    t.notOk(tools.find((x) => x.name === 'echo')?.execution, 'a short tool is not offered as a task');

    const asTask = (name: string, args: Record<string, unknown>, key?: string) =>
      client.request(
        {
          method: 'tools/call',
          params: { name, arguments: args, task: { ttl: 60_000 }, ...(key ? { _meta: { [KEY]: key } } : {}) },
        },
        TaskResult,
      );
    const refused = await asTask('echo', {}).then(
      () => null,
      (e: unknown) => e,
    );
    t.equal((refused as ProtocolError).code, -32601, 'a tool that does not run as a task');

    const created = await asTask('progress', { steps: 30, delayMs: 100 }, 'long-1');
    const { taskId } = created.task;
    t.equal(created.task.status, 'working');
    const requested = (await eventsOf(ts, 'tess')).find((e) => e.type === 'ToolRequested');
    t.equal(
      requested?.metadata.executionId,
      taskId,
      'the task id is the execution id, recorded before the answer',
    );
    t.equal(created.task.createdAt, requested?.metadata.occurredAt, 'created when its first event was');

    // The gateway dies; the execution goes on in the dispatcher; a new gateway serves the same task.
    await ts.stack.kill('gateway');
    await ts.stack.start('gateway');
    const get = (id: string, c: Client = client) =>
      c.request({ method: 'tasks/get', params: { taskId: id } }, TaskState);
    const done = await waitFor('the task to complete', async () => {
      const state = await get(taskId);
      return state.status === 'working' ? undefined : state;
    });
    t.equal(done.status, 'completed');
    t.equal(done.createdAt, created.task.createdAt, 'tasks/get gives the same creation time');
    const result = await client.request({ method: 'tasks/result', params: { taskId } }, ToolResult);
    t.same(result.structuredContent, { steps: 30 });
    t.match(result._meta, { 'io.modelcontextprotocol/related-task': { taskId } });
    const again = await asTask('progress', { steps: 30, delayMs: 100 }, 'long-1');
    t.match(again.task, { taskId, status: 'completed' }, 'the same key: the same task');

    const other = await connect(ts, await ts.token('mallory'));
    t.teardown(() => other.close());
    const hidden = await get(taskId, other).then(
      () => null,
      (e: unknown) => e,
    );
    t.equal((hidden as ProtocolError).code, -32602, 'another user’s task is unknown');

    const second = await asTask('progress', { steps: 50, delayMs: 100 });
    const cancelled = await client.request(
      { method: 'tasks/cancel', params: { taskId: second.task.taskId } },
      TaskState,
    );
    t.equal(cancelled.status, 'cancelled');
    const failed = await waitFor('the execution to end', () => terminalOf(ts, 'tess', second.task.taskId));
    t.match(failed, {
      data: { error: { code: 'CANCELLED', details: { reason: 'the MCP client: tasks/cancel' } } },
    });
    t.equal((await get(second.task.taskId)).status, 'cancelled');

    const events = await eventsOf(ts, 'tess');
    t.equal(
      new Set(events.map((e) => e.metadata.executionId)).size,
      2,
      'two executions: the retry ran nothing',
    );
    t.ok((await verifyHistory(ts.store, 'tess')).ok, 'the auditor’s verification passes');
  },
);

t.test(
  'faults: a dispatcher killed mid-call, a gateway killed mid-call; each execution ends once',
  async (t) => {
    // A killed dispatcher's request is redelivered after the ack wait: short here.
    const ts = await startTestStack(t, { services: ['dispatcher', 'gateway'], env: { ACK_WAIT_MS: '2000' } });
    const client = await connect(ts, await ts.token('faye'));
    t.teardown(() => client.close());

    const survived = client.callTool({
      name: 'sleep_idempotent',
      arguments: { ms: 1_500 },
      _meta: { [KEY]: 'd-dies' },
    });
    await waitFor('the first attempt to start', () =>
      startedExecution(ts, 'faye', 'sleep_idempotent', { ms: 1_500 }),
    );
    await ts.stack.kill('dispatcher');
    await ts.stack.start('dispatcher');
    const r = await survived;
    t.notOk(r.isError, 'the client still gets its one result');
    t.same(r.structuredContent, { slept: 1_500 });

    const lost = client.callTool({ name: 'sleep', arguments: { ms: 1_500 }, _meta: { [KEY]: 'g-dies' } });
    lost.catch(() => undefined);
    const id = await waitFor('the call to start', () => startedExecution(ts, 'faye', 'sleep', { ms: 1_500 }));
    await ts.stack.kill('gateway');
    await t.rejects(lost, 'the client loses its connection');
    const ended = await waitFor('the execution to end', async () =>
      (await eventsOf(ts, 'faye')).find(
        (e) => (e.type === 'ToolCompleted' || e.type === 'ToolFailed') && e.metadata.executionId === id,
      ),
    );
    t.equal(ended.type, 'ToolCompleted', 'the execution went on without the gateway');
    await ts.stack.start('gateway');
    const retried = await client.callTool({
      name: 'sleep',
      arguments: { ms: 1_500 },
      _meta: { [KEY]: 'g-dies' },
    });
    t.equal(executionOf(retried), id, 'a retry with the same key gets that execution’s answer');

    const events = await eventsOf(ts, 'faye');
    const terminals = events.filter((e) => e.type === 'ToolCompleted' || e.type === 'ToolFailed');
    t.equal(new Set(events.map((e) => e.metadata.executionId)).size, 2, 'two executions');
    t.equal(terminals.length, 2, 'each ended exactly once');
    t.ok((await verifyHistory(ts.store, 'faye')).ok, 'the auditor’s verification passes');
  },
);

t.test(
  'the gateway stops at once with calls open: those with a key run on, one without is cancelled',
  async (t) => {
    const ts = await startTestStack(t, { services: ['dispatcher', 'gateway'] });
    const token = await ts.token('gus');
    // A 2025-11-25 call (the stateless leg, which the SDK's handler does not end when it closes).
    const open = post(
      ts,
      JSON.stringify({
        jsonrpc: '2.0',
        id: 1,
        method: 'tools/call',
        params: { name: 'wait_for_cancel', arguments: { seconds: 15 }, _meta: { [KEY]: 'gus-1' } },
      }),
      { authorization: `Bearer ${token}` },
    ).then((res) => res.text());
    open.catch(() => undefined);
    // And a 2026-07-28 call, whose exchange the SDK's handler aborts when it closes.
    const modern = await connect(ts, token, true);
    const modernCall = modern.callTool({
      name: 'wait_for_cancel',
      arguments: { seconds: 16 },
      _meta: { [KEY]: 'gus-2' },
    });
    modernCall.catch(() => undefined);
    // And one without a key: its client could only run it again, so the stop cancels it.
    const unkeyed = modern.callTool({ name: 'wait_for_cancel', arguments: { seconds: 17 } });
    unkeyed.catch(() => undefined);
    const unkeyedId = await waitFor('the unkeyed wait to start', () =>
      startedExecution(ts, 'gus', 'wait_for_cancel', { seconds: 17 }),
    );
    const executionIds = [
      await waitFor('the first wait to start', () =>
        startedExecution(ts, 'gus', 'wait_for_cancel', { seconds: 15 }),
      ),
      await waitFor('the second wait to start', () =>
        startedExecution(ts, 'gus', 'wait_for_cancel', { seconds: 16 }),
      ),
    ];
    const gateway = ts.stack.services.gateway.process()!;
    await ts.stack.kill('gateway', 'SIGTERM');
    t.strictSame(
      [gateway.exitCode, gateway.signalCode],
      [0, null],
      'it stopped by itself on SIGTERM (not killed after the grace period)',
    );
    // Their streams were cut (the clients see the connection end): nothing is left to wait for.
    await Promise.allSettled([open, modernCall, unkeyed]);
    t.match(
      await waitFor('the unkeyed wait to end', () => terminalOf(ts, 'gus', unkeyedId)),
      {
        data: {
          error: { code: 'CANCELLED', details: { reason: /^the MCP gateway stopped during the call/ } },
        },
      },
      'the call without a key was cancelled, saying why',
    );
    await modern.close().catch(() => undefined);
    for (const executionId of executionIds) {
      const ended = await waitFor('the wait to end', async () =>
        (await eventsOf(ts, 'gus')).find(
          (e) =>
            e.metadata.executionId === executionId && (e.type === 'ToolCompleted' || e.type === 'ToolFailed'),
        ),
      );
      t.equal(ended.type, 'ToolCompleted', `the stop did not cancel ${executionId}`);
    }
    t.match(ts.logText('gateway'), /the gateway stops: the call runs on/);
    t.notMatch(
      ts.logText('gateway'),
      /no answer from the dispatchers/,
      'no warning for what its own stop ended',
    );
  },
);
