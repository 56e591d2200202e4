import t from 'tap';
import { LIMITS } from './json.ts';
import { AgentAnswer, isTerminalAnswer, parseToolRequest } from './request.ts';

const enc = (v: unknown): Uint8Array =>
  new TextEncoder().encode(typeof v === 'string' ? v : JSON.stringify(v));
const base = { requestId: 'req-1', tool: 'echo', args: { text: 'hi' } };

/** `depth` nested objects: nest(1) = {}, nest(2) = {"a":{}}, ... */
const nest = (depth: number): string => '{"a":'.repeat(depth - 1) + '{}' + '}'.repeat(depth - 1);

function refused(bytes: Uint8Array) {
  const r = parseToolRequest(bytes);
  if (r.ok) throw new Error(`expected a refusal, got ${JSON.stringify(r.request)}`);
  return r;
}

t.test('a valid request parses', async (t) => {
  t.strictSame(parseToolRequest(enc(base)), { ok: true, request: base });
  const full = {
    requestId: 'agent-7:run.42',
    tool: 'web_search',
    version: '2.10.0',
    args: { q: 'zod', opts: { limit: 5, tags: ['a', null, true, 1.5] } },
    userId: 'alice',
    correlationId: 'corr-1',
    replyTo: '_INBOX.abc123.x',
    progress: true,
  };
  t.strictSame(parseToolRequest(enc(full)), { ok: true, request: full });
  t.strictSame(parseToolRequest(enc({ ...base, args: {} })), { ok: true, request: { ...base, args: {} } });
  const withBom = new Uint8Array([0xef, 0xbb, 0xbf, ...enc(base)]);
  t.ok(parseToolRequest(withBom).ok, 'a UTF-8 byte order mark is tolerated');
  t.ok(parseToolRequest(enc({ ...base, args: { s: 'é😀 ユーザー' } })).ok, 'non-ASCII text in args');
});

t.test('size limit: MALFORMED above it, accepted at it', async (t) => {
  const overhead = enc({ ...base, args: { pad: '' } }).byteLength;
  const atLimit = enc({ ...base, args: { pad: 'x'.repeat(LIMITS.maxRequestBytes - overhead) } });
  t.equal(atLimit.byteLength, LIMITS.maxRequestBytes);
  t.ok(parseToolRequest(atLimit).ok, 'exactly the limit is accepted');

  const over = enc({ ...base, args: { pad: 'x'.repeat(LIMITS.maxRequestBytes - overhead + 1) } });
  const r = refused(over);
  t.equal(r.problem.code, 'MALFORMED');
  t.match(r.problem.message, /262145 bytes; limit 262144/);
  t.equal(r.partial, undefined, 'nothing of an oversized body is read');
  t.equal(LIMITS.maxRequestBytes, 256 * 1024);
});

t.test('bytes that are not UTF-8 are MALFORMED', async (t) => {
  const [head, tail] = [enc('{"requestId":"r'), enc('","tool":"echo","args":{}}')];
  for (const [what, bad] of [
    ['a 0xff byte', [0xff]],
    ['an overlong slash', [0xc0, 0xaf]],
    ['a truncated sequence', [0xe2, 0x82]],
    ['an encoded surrogate', [0xed, 0xa0, 0x80]],
  ] as const) {
    const r = refused(new Uint8Array([...head, ...bad, ...tail]));
    t.equal(r.problem.code, 'MALFORMED', what);
    t.match(r.problem.message, /not UTF-8 JSON/);
  }
});

t.test('text that is not JSON is MALFORMED', async (t) => {
  for (const text of ['', 'hello', '{"requestId":', "{'requestId':'r1'}", '{"a":1}}', 'NaN', '{"a":1,}']) {
    const r = refused(enc(text));
    t.equal(r.problem.code, 'MALFORMED', JSON.stringify(text));
  }
});

t.test('JSON that is not a request object is VALIDATION', async (t) => {
  for (const text of ['null', '[]', '42', '"req"', 'true', '[{"requestId":"r1","tool":"echo","args":{}}]']) {
    const r = refused(enc(text));
    t.equal(r.problem.code, 'VALIDATION', text);
    t.strictSame(r.partial, {}, `${text}: nothing to record`);
  }
});

