import t from 'tap';
import { natsServers, natsUrlForLog } from './nats.ts';

t.test("NATS_URL's servers: one, or a cluster's nodes separated by commas", async (t) => {
  t.same(natsServers('nats://127.0.0.1:4222'), ['nats://127.0.0.1:4222']);
  t.same(natsServers('nats://a:4222,nats://b:4222, nats://c:4222'), [
    'nats://a:4222',
    'nats://b:4222',
    'nats://c:4222',
  ]);
});

t.test('NATS_URL as logged: the credentials of any of its servers are left out', async (t) => {
  t.equal(natsUrlForLog('nats://127.0.0.1:4222'), 'nats://127.0.0.1:4222');
  t.equal(
    natsUrlForLog('nats://a:4222,tls://user:s3cret@b:4222, nats://tok3n@c:4222'),
    'nats://a:4222,tls://[REDACTED]@b:4222,nats://[REDACTED]@c:4222',
  );
  t.notMatch(natsUrlForLog('nats://u:p%40ss@h:4222'), /p%40ss|ss@/);
});
