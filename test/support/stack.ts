import { createEventStore, type EventStore } from '../../lib/eventstore/index.ts';
import { signToken } from '../../lib/auth.ts';
import { createAgentClient } from '../../lib/clients/agent.ts';
import { connectNats, type NatsConnection } from '../../lib/nats.ts';
import { launchStack, type ServiceName, type Stack } from '../../scripts/launcher.ts';
import { freePort } from './ports.ts';
import { createTestDatabase, type TestDatabase } from './postgres.ts';
import { startNats, startRedis, type OwnedServer } from './processes.ts';

type Teardown = { teardown(fn: () => Promise<void> | void): void };

export const STACK_JWT_SECRET = 'acceptance-test-secret-0123456789abcdefghij';
export const STACK_WORKER_SECRET = 'acceptance-worker-secret-0123456789abcdefghij';

export interface TestStack {
  stack: Stack;
  /** The test's own NATS and Redis processes (kill, pause, restart them freely). */
  nats: OwnedServer;
  redis: OwnedServer;
  db: TestDatabase;
  /** Environment every service got. */
  env: Record<string, string>;
  /** A NATS connection of the test's (an agent's view). */
  nc: NatsConnection;
  /** The event store the services write to, for reading what was recorded. */
  store: EventStore;
  agent: ReturnType<typeof createAgentClient>;
  url(service: ServiceName): string;
  token(userId: string, roles?: string[], expiresIn?: string | number): Promise<string>;
  /** Every log line of `service` (or of all services) so far. */
  logText(service?: ServiceName): string;
}

/**
 * The whole Toolbus stack for a test, each service as its own process (the launcher that
 * `npm start` uses), against a NATS server and a Redis server owned by the test and a fresh
 * PostgreSQL database. Everything is stopped and dropped at teardown.
 */
export async function startTestStack(
  t: Teardown,
  options: { services?: ServiceName[]; env?: Record<string, string> } = {},
): Promise<TestStack> {
  const services = options.services ?? ['dispatcher', 'projector', 'notifier'];
  const [nats, redis, db] = await Promise.all([startNats(t), startRedis(t), createTestDatabase(t)]);
  const ports: Partial<Record<ServiceName, number>> = {};
  for (const name of services) ports[name] = await freePort();
  const env: Record<string, string> = {
    NODE_ENV: 'test',
    LOG_LEVEL: 'info',
    NATS_URL: nats.url,
    REDIS_URL: redis.url,
    DATABASE_URL: db.url,
    JWT_SECRET: STACK_JWT_SECRET,
    WORKER_SECRET: STACK_WORKER_SECRET,
    TOOLBUS_TEST_TOOLS: '1',
    ...options.env,
  };
  const stack = await launchStack({ services, env, ports, readyTimeoutMs: 60_000 });
  t.teardown(() => stack.stop());
  const nc = await connectNats(nats.url, 'acceptance-test');
  t.teardown(() => nc.close());
  const store = await createEventStore({ DATABASE_URL: db.url });
  t.teardown(() => store.close());
  return {
    stack,
    nats,
    redis,
    db,
    env,
    nc,
    store,
    agent: createAgentClient(nc),
    url: (service) => stack.services[service].url,
    token: (userId, roles = ['user'], expiresIn = '1h') =>
      signToken(STACK_JWT_SECRET, { sub: userId, roles }, expiresIn),
    logText: (service) =>
      stack.logs
        .filter((l) => service === undefined || l.service === service)
        .map((l) => l.line)
        .join('\n'),
  };
}
