import t from 'tap';
import { natsServers } from './nats.ts';

t.test("NATS_URL's servers: one, or a cluster's nodes separated by commas", async (t) => {
  t.same(natsServers('nats://127.0.0.1:4222'), ['nats://127.0.0.1:4222']);
  t.same(natsServers('nats://a:4222,nats://b:4222, nats://c:4222'), [
    'nats://a:4222',
    'nats://b:4222',
    'nats://c:4222',
  ]);
});
