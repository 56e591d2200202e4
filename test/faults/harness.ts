import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type tap from 'tap';
import { signToken } from '../../lib/auth.ts';
import { createAgentClient, type AgentClient } from '../../lib/clients/agent.ts';
import { createPool, type Pool } from '../../lib/db.ts';
import { createEventStore, type EventStore } from '../../lib/eventstore/index.ts';
import { connectNats, type NatsConnection } from '../../lib/nats.ts';
import { launchStack, prettyLine, type ServiceName, type Stack } from '../../scripts/launcher.ts';
import { freePort } from '../support/ports.ts';
import { createTestDatabase } from '../support/postgres.ts';
import {
  startPostgres,
  startRedis,
  startSecuredNats,
  startSecuredNatsCluster,
  type OwnedServer,
  type SecuredNats,
  type SecuredNatsCluster,
} from '../support/processes.ts';
import { ALL_TOOL_NAMES } from '../support/stack.ts';
import { startProxy, type TcpProxy } from '../support/proxy.ts';

/**
 * The stack a fault test drives: every service as its own process (scripts/launcher.ts, as
 * `npm start` runs them) against a NATS server and a Redis server of the test's own, and either a
 * fresh database on the shared PostgreSQL or a PostgreSQL server of the test's own (which the test
 * may kill). Redis may sit behind a TCP proxy, so the test can black-hole it. NATS may be a 3-node
 * JetStream cluster (`natsCluster`), the intake stream replicated on every node.
 */

export const FAULT_JWT_SECRET = randomBytes(32).toString('hex');
export const FAULT_WORKER_SECRET = randomBytes(32).toString('hex');

/** A tap test (the `t` a subtest receives). */
export type Tap = Parameters<Parameters<typeof tap.test>[0]>[0];

export interface FaultStackOptions {
  services?: ServiceName[];
  /** Extra environment for every service (limits, ACK_WAIT_MS, ...). */
  env?: Record<string, string>;
  /** Run PostgreSQL as a server of this test's own (to kill it); default: a fresh database on the shared one. */
  ownPostgres?: boolean;
  /** Put Redis behind a TCP proxy (services get the proxy's URL). */
  redisProxy?: boolean;
  /**
   * Run NATS as a JetStream cluster of this many nodes (startSecuredNatsCluster) instead of one
   * server: services get every node's URL, and the intake stream as many replicas (at most 3).
   */
  natsCluster?: number;
}

export interface FaultStack {
  stack: Stack;
  /** The NATS server, unless NATS is a cluster. */
  nats: SecuredNats | null;
  /** The NATS cluster, when asked for (`natsCluster`). */
  cluster: SecuredNatsCluster | null;
  redis: OwnedServer;
  /** The proxy in front of Redis, when asked for. */
  redisProxy: TcpProxy | null;
  /** The PostgreSQL server of the test's own, when asked for. */
  postgres: OwnedServer | null;
  databaseUrl: string;
  /** The environment every service got. */
  env: Record<string, string>;
  /** The test's own NATS connection (an agent's view of the bus). */
  nc: NatsConnection;
  agent: AgentClient;
  /** The event store the services write to, for the checker. */
  store: EventStore;
  /** The database of the read models, for the checker. */
  pool: Pool;
  url(service: ServiceName): string;
  token(userId: string, roles?: string[], expiresIn?: string | number): Promise<string>;
  /** Starts one more instance of a service (its own process, port and id) sharing everything. */
  extra(service: ServiceName, env?: Record<string, string>): Promise<Stack>;
  /** Every log line so far of one service (or all), as JSON text lines. */
  logText(service?: ServiceName): string;
  /** Lines telling that a service process ended on its own (not killed by the test). */
  unexpectedExits(): string[];
  /** Marks a service kill as the test's own, so `unexpectedExits` does not report it. */
  expectExit(service: ServiceName): void;
}

