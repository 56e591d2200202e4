import { randomBytes, randomUUID } from 'node:crypto';
import { signToken } from '../../lib/auth.ts';
import { loadConfig } from '../../lib/config.ts';
import type { EventStore } from '../../lib/eventstore/types.ts';
import { createPostgresEventStore } from '../../lib/eventstore/postgres.ts';
import { startNotifier, type Notifier } from '../../services/notifier/app.ts';
import { NotifierEnv } from '../../services/notifier/config.ts';
import { createTestDatabase } from '../support/postgres.ts';
import { startNats, startRedis, type OwnedServer } from '../support/processes.ts';

type Teardown = { teardown(fn: () => Promise<void> | void): void };

export interface NotifierFixture {
  notifier: Notifier;
  store: EventStore;
  nats: OwnedServer;
  /** A new user id. */
  user: () => string;
  token: (sub: string, roles?: string[]) => Promise<string>;
}

/**
 * A notifier in process for the security tests, with a NATS, a Redis and a database of the
 * test's own and a random token key; `env` adds or overrides its settings.
 */
export async function startNotifierFixture(
  t: Teardown,
  env: Record<string, string> = {},
): Promise<NotifierFixture> {
  const secret = randomBytes(32).toString('hex');
  const [db, nats, redis] = await Promise.all([createTestDatabase(t), startNats(t), startRedis(t)]);
  const store = await createPostgresEventStore({ connectionString: db.url });
  const notifier = await startNotifier(
    loadConfig(NotifierEnv, {
      NODE_ENV: 'test',
      LOG_LEVEL: 'error',
      NATS_URL: nats.url,
      REDIS_URL: redis.url,
      JWT_SECRET: secret,
      NOTIFIER_PORT: '0',
      ...env,
    }),
    { store },
  );
  t.teardown(async () => {
    await notifier.close();
    await store.close();
  });
  return {
    notifier,
    store,
    nats,
    user: () => `u${randomUUID().slice(0, 8)}`,
    token: (sub, roles = []) => signToken(secret, { sub, roles }, '1h'),
  };
}
