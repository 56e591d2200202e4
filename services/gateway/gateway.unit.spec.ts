import t from 'tap';
import { ConfigError, loadConfig } from '../../lib/config.ts';
import type { TerminalAnswer, ToolManifest } from '../../contracts/index.ts';
import { callWaitMs, fingerprintOf, mcpCancelReason, requestIdOf } from './calls.ts';
import { allowedHostsOf, GatewayEnv, publicUrlOf } from './config.ts';
import { resultOf, toolOf } from './mapping.ts';
import { taskOf } from './tasks.ts';
import { ToolCatalog } from './catalog.ts';
import { InFlight } from './server.ts';
import { bearerIdentify } from './principal.ts';

const SECRET = 's'.repeat(40);

const problemsOf = (env: Record<string, string>): string[] => {
  try {
    loadConfig(GatewayEnv, env);
    return [];
  } catch (e) {
    if (e instanceof ConfigError) return e.problems;
    throw e;
  }
};

t.test('the test mode cannot be switched on by accident', async (t) => {
  t.match(problemsOf({ JWT_SECRET: SECRET, GATEWAY_TEST_PRINCIPAL: 'conformance' }), [
    /GATEWAY_TEST_PRINCIPAL: .*refused unless NODE_ENV=test \(it is development\)/,
  ]);
  t.match(problemsOf({ NODE_ENV: 'production', JWT_SECRET: SECRET, GATEWAY_TEST_PRINCIPAL: 'conformance' }), [
    /refused unless NODE_ENV=test \(it is production\)/,
  ]);
  t.match(
    problemsOf({
      NODE_ENV: 'test',
      JWKS_URL: 'https://id.example/jwks',
      JWT_AUDIENCE: 'https://tools.example/mcp',
      GATEWAY_TEST_PRINCIPAL: 'c',
    }),
    [/needs JWT_SECRET/],
  );
  t.same(problemsOf({ NODE_ENV: 'test', JWT_SECRET: SECRET, GATEWAY_TEST_PRINCIPAL: 'conformance' }), []);
  t.equal(loadConfig(GatewayEnv, { JWT_SECRET: SECRET }).GATEWAY_TEST_PRINCIPAL, undefined, 'off by default');
});

t.test("with an identity provider's keys, only tokens issued for the gateway", async (t) => {
  t.match(problemsOf({ JWKS_URL: 'https://id.example/jwks' }), [/JWT_AUDIENCE: must be set with JWKS_URL/]);
  t.same(problemsOf({ JWKS_URL: 'https://id.example/jwks', JWT_AUDIENCE: 'https://tools.example/mcp' }), []);
  t.same(problemsOf({ JWT_SECRET: SECRET }), [], 'the development secret needs no audience');
});

t.test('the public URL of /mcp', async (t) => {
  t.equal(publicUrlOf(loadConfig(GatewayEnv, { JWT_SECRET: SECRET })).href, 'http://127.0.0.1:8084/mcp');
  const behind = loadConfig(GatewayEnv, {
    JWT_SECRET: SECRET,
    GATEWAY_PUBLIC_URL: 'https://tools.example/mcp',
  });
  t.equal(publicUrlOf(behind).href, 'https://tools.example/mcp');
});

t.test('idempotency keys: per user, deterministic; fingerprints see other arguments', async (t) => {
  t.equal(requestIdOf('ann', 'k'), requestIdOf('ann', 'k'));
  t.not(requestIdOf('ann', 'k'), requestIdOf('bob', 'k'));
  t.match(
    requestIdOf('ann', 'any key at all: ✓'),
    /^mcp-[0-9a-f]{40}$/,
    'a valid request id whatever the key',
  );
  t.equal(
    fingerprintOf('echo', { a: 1, b: 2 }),
    fingerprintOf('echo', { b: 2, a: 1 }),
    'key order does not count',
  );
  t.not(fingerprintOf('echo', { a: 1 }), fingerprintOf('echo', { a: 2 }));
  t.not(fingerprintOf('echo', { a: 1 }), fingerprintOf('noop', { a: 1 }));
});

