import t from 'tap';
import { z } from 'zod';
import { CommonEnv, ConfigError, loadConfig, requireTokenKey, SecretKey, UserTokenEnv } from './config.ts';

const STRONG = 's'.repeat(40);

/** Runs `fn`, expecting a ConfigError, and returns it. */
function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
  throw new Error('expected a ConfigError');
}

t.test('defaults point at the local services', async (t) => {
  const c = loadConfig(CommonEnv, {});
  t.strictSame(c, {
    NODE_ENV: 'development',
    LOG_LEVEL: 'info',
    NATS_URL: 'nats://127.0.0.1:4222',
    DATABASE_URL: 'postgres://postgres@127.0.0.1:5432/test',
    REDIS_URL: 'redis://127.0.0.1:6379',
    HOST: '127.0.0.1',
    DISPATCHER_PORT: 8080,
    PROJECTOR_PORT: 8081,
    NOTIFIER_PORT: 8082,
  });
  t.equal(c.KURRENTDB_URL, undefined, 'no KurrentDB unless configured (PostgreSQL event store)');
});

t.test('empty strings count as unset', async (t) => {
  const c = loadConfig(CommonEnv, { NATS_URL: '', DISPATCHER_PORT: '', KURRENTDB_URL: '', NODE_ENV: '' });
  t.equal(c.NATS_URL, 'nats://127.0.0.1:4222');
  t.equal(c.DISPATCHER_PORT, 8080);
  t.equal(c.KURRENTDB_URL, undefined);
  t.equal(c.NODE_ENV, 'development');
});

t.test("NATS_URL: one server, or a cluster's nodes separated by commas", async (t) => {
  const nodes = 'nats://10.0.0.1:4222,nats://10.0.0.2:4222, nats://10.0.0.3:4222';
  t.equal(loadConfig(CommonEnv, { NATS_URL: nodes }).NATS_URL, nodes);
  for (const wrong of [
    '127.0.0.1:4222',
    'nats://a:4222,',
    'nats://a:4222,b:4222',
    'nats://a:4222,,nats://b:4222',
  ]) {
    t.throws(() => loadConfig(CommonEnv, { NATS_URL: wrong }), ConfigError, wrong);
  }
});

t.test('values from the environment are used, ports as numbers', async (t) => {
  const c = loadConfig(CommonEnv, {
    NODE_ENV: 'test',
    LOG_LEVEL: 'debug',
    NATS_URL: 'tls://nats.example:4222',
    DATABASE_URL: 'postgresql://u:p@db:5432/toolbus',
    REDIS_URL: 'rediss://cache:6380',
    KURRENTDB_URL: 'kurrentdb://admin:changeit@kdb:2113?tls=false',
    HOST: '0.0.0.0',
    DISPATCHER_PORT: '9000',
    PROJECTOR_PORT: '0',
    NOTIFIER_PORT: '65535',
    UNRELATED: 'ignored',
  });
  t.match(c, {
    NODE_ENV: 'test',
    LOG_LEVEL: 'debug',
    NATS_URL: 'tls://nats.example:4222',
    DATABASE_URL: 'postgresql://u:p@db:5432/toolbus',
    REDIS_URL: 'rediss://cache:6380',
    KURRENTDB_URL: 'kurrentdb://admin:changeit@kdb:2113?tls=false',
    HOST: '0.0.0.0',
    DISPATCHER_PORT: 9000,
    PROJECTOR_PORT: 0,
    NOTIFIER_PORT: 65535,
  });
  t.notOk('UNRELATED' in c, 'other variables are not part of the config');
  for (const url of ['esdb://kdb:2113', 'esdb+discover://a,b,c', 'kurrentdb+discover://cluster:2113']) {
    t.equal(loadConfig(CommonEnv, { KURRENTDB_URL: url }).KURRENTDB_URL, url, url);
  }
  t.equal(
    loadConfig(CommonEnv, { NATS_URL: 'nats://a:4222,nats://b:4222' }).NATS_URL,
    'nats://a:4222,nats://b:4222',
  );
});

t.test('a bad value throws a ConfigError that names the variable', async (t) => {
  const cases: Array<[string, string]> = [
    ['NATS_URL', 'http://x'],
    ['NATS_URL', 'nats://'],
    ['NATS_URL', '127.0.0.1:4222'],
    ['DATABASE_URL', 'mysql://db/x'],
    ['REDIS_URL', 'http://cache'],
    ['KURRENTDB_URL', 'http://x'],
    ['KURRENTDB_URL', 'esdb:/x'],
    ['DISPATCHER_PORT', 'abc'],
    ['DISPATCHER_PORT', '65536'],
    ['DISPATCHER_PORT', '-1'],
    ['DISPATCHER_PORT', '80.5'],
    ['DISPATCHER_PORT', ' '],
    ['DISPATCHER_PORT', '0x1f90'],
    ['DISPATCHER_PORT', '8e3'],
    ['PROJECTOR_PORT', 'eighty'],
    ['NOTIFIER_PORT', '1_000'],
    ['NODE_ENV', 'prod'],
    ['LOG_LEVEL', 'verbose'],
  ];
  for (const [name, value] of cases) {
    t.test(`${name}=${JSON.stringify(value)}`, async (t) => {
      const err = configError(() => loadConfig(CommonEnv, { [name]: value }));
      t.equal(err.name, 'ConfigError');
      t.match(
        err.message,
        new RegExp(`^invalid configuration:\\n  ${name}: `),
        'the message names the variable',
      );
      t.strictSame(err.problems.length, 1);
    });
  }
});

