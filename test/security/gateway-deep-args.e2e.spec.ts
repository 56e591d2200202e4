import t from 'tap';
import { LIMITS, userStream } from '../../contracts/index.ts';
import { startTestStack, type TestStack } from '../support/stack.ts';

/**
 * Arguments nested far deeper than Toolbus accepts (LIMITS.maxDepth), within the gateway's body
 * bound: the gateway must refuse them with a clear invalid-params error naming the rule, before
 * hashing or forwarding them (both recurse), and go on serving.
 */

async function rpc(ts: TestStack, token: string, id: number, params: string): Promise<unknown> {
  const res = await fetch(`${ts.url('gateway')}/mcp`, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${token}`,
      'content-type': 'application/json',
      accept: 'application/json, text/event-stream',
      'mcp-protocol-version': '2025-11-25',
    },
    body: `{"jsonrpc":"2.0","id":${id},"method":"tools/call","params":${params}}`,
  });
  const text = await res.text();
  if (!res.headers.get('content-type')?.startsWith('text/event-stream')) return JSON.parse(text);
  const data = text.split('\n').find((l) => l.startsWith('data: '));
  return data ? JSON.parse(data.slice(6)) : null;
}

const nested = (depth: number) => '{"a":'.repeat(depth) + '1' + '}'.repeat(depth);

t.test('deeply nested arguments are refused clearly by the gateway', async (t) => {
  const ts = await startTestStack(t, { services: ['dispatcher', 'gateway'] });
  const token = await ts.token('ann');
  const depth = 100_000; // 600 KB: under GATEWAY_MAX_BODY_BYTES
  for (const [id, meta] of [
    [1, ''],
    [2, ',"_meta":{"io.toolbus/idempotencyKey":"deep-1"}'],
  ] as const) {
    const answer = await rpc(ts, token, id, `{"name":"echo","arguments":{"deep":${nested(depth)}}${meta}}`);
    t.match(
      answer,
      { error: { code: -32602, message: new RegExp(`nesting deeper than ${LIMITS.maxDepth}`) } },
      `refused as invalid params, naming the rule (${meta ? 'with' : 'without'} a key): ${JSON.stringify(answer).slice(0, 200)}`,
    );
  }
  let recorded = 0;
  for await (const _ of ts.store.readStream(userStream('ann'))) recorded++;
  t.equal(recorded, 0, 'nothing recorded');
  t.match(
    await rpc(ts, token, 3, '{"name":"echo","arguments":{"ok":{"a":{"b":1}}}}'),
    { result: { structuredContent: { ok: { a: { b: 1 } } } } },
    'the gateway goes on serving',
  );
});

t.test(
  'a __proto__ key in the arguments, which the SDK would drop, is refused as the dispatcher refuses it',
  async (t) => {
    const ts = await startTestStack(t, { services: ['dispatcher', 'gateway'] });
    const token = await ts.token('bea');
    for (const [id, args] of [
      [1, '{"text":"hi","__proto__":{"polluted":true}}'],
      [2, '{"\\u005f_proto__":{"x":1}}'],
      [3, '{"nested":{"__proto__":{"x":1}}}'],
    ] as const) {
      const answer = await rpc(ts, token, id, `{"name":"echo","arguments":${args}}`);
      t.match(
        answer,
        { id, error: { code: -32602, message: /key "__proto__" is not allowed/ } },
        `${args}: invalid params`,
      );
    }
    let recorded = 0;
    for await (const _ of ts.store.readStream(userStream('bea'))) recorded++;
    t.equal(recorded, 0, 'nothing recorded');
    t.equal(({} as Record<string, unknown>)['polluted'], undefined, 'no prototype was touched');
  },
);