const manifest = (over: Partial<ToolManifest> = {}): ToolManifest => ({
  name: 'stats',
  version: '1.2.0',
  description: 'Statistics.',
  inputSchema: { type: 'object', properties: { xs: { type: 'array' } } },
  outputSchema: { type: 'object', properties: { mean: { type: 'number' } } },
  roles: [],
  timeoutMs: 1_000,
  idempotent: true,
  cacheable: false,
  sensitive: { input: [], output: [] },
  ...over,
});

t.test('a manifest as an MCP tool', async (t) => {
  t.match(toolOf(manifest({ annotations: { title: 'Stats', readOnlyHint: true } })), {
    name: 'stats',
    title: 'Stats',
    description: 'Statistics.',
    inputSchema: { type: 'object' },
    outputSchema: { type: 'object' },
    annotations: { title: 'Stats', readOnlyHint: true },
  });
  t.equal(toolOf(manifest({ inputSchema: { type: 'string' } })), null, 'MCP arguments are an object');
  t.notOk('outputSchema' in toolOf(manifest({ outputSchema: { type: 'number' } }))!, 'no structured output');
  t.match(toolOf(manifest(), { asTask: true }), { execution: { taskSupport: 'optional' } });
  t.notOk('execution' in toolOf(manifest())!, 'not a task unless long-running');
});

t.test('answers as tool results', async (t) => {
  const ids = { requestId: 'r', executionId: 'e', correlationId: 'c' };
  const done: TerminalAnswer = {
    status: 'completed',
    ...ids,
    result: { mean: 2 },
    durationMs: 3,
    cached: false,
  };
  t.match(resultOf(done, manifest()), {
    content: [{ type: 'text', text: '{"mean":2}' }],
    structuredContent: { mean: 2 },
    _meta: { 'io.toolbus/execution': { executionId: 'e', requestId: 'r', cached: false } },
  });
  t.notOk(
    'structuredContent' in resultOf({ ...done, result: 2 }, manifest({ outputSchema: { type: 'number' } })),
  );
  // A result that carries MCP content blocks (an image tool, an MCP server behind the provider)
  // is shown as those blocks; one whose `content` is not blocks is JSON text like any other.
  const image = { type: 'image', data: 'aGk=', mimeType: 'image/png' };
  t.strictSame(resultOf({ ...done, result: { content: [image], note: 'x' } }, manifest()).content, [image]);
  t.strictSame(resultOf({ ...done, result: { content: [{ type: 'video' }] } }, manifest()).content, [
    { type: 'text', text: '{"content":[{"type":"video"}]}' },
  ]);
  const failed: TerminalAnswer = {
    status: 'failed',
    ...ids,
    error: { code: 'TIMEOUT', message: 'too slow' },
  };
  t.match(resultOf(failed, manifest()), {
    isError: true,
    content: [{ type: 'text', text: 'TIMEOUT: too slow' }],
    _meta: { 'io.toolbus/error': { code: 'TIMEOUT', message: 'too slow' } },
  });
});

