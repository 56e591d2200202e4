/**
 * The namespace grant against a real nats-server running Toolbus's generated authorization: the
 * MCP tool provider's identity serves every tool of its namespaces and nothing else, and a plain
 * tool and a namespace of the same name cannot reach each other's subjects.
 */
import t from 'tap';
import { z } from 'zod';
import { subjects } from '../../contracts/index.ts';
import { connectNats, type NatsConnection } from '../../lib/nats.ts';
import { defineTool, serveTools } from '../../lib/tools/index.ts';
import { startSecuredNats } from '../../test/support/processes.ts';

// The `worker` identity serves the plain tool `web`; the provider the namespace `web`.
const nats = await startSecuredNats(t, ['web'], ['web']);
const connect = async (seed: string) => {
  const nc = await connectNats(nats.url, 'permissions-test', { nkeySeed: seed });
  t.teardown(() => nc.close());
  return nc;
};

/** Subscribes; resolves with the server's refusal, or null when the subscription stands. */
async function subscribeRefused(nc: NatsConnection, subject: string): Promise<string | null> {
  const sub = nc.subscribe(subject);
  // The server answers a refused subscription before the flush's PONG (serveTools relies on it too).
  await nc.flush();
  if (!sub.isClosed()) {
    sub.unsubscribe();
    return null;
  }
  const closed = await sub.closed;
  return closed instanceof Error ? closed.message : 'closed';
}

/** Publishes; resolves with the server's refusal naming the subject. */
async function publishRefused(nc: NatsConnection, subject: string): Promise<string> {
  const refused = (async () => {
    for await (const status of nc.status()) {
      if (status.type === 'error' && status.error.message.includes(`"${subject}"`))
        return status.error.message;
    }
    return 'closed';
  })();
  nc.publish(subject, '{}');
  await nc.flush();
  return refused;
}

const tool = (name: string) =>
  defineTool({
    name,
    version: '1.0.0',
    description: 'A probe.',
    input: z.object({}),
    output: z.object({}),
    run: async () => ({}),
  });

t.test('the provider serves any tool of its namespace', async (t) => {
  const nc = await connect(nats.identities.mcpTools.seed);
  t.equal(await subscribeRefused(nc, subjects.toolRun('web.search', '1.0.0')), null);
  t.equal(await subscribeRefused(nc, subjects.toolCancel('web.Fetch-Page')), null);
  const server = await serveTools(nc, [tool('web.search')], { workerId: 'probe', secret: 'x'.repeat(32) });
  await server.stop();
  t.pass('serveTools announced web.search without a refusal');
});

t.test('…and nothing outside it', async (t) => {
  const nc = await connect(nats.identities.mcpTools.seed);
  for (const subject of [
    subjects.toolRun('web', '1.0.0'), // the plain tool web
    subjects.toolCancel('web'),
    subjects.toolRun('other.search', '1.0.0'),
    'toolbus.tools.run.web.>',
    'toolbus.tools.run.>',
  ])
    t.match(await subscribeRefused(nc, subject), /Permissions Violation/, `${subject} refused`);
  await t.rejects(
    serveTools(nc, [tool('other.search')], { workerId: 'probe', secret: 'x'.repeat(32) }),
    /NATS refused this worker's subscription/,
  );
});

t.test('the provider cannot announce or report progress for a plain tool of the same name', async (t) => {
  const nc = await connect(nats.identities.mcpTools.seed);
  t.match(await publishRefused(nc, subjects.toolAnnounce('web')), /Permissions Violation for Publish/);
  t.match(await publishRefused(nc, 'toolbus.tools.progress.web.some-invocation'), /Permissions Violation/);
});

t.test('the worker of the plain tool cannot reach the namespace', async (t) => {
  const nc = await connect(nats.identities.worker.seed);
  t.equal(await subscribeRefused(nc, subjects.toolRun('web', '1.0.0')), null, 'its own tool');
  for (const subject of [subjects.toolRun('web.search', '1.0.0'), subjects.toolCancel('web.search')])
    t.match(await subscribeRefused(nc, subject), /Permissions Violation/, `${subject} refused`);
  t.match(await publishRefused(nc, subjects.toolAnnounce('web.search')), /Permissions Violation/);
  t.match(
    await publishRefused(nc, subjects.toolProgress('web.search', 'inv-1')),
    /Permissions Violation/,
    'progress of a namespaced tool',
  );
});
