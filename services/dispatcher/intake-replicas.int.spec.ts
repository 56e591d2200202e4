/**
 * The intake on a 3-node JetStream cluster: NATS_STREAM_REPLICAS sets the stream's copies when
 * it is created, and an instance starting with another count brings an existing stream (and its
 * consumer) in line. The dispatcher's connection, given every node's URL, moves to another node
 * when its own is killed.
 */
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import t from 'tap';
import { jetstream as names } from '../../contracts/index.ts';
import { createLogger } from '../../lib/log.ts';
import { connectNats } from '../../lib/nats.ts';
import { retry } from '../../lib/retry.ts';
import { pollUntil, startSecuredNatsCluster } from '../../test/support/processes.ts';
import { ensureIntake, isJetStreamForming } from './intake.ts';

const cluster = await startSecuredNatsCluster(t, []);
const nc = await connectNats(cluster.url, 'intake-replicas', {
  nkeySeed: cluster.identities.dispatcher.seed,
});
t.teardown(() => nc.close());
// A replicated stream's API calls wait for its peers: on a busy machine longer than the 5 s default.
const jsm = await jetstreamManager(nc, { timeout: 20_000 });
const log = createLogger('intake-replicas-test', 'silent');
// As the dispatcher calls it at start (app.ts): an API request left unanswered while the cluster
// rescales the stream (nats-server 2.9, once in CI even with 20 s) is asked again.
const ensure = (replicas: number) =>
  retry(
    () => ensureIntake(jsm, { ackWaitMs: 30_000, maxAckPending: 1000, maxPerAgent: 1000, replicas, log }),
    {
      retries: 10,
      minMs: 250,
      maxMs: 4_000,
      retryable: isJetStreamForming,
    },
  );

/** The copies of the stream and of its consumer that the cluster has placed (leader included). */
async function copies(m: JetStreamManager): Promise<{ stream: number; consumer: number }> {
  const s = await m.streams.info(names.requestsStream);
  const c = await m.consumers.info(names.requestsStream, names.dispatcherConsumer);
  return { stream: 1 + (s.cluster?.replicas?.length ?? 0), consumer: 1 + (c.cluster?.replicas?.length ?? 0) };
}

const placed = (stream: number, consumer: number) =>
  pollUntil(`${stream} copies of the stream, ${consumer} of the consumer`, async () => {
    const c = await copies(jsm);
    return c.stream === stream && c.consumer === consumer ? c : undefined;
  });

t.test('one copy by default; a later start with 3 replicates the stream and its consumer', async (t) => {
  t.same(await ensureIntake(jsm, { ackWaitMs: 30_000, maxAckPending: 1000, log }), ['stream', 'consumer']);
  t.equal((await jsm.streams.info(names.requestsStream)).config.num_replicas, 1);
  t.same(await placed(1, 1), { stream: 1, consumer: 1 }, 'one copy of each');

  t.same(await ensure(3), [], 'nothing created: the stream is updated');
  const config = (await jsm.streams.info(names.requestsStream)).config;
  t.equal(config.num_replicas, 3);
  // Decision 0036: replicas would each apply it to their own copy and diverge (nats-server#7607).
  t.equal(config.max_msgs_per_subject, -1, 'no bound per agent on a replicated intake');
  t.same(await placed(3, 3), { stream: 3, consumer: 3 }, 'three copies of the stream and of the consumer');
  t.same(await ensure(3), [], 'a start with the same count changes nothing');
});

t.test('a missing stream is created with the configured copies', async (t) => {
  // Only once its three copies are placed: nats-server 2.9.10 leaves a delete unanswered when it
  // comes while a stream is still being scaled from one copy to three.
  await placed(3, 3);
  await jsm.streams.delete(names.requestsStream);
  t.same(await ensure(3), ['stream', 'consumer']);
  t.match((await jsm.streams.info(names.requestsStream)).config, {
    num_replicas: 3,
    max_msgs_per_subject: -1,
  });
  t.same(await placed(3, 3), { stream: 3, consumer: 3 });
});

t.test("given every node's URL, the connection moves on when its node dies", async (t) => {
  const on = cluster.nodes.find((n) => nc.info?.server_name === n.name);
  t.ok(on, `connected to ${nc.info?.server_name}`);
  await on!.kill();
  await pollUntil('the connection is on another node', async () =>
    nc.info?.server_name !== on!.name ? true : undefined,
  );
  // The connection may still be settling (a flush on it can be refused as "disconnected"): a round
  // trip that succeeds, then the node it is on.
  await pollUntil('a round trip on another node', () => nc.flush().then(() => true));
  t.not(nc.info?.server_name, on!.name, `now on ${nc.info?.server_name}`);
  t.ok(await pollUntil('the intake answers', () => jsm.streams.info(names.requestsStream)));
  await on!.start();
});
