import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import t from 'tap';
import { userStream, type ToolEvent } from '../../contracts/index.ts';
import { startTestStack, type TestStack } from '../support/stack.ts';

/**
 * One user cannot hold an unbounded number of calls open on the MCP gateway: each waiting
 * `tools/call` holds an HTTP response, a NATS subscription and a timer for up to
 * GATEWAY_CALL_TIMEOUT_MS (10.5 minutes), and each `tasks/result` polls the dispatcher. Beyond
 * GATEWAY_MAX_WAITS_PER_USER the next call is refused at once with a clear OVERLOADED error and
 * nothing is recorded; other users are not affected, and a call that ends frees its place.
 */

const LIMIT = 3;

async function connect(ts: TestStack, token: string): Promise<Client> {
  const client = new Client({ name: 'redteam', version: '1.0.0' });
  await client.connect(
    new StreamableHTTPClientTransport(new URL(`${ts.url('gateway')}/mcp`), {
      requestInit: { headers: { authorization: `Bearer ${token}` } },
    }),
  );
  return client;
}

async function eventsOf(ts: TestStack, userId: string): Promise<ToolEvent[]> {
  const out: ToolEvent[] = [];
  for await (const e of ts.store.readStream(userStream(userId))) out.push(e as unknown as ToolEvent);
  return out;
}

async function waitFor(probe: () => Promise<boolean>): Promise<void> {
  while (!(await probe())) await new Promise((r) => setTimeout(r, 50));
}

const count = async (ts: TestStack, userId: string, type: ToolEvent['type']) =>
  (await eventsOf(ts, userId)).filter((e) => e.type === type).length;

t.test('calls waiting on the gateway are bounded per user', async (t) => {
  const ts = await startTestStack(t, {
    services: ['dispatcher', 'gateway'],
    env: { GATEWAY_MAX_WAITS_PER_USER: String(LIMIT) },
  });
  const ann = await connect(ts, await ts.token('ann'));
  t.teardown(() => ann.close());

  const controllers = Array.from({ length: LIMIT }, () => new AbortController());
  const held = controllers.map((c) =>
    ann
      .callTool(
        { name: 'wait_for_cancel', arguments: { seconds: 590 } },
        { signal: c.signal, timeout: 600_000 },
      )
      .catch((e: unknown) => e),
  );
  await waitFor(async () => (await count(ts, 'ann', 'ToolExecuting')) === LIMIT);

  const refused = await ann.callTool({ name: 'echo', arguments: { message: 'one too many' } });
  t.equal(refused.isError, true, 'the call over the bound is refused');
  const error = (refused._meta?.['io.toolbus/error'] ?? {}) as { code?: string; message?: string };
  t.equal(error.code, 'OVERLOADED', 'as OVERLOADED (retryable)');
  t.match(error.message, new RegExp(`${LIMIT} calls`), `the message says why: ${error.message}`);
  t.equal(await count(ts, 'ann', 'ToolRequested'), LIMIT, 'nothing was recorded for it');

  const bob = await connect(ts, await ts.token('bob'));
  t.teardown(() => bob.close());
  const other = await bob.callTool({ name: 'echo', arguments: { message: 'hi' } });
  t.notOk(other.isError, 'another user is not affected');

  // A call that ends frees its place.
  controllers[0]!.abort();
  await held[0];
  let again = await ann.callTool({ name: 'echo', arguments: { message: 'after' } });
  while (again.isError) {
    // The client gives up at once; the gateway frees the place when the cancelled call's answer
    // has come back to it.
    await new Promise((r) => setTimeout(r, 50));
    again = await ann.callTool({ name: 'echo', arguments: { message: 'after' } });
  }
  t.notOk(again.isError, 'a place freed by a call that ended is usable again');

  for (const c of controllers) c.abort();
  await Promise.all(held);
});
