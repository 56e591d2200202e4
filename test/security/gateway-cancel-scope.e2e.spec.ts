import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import t from 'tap';
import { userStream, type ToolEvent } from '../../contracts/index.ts';
import { startTestStack, type TestStack } from '../support/stack.ts';

/**
 * `notifications/cancelled` names a JSON-RPC request id, and the gateway is stateless: the
 * notification arrives on its own request, with nothing saying which connection sent it. Two
 * clients of the same user (two agents, two tabs) number their requests alike (each starts at 0),
 * so client A cancelling its call 1 must not cancel client B's call 1.
 */

async function connect(ts: TestStack, token: string): Promise<Client> {
  const client = new Client({ name: 'redteam', version: '1.0.0' });
  await client.connect(
    new StreamableHTTPClientTransport(new URL(`${ts.url('gateway')}/mcp`), {
      requestInit: { headers: { authorization: `Bearer ${token}` } },
    }),
  );
  return client;
}

async function executing(ts: TestStack, userId: string): Promise<number> {
  let n = 0;
  for await (const e of ts.store.readStream(userStream(userId)))
    if ((e as unknown as ToolEvent).type === 'ToolExecuting') n++;
  return n;
}

async function waitFor(probe: () => Promise<boolean>): Promise<void> {
  while (!(await probe())) await new Promise((r) => setTimeout(r, 50));
}

const cancelled = async (ts: TestStack): Promise<number> => {
  let n = 0;
  for await (const e of ts.store.readStream(userStream('ann'))) {
    const event = e as unknown as ToolEvent;
    if (event.type === 'ToolFailed' && event.data.error.code === 'CANCELLED') n++;
  }
  return n;
};

t.test("one client's cancel does not reach another client's call of the same id", async (t) => {
  const ts = await startTestStack(t, { services: ['dispatcher', 'gateway'] });

  /** A waits to be cancelled; B, started after it with the same JSON-RPC id, runs 4 s. */
  const race = async (tokenA: string, tokenB: string) => {
    const a = await connect(ts, tokenA);
    const b = await connect(ts, tokenB);
    const before = await executing(ts, 'ann');
    const stopA = new AbortController();
    const callA = a
      .callTool(
        { name: 'wait_for_cancel', arguments: { seconds: 590 } },
        { signal: stopA.signal, timeout: 600_000 },
      )
      .catch((e: unknown) => e);
    await waitFor(async () => (await executing(ts, 'ann')) === before + 1);
    const callB = b.callTool({ name: 'wait_for_cancel', arguments: { seconds: 4 } }, { timeout: 600_000 });
    await waitFor(async () => (await executing(ts, 'ann')) === before + 2);
    stopA.abort();
    await callA;
    return { resultB: await callB, close: () => Promise.all([a.close(), b.close()]) };
  };

  t.test('two tokens of the same user: A cancels its own call only', async (t) => {
    const { resultB, close } = await race(
      await ts.token('ann', ['user'], '1h'),
      await ts.token('ann', ['user'], '2h'),
    );
    t.teardown(close);
    t.notOk(resultB.isError, `B's call was not cancelled by A: ${JSON.stringify(resultB.content)}`);
    t.same(resultB.structuredContent, { waited: 4 });
    await waitFor(async () => (await cancelled(ts)) === 1);
    t.pass("A's call ended CANCELLED");
  });

  t.test('one token shared by both: the cancel is ambiguous and reaches neither', async (t) => {
    const token = await ts.token('ann', ['user'], '3h');
    const { resultB, close } = await race(token, token);
    t.teardown(close);
    t.notOk(resultB.isError, `B's call was not cancelled by A: ${JSON.stringify(resultB.content)}`);
    t.same(resultB.structuredContent, { waited: 4 });
  });
});