t.test('an execution as a task', async (t) => {
  const e = {
    executionId: 'e',
    requestId: 'r',
    correlationId: 'c',
    tool: 'stats',
    createdAt: '2026-01-01T00:00:00.000Z',
    lastUpdatedAt: '2026-01-01T00:00:05.000Z',
  };
  const ids = { requestId: 'r', executionId: 'e', correlationId: 'c' };
  t.match(taskOf({ ...e, answer: null }), {
    taskId: 'e',
    status: 'working',
    ttl: null,
    createdAt: e.createdAt,
  });
  t.match(
    taskOf({
      ...e,
      answer: null,
      awaitingApproval: { approverRoles: ['approver', 'admin'], deadline: '2026-01-01T00:15:00.000Z' },
    }),
    {
      status: 'input_required',
      statusMessage: 'awaits approval by approver or admin until 2026-01-01T00:15:00.000Z',
    },
    'waiting for an approver: input_required',
  );
  t.match(
    taskOf({ ...e, answer: { status: 'completed', ...ids, result: {}, durationMs: 1, cached: false } }),
    {
      status: 'completed',
      lastUpdatedAt: e.lastUpdatedAt,
    },
  );
  const failed = (code: 'CANCELLED' | 'TOOL_ERROR') =>
    taskOf({ ...e, answer: { status: 'failed', ...ids, error: { code, message: 'm' } } });
  t.match(failed('CANCELLED'), { status: 'cancelled', statusMessage: 'CANCELLED: m' });
  t.match(failed('TOOL_ERROR'), { status: 'failed', statusMessage: 'TOOL_ERROR: m' });
});

t.test(
  'the catalog: newest version of each tool, filtered by role, kept for its TTL, read again on a miss',
  async (t) => {
    let now = 0;
    let reads = 0;
    let tools: unknown[] = [
      manifest({ name: 'bb', version: '1.0.0' }),
      manifest({ name: 'bb', version: '2.0.0' }),
      manifest({ name: 'aa', roles: ['admin'] }),
      { name: 'zz', version: 'not a manifest' },
    ];
    const invalid: string[] = [];
    const catalog = new ToolCatalog({
      dispatcherUrl: 'http://dispatcher.test',
      ttlMs: 1_000,
      now: () => now,
      onInvalid: (p) => invalid.push(p),
      fetch: async () => {
        reads++;
        return Response.json({ tools });
      },
    });
    const user = { userId: 'u', roles: ['user'] };
    t.same(
      (await catalog.listFor(user)).map((m) => `${m.name}@${m.version}`),
      ['bb@2.0.0'],
      'newest, allowed only',
    );
    t.match(invalid, [/^"zz": /], 'an invalid manifest is left out, and said');
    t.same(
      (await catalog.listFor({ userId: 'r', roles: ['admin'] })).map((m) => m.name),
      ['aa', 'bb'],
      'by name',
    );
    t.equal(reads, 1, 'read once within the TTL');
    tools = [...tools, manifest({ name: 'cc' })];
    t.equal((await catalog.find(user, 'cc'))?.name, 'cc', 'a miss reads again at once');
    t.equal(reads, 2);
    t.equal(await catalog.find(user, 'aa'), null, 'a tool the user may not call is not found');
    now += 1_001;
    await catalog.listFor(user);
    t.equal(reads, 3, 'read again after the TTL');
  },
);

t.test('notifications/cancelled reaches the call of the same user and id only', async (t) => {
  const inFlight = new InFlight();
  const mine = new AbortController();
  const untrack = inFlight.track('ann', 7, mine);
  inFlight.cancel('bob', 7, 'not yours');
  inFlight.cancel('ann', '7', 'a string id is another id');
  t.notOk(mine.signal.aborted);
  inFlight.cancel('ann', 7, 'stop');
  t.ok(mine.signal.aborted);
  untrack();
  const later = new AbortController();
  inFlight.track('ann', 8, later)();
  inFlight.cancel('ann', 8, undefined);
  t.notOk(later.signal.aborted, 'a finished call is no longer tracked');
});