t.test('every bad variable is reported at once', async (t) => {
  const err = configError(() =>
    loadConfig(CommonEnv, { NATS_URL: 'http://x', DISPATCHER_PORT: 'abc', KURRENTDB_URL: 'http://x' }),
  );
  t.strictSame(err.problems.map((p) => p.split(':')[0]).sort(), [
    'DISPATCHER_PORT',
    'KURRENTDB_URL',
    'NATS_URL',
  ]);
  t.notMatch(err.message, /http:\/\/x/, 'values (possibly secrets) are not echoed');
});

const TokenEnv = requireTokenKey(CommonEnv.extend({ ...UserTokenEnv.shape, WORKER_SECRET: SecretKey }));

t.test('keys have no default: a missing or short key stops start-up, naming the variable', async (t) => {
  t.strictSame(configError(() => loadConfig(TokenEnv, {})).problems, [
    'WORKER_SECRET: must be set (at least 32 random characters)',
    'JWT_SECRET: must be set (at least 32 random characters), unless JWKS_URL is set',
  ]);
  t.strictSame(
    configError(() => loadConfig(TokenEnv, { JWT_SECRET: 'short', WORKER_SECRET: 'x'.repeat(31) })).problems,
    ['JWT_SECRET: must be at least 32 characters', 'WORKER_SECRET: must be at least 32 characters'],
  );
  for (const env of [{}, { NODE_ENV: 'development' }, { NODE_ENV: 'test' }, { NODE_ENV: 'production' }]) {
    t.match(
      configError(() => loadConfig(TokenEnv, env)).message,
      /JWT_SECRET: must be set/,
      'in every NODE_ENV',
    );
  }
});

t.test('user tokens: a secret, a key set or both, with the lifetime rules', async (t) => {
  const withSecret = loadConfig(TokenEnv, { JWT_SECRET: STRONG, WORKER_SECRET: 'w'.repeat(40) });
  t.match(withSecret, { JWT_SECRET: STRONG, JWT_MAX_LIFETIME_S: 86_400, JWT_CLOCK_TOLERANCE_S: 5 });
  t.equal(withSecret.JWKS_URL, undefined);
  const withJwks = loadConfig(TokenEnv, {
    WORKER_SECRET: 'w'.repeat(40),
    JWKS_URL: 'https://id.example/.well-known/jwks.json',
    JWT_ISSUER: 'https://id.example/',
    JWT_AUDIENCE: 'toolbus',
    JWT_MAX_LIFETIME_S: '3600',
    JWT_CLOCK_TOLERANCE_S: '0',
  });
  t.match(withJwks, {
    JWKS_URL: 'https://id.example/.well-known/jwks.json',
    JWT_ISSUER: 'https://id.example/',
    JWT_AUDIENCE: 'toolbus',
    JWT_MAX_LIFETIME_S: 3600,
    JWT_CLOCK_TOLERANCE_S: 0,
  });
  t.equal(withJwks.JWT_SECRET, undefined, 'no secret needed with a key set');
  for (const [name, value] of [
    ['JWKS_URL', 'ftp://id.example/jwks'],
    ['JWKS_URL', 'id.example/jwks'],
    ['JWT_MAX_LIFETIME_S', '0'],
    ['JWT_MAX_LIFETIME_S', '1h'],
    ['JWT_CLOCK_TOLERANCE_S', '301'],
    ['JWT_CLOCK_TOLERANCE_S', '-1'],
  ] as const) {
    const err = configError(() =>
      loadConfig(TokenEnv, { JWT_SECRET: STRONG, WORKER_SECRET: STRONG, [name]: value }),
    );
    t.strictSame(
      err.problems.map((p) => p.split(':')[0]),
      [name],
      `${name}=${value}`,
    );
  }
});

t.test('services extend the common schema', async (t) => {
  const Env = CommonEnv.extend({ TOOL_TIMEOUT_MS: z.coerce.number().int().positive().default(1000) });
  t.equal(loadConfig(Env, {}).TOOL_TIMEOUT_MS, 1000);
  t.equal(loadConfig(Env, { TOOL_TIMEOUT_MS: '250' }).TOOL_TIMEOUT_MS, 250);
  t.match(configError(() => loadConfig(Env, { TOOL_TIMEOUT_MS: '-5' })).message, /TOOL_TIMEOUT_MS: /);
});

t.test('reads process.env by default', async (t) => {
  const saved = process.env['NOTIFIER_PORT'];
  t.teardown(() => {
    if (saved === undefined) delete process.env['NOTIFIER_PORT'];
    else process.env['NOTIFIER_PORT'] = saved;
  });
  process.env['NOTIFIER_PORT'] = '9123';
  t.equal(loadConfig(CommonEnv).NOTIFIER_PORT, 9123);
});
