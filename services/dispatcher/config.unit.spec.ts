import { randomBytes } from 'node:crypto';
import t from 'tap';
import { ConfigError, loadConfig } from '../../lib/config.ts';
import { DispatcherEnv } from './config.ts';
import { requestIdFromMsgId } from './dispatcher.ts';
import { defaultUserSlots } from './intake.ts';

/** The keys the dispatcher cannot start without (random: no key has a default). */
const KEYS = { JWT_SECRET: randomBytes(32).toString('hex'), WORKER_SECRET: randomBytes(32).toString('hex') };

t.test('dispatcher settings: defaults', async (t) => {
  const c = loadConfig(DispatcherEnv, KEYS);
  t.match(c, {
    ACK_WAIT_MS: 30_000,
    DISPATCH_CONCURRENCY: 64,
    USER_CONCURRENCY: 8,
    RATE_LIMIT_PER_SEC: 20,
    RATE_LIMIT_BURST: 40,
    CACHE_TTL_SEC: 300,
    TOOLBUS_TEST_TOOLS: false,
    MAX_ACK_PENDING: 20_000,
    INTAKE_BUFFER: 4096,
    INTAKE_BUFFER_BYTES: 64 * 1024 * 1024,
    INTAKE_PULL_BATCH: 256,
    CANCEL_WAIT_MS: 15_000,
    NATS_STREAM_REPLICAS: 1,
  });
  t.equal(c.USER_DISPATCH_SLOTS, undefined, 'derived from DISPATCH_CONCURRENCY when not set');
  t.match(c.DISPATCHER_ID, /^[A-Za-z0-9_-]+-\d+$/, 'hostname-pid, as a subject token');
});

t.test('dispatcher settings: from the environment, and refused when wrong', async (t) => {
  const c = loadConfig(DispatcherEnv, {
    ...KEYS,
    ACK_WAIT_MS: '5000',
    TOOLBUS_TEST_TOOLS: '1',
    DISPATCHER_ID: 'd-1',
  });
  t.match(c, { ACK_WAIT_MS: 5000, TOOLBUS_TEST_TOOLS: true, DISPATCHER_ID: 'd-1' });
  t.equal(loadConfig(DispatcherEnv, { ...KEYS, TOOLBUS_TEST_TOOLS: 'false' }).TOOLBUS_TEST_TOOLS, false);
  t.equal(loadConfig(DispatcherEnv, { ...KEYS, USER_DISPATCH_SLOTS: '3' }).USER_DISPATCH_SLOTS, 3);
  t.equal(loadConfig(DispatcherEnv, { ...KEYS, NATS_STREAM_REPLICAS: '3' }).NATS_STREAM_REPLICAS, 3);
  t.equal(loadConfig(DispatcherEnv, KEYS).DISPATCHER_PROJECTOR_URL, undefined, 'no projector URL by default');
  t.equal(
    loadConfig(DispatcherEnv, { ...KEYS, DISPATCHER_PROJECTOR_URL: 'https://toolbus.example/projector' })
      .DISPATCHER_PROJECTOR_URL,
    'https://toolbus.example/projector',
  );
  for (const [key, value] of [
    ['ACK_WAIT_MS', '10'],
    ['ACK_WAIT_MS', 'soon'],
    ['DISPATCH_CONCURRENCY', '0'],
    ['DISPATCH_CONCURRENCY', '-3'],
    ['RATE_LIMIT_PER_SEC', '1.5'],
    ['TOOLBUS_TEST_TOOLS', 'yes'],
    ['DISPATCHER_ID', 'has.dot'],
    ['USER_DISPATCH_SLOTS', '0'],
    ['INTAKE_BUFFER_BYTES', '1000'],
    ['NATS_STREAM_REPLICAS', '0'],
    ['NATS_STREAM_REPLICAS', '6'],
    ['DISPATCHER_PROJECTOR_URL', 'projector:8081'],
    ['DISPATCHER_PROJECTOR_URL', 'ftp://projector'],
  ] as const) {
    t.throws(() => loadConfig(DispatcherEnv, { ...KEYS, [key]: value }), ConfigError, `${key}=${value}`);
  }
});

t.test('the request id in Nats-Msg-Id', async (t) => {
  t.equal(requestIdFromMsgId('alice:req-1', 'alice'), 'req-1');
  t.equal(requestIdFromMsgId('alice:req-1/0123456789abcdef', 'alice'), 'req-1', 'with the token fingerprint');
  t.equal(requestIdFromMsgId('alice:a:b/0123456789abcdef', 'alice'), 'a:b');
  t.equal(requestIdFromMsgId('alice:/0123456789abcdef', 'alice'), undefined);
  t.equal(requestIdFromMsgId('alice:a:b', 'alice'), 'a:b', 'request ids may contain colons');
  t.equal(requestIdFromMsgId('bob:req-1', 'alice'), undefined, "another user's prefix");
  t.equal(requestIdFromMsgId('alice:', 'alice'), undefined);
  t.equal(requestIdFromMsgId('alice:has space', 'alice'), undefined);
  t.equal(requestIdFromMsgId(undefined, 'alice'), undefined);
  t.equal(requestIdFromMsgId('req-1', 'alice'), undefined);
});

t.test('one user may hold all but an eighth of the slots, at least one', async (t) => {
  t.equal(defaultUserSlots(64), 56);
  t.equal(defaultUserSlots(8), 7);
  t.equal(defaultUserSlots(3), 2);
  t.equal(defaultUserSlots(2), 1);
  t.equal(defaultUserSlots(1), 1);
});

t.test('the test tools are refused in a production start', async (t) => {
  t.throws(
    () => loadConfig(DispatcherEnv, { ...KEYS, NODE_ENV: 'production', TOOLBUS_TEST_TOOLS: '1' }),
    new ConfigError([
      'TOOLBUS_TEST_TOOLS: is a test hook: refused when NODE_ENV=production (unset it, or start with NODE_ENV=test)',
    ]),
  );
  t.equal(
    loadConfig(DispatcherEnv, { ...KEYS, NODE_ENV: 'production' }).TOOLBUS_TEST_TOOLS,
    false,
    'a production start without them',
  );
  t.equal(
    loadConfig(DispatcherEnv, { ...KEYS, NODE_ENV: 'test', TOOLBUS_TEST_TOOLS: '1' }).TOOLBUS_TEST_TOOLS,
    true,
  );
});
