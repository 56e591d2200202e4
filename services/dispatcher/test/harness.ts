import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { subjects, type Notification, type ToolEvent } from '../../../contracts/index.ts';
import { signToken } from '../../../lib/auth.ts';
import { createAgentClient, type AgentClient } from '../../../lib/clients/agent.ts';
import { loadConfig } from '../../../lib/config.ts';
import { createPostgresEventStore } from '../../../lib/eventstore/postgres.ts';
import type { EventStore } from '../../../lib/eventstore/types.ts';
import { connectNats, inboxFor, type NatsConnection } from '../../../lib/nats.ts';
import { createTestDatabase } from '../../../test/support/postgres.ts';
import { startNats, startRedis, type OwnedServer } from '../../../test/support/processes.ts';
import { readUserEvents } from '../../../test/support/events.ts';
import { startDispatcher, type RunningDispatcher, type StartOptions } from '../app.ts';
import { DispatcherEnv, type DispatcherConfig } from '../config.ts';

type T = { teardown(fn: () => Promise<void> | void): void };

/** Log lines written by the dispatcher (as JSON text), to check what reaches the logs. */
export class LogCapture extends Writable {
  readonly lines: string[] = [];
  override _write(chunk: Buffer, _enc: string, done: () => void): void {
    this.lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
    done();
  }
  get text(): string {
    return this.lines.join('\n');
  }
}

export interface Harness {
  nats: OwnedServer;
  redis: OwnedServer;
  databaseUrl: string;
  env: Record<string, string>;
  config: DispatcherConfig;
  store: EventStore;
  nc: NatsConnection;
  agent: AgentClient;
  logs: LogCapture;
  /** Every event notification published on NATS, in arrival order. */
  published: Notification[];
  dispatchers: RunningDispatcher[];
  start(overrides?: Record<string, string>, options?: StartOptions): Promise<RunningDispatcher>;
  token(sub: string, roles?: string[], expiresIn?: string | number): Promise<string>;
  events(userId: string): Promise<ToolEvent[]>;
}

/**
 * A test-owned NATS and Redis, a fresh database, a store on it, and dispatchers started on them
 * (`start`). Everything is closed at teardown, dispatchers first.
 */
export async function harness(t: T, env: Record<string, string> = {}): Promise<Harness> {
  const [nats, redis, db] = await Promise.all([startNats(), startRedis(), createTestDatabase()]);
  const store = await createPostgresEventStore({ connectionString: db.url });
  const nc = await connectNats(nats.url, 'dispatcher-test');
  const logs = new LogCapture();
  // Each event once, as a notifier takes them: it is published on commit and again by the relay
  // (DISPATCHER_EVENT_PUBLISH=both), and the second copy is a hint the notifier drops.
  const published: Notification[] = [];
  const seen = new Set<string>();
  nc.subscribe(subjects.eventsAll, {
    callback: (err, msg) => {
      if (err) return;
      const n = msg.json<Notification>();
      if (n.kind === 'event') {
        const key = `${n.userId}:${n.revision}`;
        if (seen.has(key)) return;
        seen.add(key);
      }
      published.push(n);
    },
  });
  const baseEnv: Record<string, string> = {
    NODE_ENV: 'test',
    LOG_LEVEL: 'info',
    NATS_URL: nats.url,
    REDIS_URL: redis.url,
    DATABASE_URL: db.url,
    // Random keys per run: no key has a default.
    JWT_SECRET: randomBytes(32).toString('hex'),
    WORKER_SECRET: randomBytes(32).toString('hex'),
    TOOLBUS_TEST_TOOLS: '1',
    DISPATCHER_PORT: '0',
    ACK_WAIT_MS: '5000',
    SHUTDOWN_GRACE_MS: '3000',
    ...env,
  };
  const dispatchers: RunningDispatcher[] = [];
  let n = 0;
  const h: Harness = {
    nats,
    redis,
    databaseUrl: db.url,
    env: baseEnv,
    config: loadConfig(DispatcherEnv, baseEnv),
    store,
    nc,
    agent: createAgentClient(nc),
    logs,
    published,
    dispatchers,
    async start(overrides = {}, options = {}) {
      const config = loadConfig(DispatcherEnv, { DISPATCHER_ID: `test-d${++n}`, ...baseEnv, ...overrides });
      const d = await startDispatcher(config, {
        store,
        log: pino({ level: config.LOG_LEVEL }, logs),
        listen: false,
        pullExpiresMs: 1_000,
        ...options,
      });
      dispatchers.push(d);
      return d;
    },
    token: (sub, roles = ['user'], expiresIn = '1h') =>
      signToken(baseEnv['JWT_SECRET']!, { sub, roles }, expiresIn),
    async events(userId) {
      return (await readUserEvents(store, userId)).map((e) => e.event);
    },
  };
  t.teardown(async () => {
    await Promise.all(dispatchers.map((d) => d.close().catch(() => undefined)));
    await nc.close().catch(() => undefined);
    await store.close().catch(() => undefined);
    await Promise.all([nats.stop(), redis.stop(), db.drop()].map((p) => p.catch(() => undefined)));
  });
  return h;
}

/** Polls `check` until it returns a truthy value (generous timeout, for a shared machine). */
type Falsy = false | null | undefined | 0 | '';
export async function eventually<T>(
  check: () => T | Falsy | Promise<T | Falsy>,
  timeoutMs = 20_000,
  what = 'condition',
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

export interface RawRequest {
  /** `subjects.request(user, connectionIdentity(h.nc))`, or any other subject. */
  subject: string;
  /** An object gets `replyTo` (a fresh inbox) added unless it has one; text and bytes go as they are. */
  body: Record<string, unknown> | string | Uint8Array;
  token?: string | undefined;
  msgId?: string | undefined;
  /** How long to wait for the terminal answer; null is returned when none came. */
  waitMs?: number;
  replyTo?: string;
}

/** Publishes a request into the intake by hand (JetStream), as an agent without the client would. */
export async function rawRequest(h: Harness, r: RawRequest): Promise<AgentAnswerLike | null> {
  const { jetstream } = await import('@nats-io/jetstream');
  const { headers } = await import('@nats-io/transport-node');
  const inbox = r.replyTo ?? inboxFor(h.nc);
  const sub = h.nc.subscribe(inbox);
  const data =
    typeof r.body === 'string' || r.body instanceof Uint8Array
      ? r.body
      : JSON.stringify('replyTo' in r.body ? r.body : { ...r.body, replyTo: inbox });
  const hdrs = headers();
  if (r.token !== undefined) hdrs.set('Authorization', `Bearer ${r.token}`);
  await jetstream(h.nc).publish(r.subject, data, { headers: hdrs, ...(r.msgId ? { msgID: r.msgId } : {}) });
  const timer = setTimeout(() => sub.unsubscribe(), r.waitMs ?? 15_000);
  try {
    for await (const m of sub) {
      const a = m.json<AgentAnswerLike>();
      if (a.status === 'completed' || a.status === 'failed') return a;
    }
    return null;
  } finally {
    clearTimeout(timer);
    sub.unsubscribe();
  }
}

export type AgentAnswerLike = {
  status: string;
  requestId: string | null;
  executionId: string | null;
  correlationId: string | null;
  result?: unknown;
  cached?: boolean;
  error?: { code: string; message: string; details?: Record<string, unknown> };
};