t.test('nesting: 32 levels accepted, deeper is VALIDATION', async (t) => {
  // the request object is level 1, so args may nest 31 levels
  const ok = `{"requestId":"r1","tool":"echo","args":${nest(31)}}`;
  t.ok(parseToolRequest(enc(ok)).ok, '32 levels in all');
  const deep = `{"requestId":"r1","tool":"echo","args":${nest(32)}}`;
  const r = refused(enc(deep));
  t.equal(r.problem.code, 'VALIDATION');
  t.match(r.problem.message, /nesting deeper than 32/);
  t.strictSame(r.partial, { requestId: 'r1', tool: 'echo' });

  const arrays = `{"requestId":"r1","tool":"echo","args":{"a":${'['.repeat(40)}${']'.repeat(40)}}}`;
  t.match(
    refused(enc(arrays)).problem,
    { code: 'VALIDATION', message: /nesting deeper than 32/ },
    'arrays count too',
  );
});

t.test('very deep input is refused without a stack overflow', async (t) => {
  const n = 100_000;
  const text = `{"requestId":"r1","tool":"echo","args":{"a":${'['.repeat(n)}${']'.repeat(n)}}}`;
  t.ok(text.length < LIMITS.maxRequestBytes);
  t.match(refused(enc(text)).problem, { code: 'VALIDATION', message: /nesting deeper than 32/ });
});

t.test('prototype keys are VALIDATION, and nothing is polluted', async (t) => {
  const protoKeys = () => Object.getOwnPropertyNames(Object.prototype).sort();
  const before = protoKeys();
  const hostile = [
    [
      '__proto__ in args',
      '{"requestId":"r1","tool":"echo","args":{"__proto__":{"polluted":true}}}',
      '__proto__',
    ],
    [
      '__proto__ at the top',
      '{"__proto__":{"polluted":true},"requestId":"r1","tool":"echo","args":{}}',
      '__proto__',
    ],
    [
      'constructor in args',
      '{"requestId":"r1","tool":"echo","args":{"constructor":{"prototype":{"polluted":true}}}}',
      'constructor',
    ],
    [
      'prototype deep in an array',
      '{"requestId":"r1","tool":"echo","args":{"list":[1,{"x":{"prototype":{"polluted":1}}}]}}',
      'prototype',
    ],
    [
      '__proto__ inside an array item',
      '{"requestId":"r1","tool":"echo","args":{"l":[{"__proto__":{"polluted":1}}]}}',
      '__proto__',
    ],
  ] as const;
  for (const [what, text, key] of hostile) {
    const r = refused(enc(text));
    t.equal(r.problem.code, 'VALIDATION', what);
    t.match(r.problem.message, `key "${key}" is not allowed`, what);
    t.strictSame(r.partial, { requestId: 'r1', tool: 'echo' }, `${what}: partial still names the request`);
  }
  t.equal(({} as Record<string, unknown>)['polluted'], undefined, 'a new object has no polluted property');
  t.strictSame(protoKeys(), before, 'Object.prototype has the same own properties');
  t.equal(Object.getPrototypeOf({}), Object.prototype);
});

t.test('unknown top-level keys are VALIDATION (strict)', async (t) => {
  const r = refused(enc({ ...base, priority: 'high' }));
  t.equal(r.problem.code, 'VALIDATION');
  t.match(r.problem.message, /priority/);
  t.strictSame(r.partial, { requestId: 'req-1', tool: 'echo' });
});

