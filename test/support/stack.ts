import { randomBytes } from 'node:crypto';
import { createEventStore, type EventStore } from '../../lib/eventstore/index.ts';
import { signToken } from '../../lib/auth.ts';
import { createAgentClient } from '../../lib/clients/agent.ts';
import { connectNats, type NatsConnection } from '../../lib/nats.ts';
import { launchStack, type ServiceName, type Stack } from '../../scripts/launcher.ts';
import { freePort } from './ports.ts';
import { createTestDatabase, type TestDatabase } from './postgres.ts';
import { startRedis, startSecuredNats, type SecuredNats, type OwnedServer } from './processes.ts';
import { exampleTools, testTools } from '../../services/dispatcher/tools/index.ts';

/** Every tool a test stack's dispatcher may know: the `worker` identity may serve them all. */
export const ALL_TOOL_NAMES = [...new Set([...exampleTools, ...testTools].map((tool) => tool.name))];

type Teardown = { teardown(fn: () => Promise<void> | void): void };

export const STACK_JWT_SECRET = randomBytes(32).toString('hex');
export const STACK_WORKER_SECRET = randomBytes(32).toString('hex');

export interface TestStack {
  stack: Stack;
  /** The test's own NATS (with Toolbus's authorization) and Redis processes (kill, pause, restart them freely). */
  nats: SecuredNats;
  redis: OwnedServer;
  db: TestDatabase;
  /** Environment every service got. */
  env: Record<string, string>;
  /** A NATS connection of the test's, as the `agent` identity (an agent's view). */
  nc: NatsConnection;
  /** The event store the services write to, for reading what was recorded. */
  store: EventStore;
  agent: ReturnType<typeof createAgentClient>;
  /** Another connection to the test's NATS, as one of its identities (closed at teardown). */
  connectAs(identity: keyof SecuredNats['identities']): Promise<NatsConnection>;
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
  options: {
    services?: ServiceName[];
    env?: Record<string, string>;
    /** Tool names the `worker` identity may serve besides the example and test tools. */
    workerTools?: string[];
  } = {},
): Promise<TestStack> {
  const services = options.services ?? ['dispatcher', 'projector', 'notifier'];
  const [nats, redis, db] = await Promise.all([
    startSecuredNats(t, [...ALL_TOOL_NAMES, ...(options.workerTools ?? [])]),
    startRedis(t),
    createTestDatabase(t),
  ]);
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
    AUDIT_SIGNING_KEY: randomBytes(32).toString('hex'),
    TOOLBUS_TEST_TOOLS: '1',
    // The MCP gateway reads the registry from the stack's dispatcher.
    ...(ports.dispatcher !== undefined
      ? { GATEWAY_DISPATCHER_URL: `http://127.0.0.1:${ports.dispatcher}` }
      : {}),
    ...options.env,
  };
  const stack = await launchStack({
    services,
    env,
    serviceEnv: nats.serviceEnv,
    ports,
    readyTimeoutMs: 60_000,
  });
  t.teardown(() => stack.stop());
  const nc = await connectNats(nats.url, 'acceptance-test', { nkeySeed: nats.identities.agent.seed });
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
    async connectAs(identity) {
      const c = await connectNats(nats.url, `test-${identity}`, { nkeySeed: nats.identities[identity].seed });
      t.teardown(() => c.close());
      return c;
    },
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
