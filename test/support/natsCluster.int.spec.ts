/**
 * The test NATS cluster (startSecuredNatsCluster): three nodes form one JetStream cluster, a
 * stream replicated on all three keeps its messages when its leader node is killed (another node
 * leads, the killed one rejoins with its store), and a partitioned node is cut off from clients
 * and routes until healed.
 */
import { jetstreamManager, jetstream, RetentionPolicy, StorageType } from '@nats-io/jetstream';
import t from 'tap';
import { connectNats } from '../../lib/nats.ts';
import { pollUntil as until, startSecuredNatsCluster, type SecuredNatsCluster } from './processes.ts';

const STREAM = 'TOOLBUS_REQUESTS';

const cluster: SecuredNatsCluster = await startSecuredNatsCluster(t, []);
// The dispatcher's identity may manage the intake stream.
const nc = await connectNats(cluster.url, 'cluster-test', { nkeySeed: cluster.identities.dispatcher.seed });
t.teardown(() => nc.close());
const jsm = await jetstreamManager(nc);
await jsm.streams.add({
  name: STREAM,
  subjects: ['toolbus.requests.>'],
  storage: StorageType.File,
  retention: RetentionPolicy.Limits,
  num_replicas: 3,
});
const js = jetstream(nc);
// The subject an identity may publish requests on ends in its id.
const SUBJECT = `toolbus.requests.u.${cluster.identities.dispatcher.publicKey}`;

t.test('a replicated stream has a leader and two current replicas', async (t) => {
  const leader = await until('a leader', () => cluster.streamLeader());
  t.ok(cluster.nodes.includes(leader), `the leader is one of the nodes (${leader.name})`);
  const info = await jsm.streams.info(STREAM);
  t.equal(info.cluster?.replicas?.length, 2, 'two replicas beside the leader');
});

t.test('killing the leader node loses nothing acknowledged; the node rejoins', async (t) => {
  for (let i = 0; i < 20; i++) await js.publish(SUBJECT, new TextEncoder().encode(`m${i}`));
  const leader = await until('a leader', () => cluster.streamLeader());
  await leader.kill();
  const next = await until('another leader', async () => {
    const l = await cluster.streamLeader();
    return l && l !== leader ? l : undefined;
  });
  t.not(next.name, leader.name, `${next.name} leads once ${leader.name} is gone`);
  const info = await until('the stream answers', () => jsm.streams.info(STREAM));
  t.equal(info.state.messages, 20, 'every acknowledged message is still there');
  await js.publish(SUBJECT, new TextEncoder().encode('while one is down'));
  await leader.start();
  await until(`${leader.name} is a current replica again`, async () => {
    const i = await jsm.streams.info(STREAM);
    return i.cluster?.replicas?.find((r) => r.name === leader.name && r.current) ? true : undefined;
  });
  t.pass(`${leader.name} rejoined and caught up`);
});

t.test('a partitioned node is cut off from its clients and the cluster until healed', async (t) => {
  const node = cluster.nodes[2]!;
  const direct = await connectNats(node.url, 'partition-probe', { nkeySeed: cluster.identities.agent.seed });
  t.teardown(() => direct.close());
  await direct.flush();
  node.partition();
  const cut = await Promise.race([
    direct.flush().then(() => false),
    new Promise<boolean>((r) => setTimeout(() => r(true), 1_000)),
  ]);
  t.ok(cut, "the node's clients hear nothing back");
  // The other two are a quorum: the stream takes messages, led by one of them.
  await until('a leader among the others', async () => {
    const l = await cluster.streamLeader();
    return l && l !== node ? l : undefined;
  });
  await until('a publish is stored', () => js.publish(SUBJECT, new TextEncoder().encode('p')));
  const during = await jsm.streams.info(STREAM);
  t.notOk(
    during.cluster?.replicas?.find((r) => r.name === node.name)?.current,
    'the cut-off node is not a current replica',
  );
  node.heal();
  await until('the healed node is current again', async () => {
    const i = await jsm.streams.info(STREAM);
    return i.cluster?.replicas?.find((r) => r.name === node.name && r.current) ? true : undefined;
  });
  await until('its clients are served again', () => direct.flush().then(() => true));
  t.pass(`${node.name} rejoined after the partition`);
});
