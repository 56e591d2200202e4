import t from 'tap';
import { userStream } from '../../contracts/index.ts';
import { startTestStack } from '../support/stack.ts';

/**
 * The gateway refuses JSON-RPC batches (docs/mcp.md): one message per request, so each call is
 * bounded and accounted for on its own. The SDK decodes the body with a TextDecoder, which drops
 * a leading UTF-8 byte order mark, so a batch behind a BOM must be refused too.
 */
t.test('a JSON-RPC batch is refused however its body begins', async (t) => {
  const ts = await startTestStack(t, { services: ['dispatcher', 'gateway'] });
  const token = await ts.token('ann');
  const batch = JSON.stringify([
    { jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 'echo', arguments: { a: 1 } } },
    { jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 'echo', arguments: { b: 2 } } },
  ]);
  for (const [what, prefix] of [
    ['plain', ''],
    ['after whitespace', ' \n\t'],
    ['after a byte order mark', '\uFEFF'],
    ['after a byte order mark and whitespace', '\uFEFF \r\n'],
  ] as const) {
    const res = await fetch(`${ts.url('gateway')}/mcp`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${token}`,
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
        'mcp-protocol-version': '2025-11-25',
      },
      body: prefix + batch,
    });
    t.equal(res.status, 400, `${what}: 400`);
    t.match(await res.json(), { error: { code: -32600, message: /batches are not supported/ } }, what);
  }
  let recorded = 0;
  for await (const _ of ts.store.readStream(userStream('ann'))) recorded++;
  t.equal(recorded, 0, 'no call of any batch was run');
});