export async function startFaultStack(t: Tap, options: FaultStackOptions = {}): Promise<FaultStack> {
  const services = options.services ?? ['dispatcher', 'projector', 'notifier'];
  const [bus, redis, database] = await Promise.all([
    options.natsCluster
      ? startSecuredNatsCluster(t, ALL_TOOL_NAMES, [], options.natsCluster)
      : startSecuredNats(t, ALL_TOOL_NAMES),
    startRedis(t),
    options.ownPostgres
      ? startPostgres(t).then((pg): { url: string; server: OwnedServer | null } => ({
          url: pg.databaseUrl,
          server: pg,
        }))
      : createTestDatabase(t).then((db) => ({ url: db.url, server: null })),
  ]);
  const cluster = options.natsCluster ? (bus as SecuredNatsCluster) : null;
  const nats = options.natsCluster ? null : (bus as SecuredNats);
  const redisProxy = options.redisProxy ? await startProxy(redis.port, t) : null;
  const env: Record<string, string> = {
    NODE_ENV: 'test',
    LOG_LEVEL: 'info',
    NATS_URL: bus.url,
    ...(cluster ? { NATS_STREAM_REPLICAS: String(Math.min(3, cluster.nodes.length)) } : {}),
    REDIS_URL: redisProxy ? redisProxy.url('redis') : redis.url,
    DATABASE_URL: database.url,
    JWT_SECRET: FAULT_JWT_SECRET,
    WORKER_SECRET: FAULT_WORKER_SECRET,
    AUDIT_SIGNING_KEY: randomBytes(32).toString('hex'),
    TOOLBUS_TEST_TOOLS: '1',
    // Fault tests see the tail check work within their time budget.
    NOTIFIER_TAIL_CHECK_MS: '3000',
    ...options.env,
  };
  const ports: Partial<Record<ServiceName, number>> = {};
  for (const name of services) ports[name] = await freePort();

  const stacks: Stack[] = [];
  const expected = new Map<string, number>();
  const stopAll = async () => {
    await Promise.all(stacks.map((s) => s.stop()));
  };
  t.teardown(async () => {
    if (!t.passing() || process.env['FAULT_LOGS']) {
      // What the services said is the first thing to read when a fault test fails: all of it to a
      // file, the end of it in the test output.
      const lines = stacks
        .flatMap((s) => s.logs)
        .sort((a, b) => a.at - b.at)
        .map(prettyLine);
      const dir = join(tmpdir(), 'toolbus-faults');
      await mkdir(dir, { recursive: true });
      const file = join(dir, `${t.fullname.replace(/[^A-Za-z0-9]+/g, '-').slice(-80)}-${Date.now()}.log`);
      await writeFile(file, lines.join('\n'));
      t.comment(`service logs: ${file}\nlast lines:\n${lines.slice(-40).join('\n')}`);
    }
    await stopAll();
  });

  const stack = await launchStack({
    services,
    env,
    serviceEnv: bus.serviceEnv,
    ports,
    readyTimeoutMs: 90_000,
  });
  stacks.push(stack);
  const nc = await connectNats(bus.url, 'fault-test', { nkeySeed: bus.identities.agent.seed });
  t.teardown(async () => {
    await nc.close();
  });
  const store = await createEventStore({ DATABASE_URL: database.url });
  t.teardown(() => store.close());
  const pool = createPool(database.url, { max: 3, application: 'fault-checker' });
  t.teardown(() => pool.end());

  let extras = 0;
  return {
    stack,
    nats,
    cluster,
    redis,
    redisProxy,
    postgres: database.server,
    databaseUrl: database.url,
    env,
    nc,
    agent: createAgentClient(nc),
    store,
    pool,
    url: (service) => stack.services[service].url,
    token: (userId, roles = ['user'], expiresIn = '2h') =>
      signToken(FAULT_JWT_SECRET, { sub: userId, roles }, expiresIn),
    async extra(service, extraEnv = {}) {
      extras++;
      const port = await freePort();
      const more = await launchStack({
        services: [service],
        env: {
          ...env,
          ...(service === 'dispatcher' ? { DISPATCHER_ID: `extra-${extras}` } : {}),
          ...extraEnv,
        },
        serviceEnv: bus.serviceEnv,
        ports: { [service]: port },
        readyTimeoutMs: 90_000,
      });
      stacks.push(more);
      return more;
    },
    logText: (service) =>
      stacks
        .flatMap((s) => s.logs)
        .filter((l) => service === undefined || l.service === service)
        .map((l) => l.line)
        .join('\n'),
    unexpectedExits() {
      const seen = new Map<string, number>();
      const out: string[] = [];
      for (const s of stacks) {
        for (const l of s.logs) {
          if (!l.line.startsWith('[process exited')) continue;
          const n = (seen.get(l.service) ?? 0) + 1;
          seen.set(l.service, n);
          if (n > (expected.get(l.service) ?? 0)) out.push(`${l.service}: ${l.line}`);
        }
      }
      return out;
    },
    expectExit(service) {
      expected.set(service, (expected.get(service) ?? 0) + 1);
    },
  };
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Waits until `condition` holds (it may be async), polling; throws naming `what` after `timeoutMs`. */
export async function waitUntil(
  what: string,
  condition: () => boolean | Promise<boolean>,
  timeoutMs = 30_000,
  intervalMs = 100,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown = null;
  for (;;) {
    try {
      if (await condition()) return;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`,
      );
    }
    await sleep(intervalMs);
  }
}

/** GET a URL; resolves with the status (0 when nothing answered) and the text. */
export async function httpGet(
  url: string,
  headers: Record<string, string> = {},
  timeoutMs = 5_000,
): Promise<{ status: number; text: string }> {
  try {
    const res = await fetch(url, { headers, signal: AbortSignal.timeout(timeoutMs) });
    return { status: res.status, text: await res.text() };
  } catch (e) {
    return { status: 0, text: (e as Error).message };
  }
}

/** Waits until every named service of `fs` answers `/health/ready` with 200. */
export async function waitHealthy(
  fs: FaultStack,
  services: ServiceName[],
  timeoutMs = 60_000,
): Promise<void> {
  for (const s of services) {
    await waitUntil(
      `${s} to be ready`,
      async () => (await httpGet(`${fs.url(s)}/health/ready`)).status === 200,
      timeoutMs,
      250,
    );
  }
}

/** The value of one Prometheus sample (summed over label sets matching `labels`), from `/metrics`. */
export async function metric(
  baseUrl: string,
  name: string,
  labels: Record<string, string> = {},
): Promise<number> {
  const { status, text } = await httpGet(`${baseUrl}/metrics`);
  if (status !== 200) throw new Error(`metrics of ${baseUrl}: ${status}`);
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const set = m[2] ?? '';
    if (Object.entries(labels).every(([k, v]) => set.includes(`${k}="${v}"`))) sum += Number(m[3]);
  }
  return sum;
}
