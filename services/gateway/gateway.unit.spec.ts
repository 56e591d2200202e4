import t from 'tap';
import { ConfigError, loadConfig } from '../../lib/config.ts';
import type { TerminalAnswer, ToolManifest } from '../../contracts/index.ts';
import { fingerprintOf, requestIdOf } from './calls.ts';
import { GatewayEnv, publicUrlOf } from './config.ts';
import { resultOf, toolOf } from './mapping.ts';
import { taskOf } from './tasks.ts';

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
  t.match(problemsOf({ NODE_ENV: 'test', JWKS_URL: 'https://id.example/jwks', GATEWAY_TEST_PRINCIPAL: 'c' }), [
    /needs JWT_SECRET/,
  ]);
  t.same(problemsOf({ NODE_ENV: 'test', JWT_SECRET: SECRET, GATEWAY_TEST_PRINCIPAL: 'conformance' }), []);
  t.equal(loadConfig(GatewayEnv, { JWT_SECRET: SECRET }).GATEWAY_TEST_PRINCIPAL, undefined, 'off by default');
});

t.test('the public URL of /mcp', async (t) => {
  t.equal(publicUrlOf(loadConfig(GatewayEnv, { JWT_SECRET: SECRET })).href, 'http://127.0.0.1:8084/mcp');
  const behind = loadConfig(GatewayEnv, { JWT_SECRET: SECRET, GATEWAY_PUBLIC_URL: 'https://tools.example/mcp' });
  t.equal(publicUrlOf(behind).href, 'https://tools.example/mcp');
});

t.test('idempotency keys: per user, deterministic; fingerprints see other arguments', async (t) => {
  t.equal(requestIdOf('ann', 'k'), requestIdOf('ann', 'k'));
  t.not(requestIdOf('ann', 'k'), requestIdOf('bob', 'k'));
  t.match(requestIdOf('ann', 'any key at all: ✓'), /^mcp-[0-9a-f]{40}$/, 'a valid request id whatever the key');
  t.equal(fingerprintOf('echo', { a: 1, b: 2 }), fingerprintOf('echo', { b: 2, a: 1 }), 'key order does not count');
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
  const done: TerminalAnswer = { status: 'completed', ...ids, result: { mean: 2 }, durationMs: 3, cached: false };
  t.match(resultOf(done, manifest()), {
    content: [{ type: 'text', text: '{"mean":2}' }],
    structuredContent: { mean: 2 },
    _meta: { 'io.toolbus/execution': { executionId: 'e', requestId: 'r', cached: false } },
  });
  t.notOk('structuredContent' in resultOf({ ...done, result: 2 }, manifest({ outputSchema: { type: 'number' } })));
  const failed: TerminalAnswer = { status: 'failed', ...ids, error: { code: 'TIMEOUT', message: 'too slow' } };
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
  t.match(taskOf({ ...e, answer: null }), { taskId: 'e', status: 'working', ttl: null, createdAt: e.createdAt });
  t.match(taskOf({ ...e, answer: { status: 'completed', ...ids, result: {}, durationMs: 1, cached: false } }), {
    status: 'completed',
    lastUpdatedAt: e.lastUpdatedAt,
  });
  const failed = (code: 'CANCELLED' | 'TOOL_ERROR') =>
    taskOf({ ...e, answer: { status: 'failed', ...ids, error: { code, message: 'm' } } });
  t.match(failed('CANCELLED'), { status: 'cancelled', statusMessage: 'CANCELLED: m' });
  t.match(failed('TOOL_ERROR'), { status: 'failed', statusMessage: 'TOOL_ERROR: m' });
});
