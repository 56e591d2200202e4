import { Writable } from 'node:stream';
import pino from 'pino';
import t from 'tap';
import { createHttpApp, defaultMaxConnections, RESERVED_DESCRIPTORS } from './http.ts';

/** An app whose log lines are collected, at `level`. */
function appLogging(level: string) {
  const lines: Array<{ level: number; msg: string; url?: string; statusCode?: number }> = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split('\n')) if (line) lines.push(JSON.parse(line));
      done();
    },
  });
  const app = createHttpApp({
    service: 'test',
    fastify: { logger: undefined, loggerInstance: pino({ level }, sink) },
  });
  app.get('/things', async () => ({ things: [] }));
  app.get('/broken', async () => {
    throw new Error('it broke');
  });
  return { app, lines };
}

t.test('one info line per request; health checks and scrapes only at debug', async (t) => {
  const info = appLogging('info');
  for (const url of ['/health/live', '/health/ready', '/metrics', '/things']) await info.app.inject({ url });
  t.strictSame(
    info.lines.map((l) => [l.msg, l.url, l.statusCode]),
    [['request', '/things', 200]],
    'at info, only the request a user made',
  );

  const debug = appLogging('debug');
  for (const url of ['/health/live', '/metrics']) await debug.app.inject({ url });
  t.strictSame(
    debug.lines.filter((l) => l.msg === 'request').map((l) => [l.level, l.url]),
    [
      [20, '/health/live'],
      [20, '/metrics'],
    ],
    'at debug, the routine ones too',
  );
});

t.test('a failing request keeps fastify’s error line', async (t) => {
  const info = appLogging('info');
  await info.app.inject({ url: '/broken' });
  t.ok(
    info.lines.some((l) => l.level >= 50),
    'the error is logged',
  );
});

t.test('the connection cap: HTTP_MAX_CONNECTIONS, else the open-file limit less a reserve', async (t) => {
  const limits = (soft: string) => () =>
    `Limit                     Soft Limit           Hard Limit           Units\nMax open files            ${soft}                65536                files\n`;
  t.equal(defaultMaxConnections({}, limits('20000')), 20000 - RESERVED_DESCRIPTORS);
  t.equal(defaultMaxConnections({}, limits('1024')), 1024 - RESERVED_DESCRIPTORS);
  t.equal(defaultMaxConnections({}, limits('100')), 64, 'never below 64');
  t.equal(defaultMaxConnections({}, limits('unlimited')), 1_048_576 - RESERVED_DESCRIPTORS);
  const unreadable = () => {
    throw new Error('ENOENT');
  };
  t.equal(defaultMaxConnections({}, unreadable), 4096 - RESERVED_DESCRIPTORS, 'no /proc: 4,096 assumed');
  t.equal(defaultMaxConnections({ HTTP_MAX_CONNECTIONS: '500' }, unreadable), 500, 'the setting wins');
  t.throws(() => defaultMaxConnections({ HTTP_MAX_CONNECTIONS: 'lots' }), /HTTP_MAX_CONNECTIONS/);
  t.throws(() => defaultMaxConnections({ HTTP_MAX_CONNECTIONS: '0' }), /HTTP_MAX_CONNECTIONS/);
});