t.test("two clients of one user with the same id: a cancel reaches the sender's call, or none", async (t) => {
  const inFlight = new InFlight();
  const a = new AbortController();
  const b = new AbortController();
  inFlight.track('ann', 1, a, 'token-a');
  const untrackB = inFlight.track('ann', 1, b, 'token-b');
  t.ok(inFlight.cancel('ann', 1, 'stop', 'token-a'));
  t.ok(a.signal.aborted, "the sender's call");
  t.notOk(b.signal.aborted, "not the other client's");
  untrackB();
  const c = new AbortController();
  const d = new AbortController();
  inFlight.track('ann', 2, c, 'shared');
  inFlight.track('ann', 2, d, 'shared');
  t.notOk(inFlight.cancel('ann', 2, 'stop', 'shared'), 'one token, two calls: ambiguous');
  t.notOk(inFlight.cancel('ann', 2, 'stop', 'renewed'), 'another token, two calls: ambiguous');
  t.notOk(c.signal.aborted || d.signal.aborted, 'neither is cancelled');
  const e = new AbortController();
  inFlight.track('ann', 3, e, 'before-renewal');
  t.ok(inFlight.cancel('ann', 3, 'stop', 'after-renewal'), "the user's only call with that id");
  t.ok(e.signal.aborted);
});

t.test(
  'the Host check: on for a loopback gateway, off behind another address unless configured',
  async (t) => {
    const localhost = ['localhost', '127.0.0.1'];
    t.same(allowedHostsOf(loadConfig(GatewayEnv, { JWT_SECRET: SECRET }), localhost), [
      ...localhost,
      '127.0.0.1',
    ]);
    t.equal(allowedHostsOf(loadConfig(GatewayEnv, { JWT_SECRET: SECRET, HOST: '0.0.0.0' }), localhost), null);
    const listed = loadConfig(GatewayEnv, {
      JWT_SECRET: SECRET,
      HOST: '0.0.0.0',
      GATEWAY_ALLOWED_HOSTS: 'tools.example',
    });
    t.same(allowedHostsOf(listed, localhost), ['tools.example']);
  },
);

t.test('bearer tokens: the scheme in any case, nothing else', async (t) => {
  const seen: string[] = [];
  const identify = bearerIdentify({
    verify: async (token) => {
      seen.push(token!);
      return { userId: 'ann', roles: [] };
    },
  });
  t.ok((await identify('Bearer abc')).ok);
  t.ok((await identify('bearer def')).ok);
  t.match(await identify('Basic xyz'), { ok: false, error: { reason: 'missing' } });
  t.match(await identify(undefined), { ok: false, error: { reason: 'missing' } });
  t.same(seen, ['abc', 'def'], 'only bearer tokens reach the verifier, without the scheme');
});

t.test('a cancel by the MCP client records its reason, or that it gave the call up', async (t) => {
  const aborted = (reason?: unknown) => {
    const c = new AbortController();
    c.abort(reason);
    return c.signal;
  };
  t.equal(
    mcpCancelReason(aborted('the user changed their mind')),
    'the MCP client: the user changed their mind',
  );
  t.equal(mcpCancelReason(aborted(new Error(' too slow '))), 'the MCP client: too slow');
  t.equal(mcpCancelReason(aborted()), 'the MCP client: it gave the call up', 'a bare abort (stream closed)');
  t.equal(mcpCancelReason(aborted('  ')), 'the MCP client: it gave the call up');
  t.equal(mcpCancelReason(aborted('x'.repeat(1000))).length, 500, 'cut to what a cancel may carry');
});

t.test("a call's wait outlasts its approval's deadline and its run", async (t) => {
  const gateway = 630_000; // GATEWAY_CALL_TIMEOUT_MS's default
  t.equal(
    callWaitMs(gateway, { timeoutMs: 10_000 }),
    gateway,
    'a tool without approval: the gateway setting',
  );
  // An outside review: a call waiting 15 minutes for an approver was failed TIMEOUT at 10.5 minutes,
  // then ran once approved, its answer lost.
  const approval = { approverRoles: ['approver'], timeoutMs: 15 * 60_000 } as ToolManifest['approval'];
  t.equal(callWaitMs(gateway, { timeoutMs: 10_000, approval }), 15 * 60_000 + 10_000 + 30_000);
  t.equal(
    callWaitMs(24 * 3_600_000, { timeoutMs: 10_000, approval }),
    24 * 3_600_000,
    'a longer setting stands',
  );
});
