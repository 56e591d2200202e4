/**
 * A full intake refuses at once: the agent gets OVERLOADED with a retry hint, nothing was
 * recorded, and the request may be sent again with the same id once there is room.
 */
import t from 'tap';
import { DiscardPolicy, jetstreamManager, RetentionPolicy } from '@nats-io/jetstream';
import { jetstream as names, subjects } from '../../contracts/index.ts';
import { startNats } from '../../test/support/processes.ts';
import { signToken } from '../auth.ts';
import { connectNats } from '../nats.ts';
import { createAgentClient } from './agent.ts';

const nats = await startNats(t);
const nc = await connectNats(nats.url, 'intake-full-test');
t.teardown(() => nc.close());
const jsm = await jetstreamManager(nc);
// The intake as the dispatcher makes it, bounded to two requests; no dispatcher consumes it.
await jsm.streams.add({
  name: names.requestsStream,
  subjects: [subjects.requestsAll],
  retention: RetentionPolicy.Workqueue,
  max_msgs: 2,
  discard: DiscardPolicy.New,
});
const token = await signToken('intake-full-test-secret-0123456789abcdef', { sub: 'alice', roles: ['user'] });
const client = createAgentClient(nc);

t.test('beyond the bound, a request is answered OVERLOADED at once, with when to retry', async (t) => {
  // Two fill the stream; nobody answers them (no dispatcher), so they are left waiting.
  const waiting = [1, 2].map((i) =>
    client.execute('noop', {}, { token, requestId: `fill-${i}`, timeoutMs: 60_000 }).catch(() => null),
  );
  await waitForMessages(2);
  const refused = await client.execute('noop', {}, { token, requestId: 'one-too-many', timeoutMs: 60_000 });
  t.match(refused, {
    status: 'failed',
    requestId: 'one-too-many',
    executionId: null,
    error: { code: 'OVERLOADED', details: { retryAfterMs: Number } },
  });
  t.equal((await jsm.streams.info(names.requestsStream)).state.messages, 2, 'nothing more was stored');
  void waiting;
});

async function waitForMessages(n: number): Promise<void> {
  while ((await jsm.streams.info(names.requestsStream)).state.messages < n) {
    await new Promise((r) => setTimeout(r, 20));
  }
}