t.test('wrong types and values are VALIDATION', async (t) => {
  const cases: Array<[string, Record<string, unknown>]> = [
    ['requestId a number', { ...base, requestId: 5 }],
    ['requestId empty', { ...base, requestId: '' }],
    ['requestId with a space', { ...base, requestId: 'a b' }],
    ['requestId too long', { ...base, requestId: 'r'.repeat(129) }],
    ['no requestId', { tool: 'echo', args: {} }],
    ['tool with capitals', { ...base, tool: 'Echo' }],
    ['tool with two dots', { ...base, tool: 'echo.x.y' }],
    ['tool with a wildcard name part', { ...base, tool: 'echo.*' }],
    ['no tool', { requestId: 'r1', args: {} }],
    ['no args', { requestId: 'r1', tool: 'echo' }],
    ['args an array', { ...base, args: [1, 2] }],
    ['args a string', { ...base, args: '{}' }],
    ['args null', { ...base, args: null }],
    ['version not semver', { ...base, version: '1.0' }],
    ['version with a prefix', { ...base, version: 'v1.0.0' }],
    ['version a number', { ...base, version: 1 }],
    ['userId with a dot', { ...base, userId: 'a.b' }],
    ['userId a wildcard', { ...base, userId: '*' }],
    ['correlationId empty', { ...base, correlationId: '' }],
    ['correlationId too long', { ...base, correlationId: 'c'.repeat(129) }],
    ['replyTo with a wildcard', { ...base, replyTo: '_INBOX.*' }],
    ['replyTo with a full wildcard', { ...base, replyTo: 'a.>' }],
    ['replyTo with a space', { ...base, replyTo: 'a b' }],
    ['replyTo with an empty token', { ...base, replyTo: 'a..b' }],
    ['replyTo too long', { ...base, replyTo: 'a'.repeat(257) }],
    ['progress a string', { ...base, progress: 'yes' }],
  ];
  for (const [what, body] of cases) {
    const r = refused(enc(body));
    t.equal(r.problem.code, 'VALIDATION', what);
    t.ok(r.problem.message.length > 0, `${what}: says why`);
  }
  // JSON's 1e400 parses to Infinity, which no event could store
  const r = refused(enc('{"requestId":"r1","tool":"echo","args":{"x":1e400}}'));
  t.equal(r.problem.code, 'VALIDATION', 'a number that overflows to Infinity');
});

t.test('partial keeps only the well-formed identifying fields of a refused request', async (t) => {
  t.strictSame(
    refused(
      enc({ requestId: 'req-9', tool: 'echo', args: 'nope', replyTo: '_INBOX.a', correlationId: 'c-1' }),
    ).partial,
    { requestId: 'req-9', tool: 'echo', replyTo: '_INBOX.a', correlationId: 'c-1' },
  );
  t.strictSame(refused(enc({ requestId: 'has space', tool: 'Bad', args: 1, replyTo: 'a.*' })).partial, {});
  t.strictSame(refused(enc({ requestId: 'req-9', tool: 5, args: 1 })).partial, { requestId: 'req-9' });
  t.strictSame(refused(enc({ requestId: ['req-9'], tool: 'echo', args: 1 })).partial, { tool: 'echo' });
  const longCorr = refused(enc({ ...base, args: 1, correlationId: 'c'.repeat(129) })).partial;
  t.equal(longCorr?.correlationId, undefined, 'an over-long correlation id is not kept');
});

t.test('parsing does not depend on or change the input buffer', async (t) => {
  const bytes = enc(base);
  const copy = new Uint8Array(bytes);
  const a = parseToolRequest(bytes);
  t.strictSame(bytes, copy);
  t.strictSame(parseToolRequest(bytes), a);
  const view = new Uint8Array([0, 0, ...bytes, 0]).subarray(2, 2 + bytes.byteLength);
  t.strictSame(parseToolRequest(view), a, 'a view into a larger buffer reads only its own bytes');
});

t.test('AgentAnswer', async (t) => {
  const ids = { requestId: 'r1', executionId: 'e1', correlationId: 'c1' };
  const completed = { status: 'completed', ...ids, result: { ok: 1 }, durationMs: 3, cached: false } as const;
  const failed = {
    status: 'failed',
    requestId: null,
    executionId: null,
    correlationId: null,
    error: { code: 'MALFORMED', message: 'not JSON' },
  } as const;
  t.ok(AgentAnswer.safeParse(completed).success);
  t.ok(AgentAnswer.safeParse(failed).success, 'a refusal without ids');
  t.ok(AgentAnswer.safeParse({ status: 'executing', ...ids }).success);
  t.ok(AgentAnswer.safeParse({ status: 'progress', ...ids, fraction: 0.5 }).success);
  t.notOk(AgentAnswer.safeParse({ status: 'progress', ...ids, fraction: 1.5 }).success);
  t.notOk(AgentAnswer.safeParse({ ...failed, error: { code: 'NOPE', message: 'x' } }).success);
  t.notOk(AgentAnswer.safeParse({ ...completed, extra: 1 }).success);
  t.notOk(AgentAnswer.safeParse({ status: 'cancelled', ...ids }).success);
  t.ok(isTerminalAnswer(AgentAnswer.parse(completed)));
  t.ok(isTerminalAnswer(AgentAnswer.parse(failed)));
  t.notOk(isTerminalAnswer(AgentAnswer.parse({ status: 'requested', ...ids })));
});
