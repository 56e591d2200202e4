import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { loadConfig, CommonEnv } from './config.ts';
import { createRedis, unixSocketOf } from './redis.ts';

t.test('a unix:// REDIS_URL: the socket path and the password', async (t) => {
  t.strictSame(unixSocketOf('unix:///tmp/x/redis.sock?password=p%2Fq'), {
    path: '/tmp/x/redis.sock',
    password: 'p/q',
  });
  t.strictSame(unixSocketOf('unix:///tmp/x/redis.sock'), { path: '/tmp/x/redis.sock' });
  t.equal(unixSocketOf('redis://127.0.0.1:6379'), null);
  t.equal(
    loadConfig(CommonEnv, { REDIS_URL: 'unix:///tmp/x/redis.sock' }).REDIS_URL,
    'unix:///tmp/x/redis.sock',
  );
  t.throws(() => loadConfig(CommonEnv, { REDIS_URL: 'unix://relative.sock' }), /REDIS_URL/);
});

t.test('createRedis reaches a Redis on a Unix socket, with its password', async (t) => {
  const dir = await mkdtemp('/tmp/toolbus-redis-test-');
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const socket = join(dir, 'redis.sock');
  const server = spawn(
    'redis-server',
    [
      '--port',
      '0',
      '--unixsocket',
      socket,
      '--unixsocketperm',
      '700',
      '--requirepass',
      'sesame',
      '--save',
      '',
    ],
    { stdio: 'ignore' },
  );
  t.teardown(() => void server.kill('SIGKILL'));
  for (let i = 0; i < 600 && !existsSync(socket); i++) await new Promise((r) => setTimeout(r, 100));
  const redis = createRedis(`unix://${socket}?password=sesame`);
  t.teardown(() => redis.disconnect());
  let pong: string | undefined;
  for (let i = 0; i < 600 && pong === undefined; i++) {
    pong = await redis.ping().catch(() => undefined);
    if (pong === undefined) await new Promise((r) => setTimeout(r, 100));
  }
  t.equal(pong, 'PONG', 'it answers');
  const wrong = createRedis(`unix://${socket}?password=wrong`);
  t.teardown(() => wrong.disconnect());
  await t.rejects(wrong.ping(), 'a wrong password is refused');
});
