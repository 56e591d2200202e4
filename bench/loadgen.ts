import { jetstream } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { Queue, QueueEvents } from 'bullmq';
import { WebSocket } from 'ws';
import {
  notificationName,
  subjects,
  userStream,
  type Notification,
  type ToolEvent,
} from '../contracts/index.ts';
import { signToken } from '../lib/auth.ts';
import { AgentClientError, createAgentClient, type AgentClient } from '../lib/clients/agent.ts';
import { createPool, type Pool } from '../lib/db.ts';
import { connectNats } from '../lib/nats.ts';
import { agentSteps } from '../lib/diagnostics.ts';
import { createPostgresEventStore } from '../lib/eventstore/postgres.ts';
import type { EventStore } from '../lib/eventstore/types.ts';
import { toEventData } from '../lib/toolEvents.ts';
import { pino } from 'pino';
import { EventRelay } from '../services/dispatcher/relay.ts';
import { encodeHistogram, newHistogram, recordMs } from './lib/histogram.ts';
import { serve } from './lib/ipc.ts';
import { stepKey, StepRecorder } from './lib/steps.ts';
import {
  runOpenLoop,
  runPhasedOpenLoop,
  type OpenLoopOptions,
  type OpenLoopResult,
  type PhasedOpenLoopOptions,
  type PhasedOpenLoopResult,
} from './lib/openloop.ts';
import { insertStep, RAW_EVENTS_DDL, RowFactory, noopExecutionEvents } from './lib/rows.ts';

/**
 * The load generator, in a process of its own (forked by bench/run.ts) so that its work never
 * shares an event loop with the system under test. It sets up one workload, then runs it open loop
 * at the rates the runner asks for, and reports each run's latencies as an encoded HDR histogram.
 */
export type Workload =
  | {
      kind: 'dispatch';
      natsUrl: string;
      jwtSecret: string;
      users: number;
      tool: string;
      /** On a NATS with Toolbus's authorization (the cluster lane): the agent identity's nkey seed. */
      nkeySeed?: string;
    }
  | { kind: 'nats-rr'; natsUrl: string; subject: string }
  | { kind: 'bullmq'; redisUrl: string; queue: string }
  | { kind: 'pg-steps'; databaseUrl: string; poolSize: number };

export type RunRequest = Omit<OpenLoopOptions, 'fire'> & { tag: string };
export type PhasedRunRequest = Omit<PhasedOpenLoopOptions, 'fire'> & { tag: string };

interface Driver {
  fire(i: number, tag: string): Promise<void>;
  /** The request's key in every process's step marks (benchmark 1b), for workloads that have one. */
  key?(i: number, tag: string): string;
  /**
   * Sends request `i` and tells how it ended, without throwing: "completed", "failed:<code>" (an
   * answer that refuses or fails it, OVERLOADED and RATE_LIMITED included) or "error:<what>" (no
   * answer: a timeout, a closed connection). Only workloads with typed answers have it.
   */
  outcome?(i: number, tag: string): Promise<string>;
  close(): Promise<void>;
}

let driver: Driver | null = null;
/** Benchmark 1b: when each request was fired and answered, and the agent client's marks. */
const steps = new StepRecorder([agentSteps]);

/** The body size of a dispatch request, so the bare request/reply carries as many bytes. */
const requestLike = (i: number) =>
  JSON.stringify({
    requestId: `bench-${i}-0000000000`,
    tool: 'noop',
    args: {},
    replyTo: '_INBOX.ABCDEFGHIJKLMNOPQRSTUV',
  });

async function setup(w: Workload): Promise<void> {
  if (driver) throw new Error('a workload is set up already');
  switch (w.kind) {
    case 'dispatch': {
      // With an identity, as an agent connects to a secured bus (its inbox named after it).
      const nc = w.nkeySeed
        ? await connectNats(w.natsUrl, 'bench-loadgen', { nkeySeed: w.nkeySeed })
        : await connect({ servers: w.natsUrl, name: 'bench-loadgen' });
      const client: AgentClient = createAgentClient(nc, { js: jetstream(nc) });
      const tokens = await Promise.all(
        Array.from({ length: w.users }, (_, k) =>
          signToken(w.jwtSecret, { sub: `bench-u${k}`, roles: ['user'] }, '2h'),
        ),
      );
      const execute = (i: number, tag: string) =>
        client.execute(
          w.tool,
          {},
          { token: tokens[i % tokens.length]!, requestId: `${tag}-${i}`, timeoutMs: 120_000 },
        );
      driver = {
        key: (i, tag) => stepKey(`bench-u${i % tokens.length}`, `${tag}-${i}`),
        async fire(i, tag) {
          const answer = await execute(i, tag);
          if (answer.status === 'failed') throw new Error(`${answer.error.code}: ${answer.error.message}`);
        },
        async outcome(i, tag) {
          try {
            const answer = await execute(i, tag);
            if (answer.status === 'failed') return `failed:${answer.error.code}`;
            return answer.status;
          } catch (e) {
            return `error:${e instanceof AgentClientError ? e.code : e instanceof Error ? e.name : 'unknown'}`;
          }
        },
        close: () => nc.drain(),
      };
      return;
    }
    case 'nats-rr': {
      const nc = await connect({ servers: w.natsUrl, name: 'bench-loadgen' });
      driver = {
        // The replier names it by the body's request id (bench/server.ts).
        key: (i) => stepKey('ref', `bench-${i}-0000000000`),
        async fire(i) {
          const m = await nc.request(w.subject, requestLike(i), { timeout: 120_000 });
          if (m.json<{ status: string }>().status !== 'completed') throw new Error(m.string());
        },
        close: () => nc.drain(),
      };
      return;
    }
    case 'bullmq': {
      const url = new URL(w.redisUrl);
      const connection = { host: url.hostname, port: Number(url.port) };
      const queue = new Queue(w.queue, { connection });
      const events = new QueueEvents(w.queue, { connection });
      events.setMaxListeners(0);
      await Promise.all([queue.waitUntilReady(), events.waitUntilReady()]);
      driver = {
        async fire(i) {
          const job = await queue.add(
            'noop',
            { tool: 'noop', args: {}, i },
            { removeOnComplete: 1000, removeOnFail: 1000 },
          );
          await job.waitUntilFinished(events, 120_000);
        },
        async close() {
          await events.close();
          await queue.close();
        },
      };
      return;
    }
    case 'pg-steps': {
      const pool: Pool = createPool(w.databaseUrl, { max: w.poolSize, application: 'bench-raw-inserts' });
      await pool.query(RAW_EVENTS_DDL);
      const rows = new RowFactory(`user-ref-inserts-${process.pid}`);
      driver = {
        async fire() {
          await insertStep(pool, rows.step(0));
          await insertStep(pool, rows.step(1));
        },
        close: () => pool.end(),
      };
      return;
    }
  }
}

/** Requests sent and not yet settled, across runs (a run stops waiting at its drain deadline). */
let inFlight = 0;

async function run(r: RunRequest): Promise<OpenLoopResult> {
  const d = driver;
  if (!d) throw new Error('no workload set up');
  return runOpenLoop({
    ...r,
    fire: (i) => {
      inFlight++;
      const key = steps.recording && d.key ? d.key(i, r.tag) : null;
      if (key) steps.mark(key, 'fired');
      return d
        .fire(i, r.tag)
        .then(() => {
          if (key) steps.mark(key, 'resolved');
        })
        .finally(() => inFlight--);
    },
  });
}

/** An open loop in phases (bench/suites/overload.ts): every request's due time, answer time and outcome. */
async function runPhases(r: PhasedRunRequest): Promise<PhasedOpenLoopResult> {
  const d = driver;
  if (!d?.outcome) throw new Error('no workload with typed answers set up');
  const outcome = d.outcome.bind(d);
  return runPhasedOpenLoop({
    ...r,
    fire: (i) => {
      inFlight++;
      return outcome(i, r.tag).finally(() => inFlight--);
    },
  });
}

/** Resolves once every request sent so far has settled (or after `timeoutMs`): the system is idle again. */
async function quiesce({ timeoutMs }: { timeoutMs: number }): Promise<{ inFlight: number }> {
  const deadline = performance.now() + timeoutMs;
  while (inFlight > 0 && performance.now() < deadline) await new Promise((res) => setTimeout(res, 50));
  return { inFlight };
}

async function teardown(): Promise<void> {
  const d = driver;
  driver = null;
  await d?.close();
}

// ---- Notifications: many WebSocket clients, and the events they should receive --------------

export interface NotifySetup {
  mode: 'notifier' | 'bare';
  /** notifier: http://host:port; bare: ws://host:port. */
  url: string;
  clients: number;
  userId: string;
  jwtSecret: string;
  natsUrl: string;
  databaseUrl: string;
  /** Events to prepare (the most a run may send). */
  events: number;
  /**
   * notifier mode: `commit` publishes each event right after its append, as the dispatcher does on
   * commit; `relay` publishes nothing and runs the dispatcher's event relay (on a store and NATS
   * connection of its own, as a relay in another dispatcher process would). Default commit.
   */
  publish?: 'commit' | 'relay';
}

export interface NotifyRun {
  rate: number;
  durationMs: number;
  warmupMs: number;
  /** How long to wait for every client to have every event. */
  drainMs: number;
}

export interface NotifyResult {
  sent: number;
  /** Receipts expected (clients x events) and received. */
  expected: number;
  received: number;
  /** Out of order or repeated receipts (should be 0). */
  disorder: number;
  /** Publish to receipt, recorded events only (µs HDR, base64). */
  histogram: string;
  /** Append (commit) latency from the due time, for reference. */
  commit: OpenLoopResult;
  connectMs: number;
}

interface NotifyState {
  setup: NotifySetup;
  sockets: WebSocket[];
  nc: NatsConnection;
  store: EventStore;
  events: ToolEvent[];
  /** The next event to append: runs continue the same stream. */
  next: number;
  connectMs: number;
  onRevision: ((client: number, revision: number, at: number) => void) | null;
  relay: { relay: EventRelay; store: EventStore; nc: NatsConnection } | null;
}

let notify: NotifyState | null = null;

const wallMs = (): number => performance.timeOrigin + performance.now();
const REVISION = Buffer.from('"revision":');

/** The top-level revision of a notification, read without parsing the whole message. */
function revisionOf(data: Buffer): number | null {
  const at = data.indexOf(REVISION);
  if (at < 0) return null;
  let n = 0;
  let i = at + REVISION.length;
  if (data[i] === 45) return null; // "-1" (a ready)
  for (; i < data.length; i++) {
    const c = data[i]!;
    if (c < 48 || c > 57) break;
    n = n * 10 + (c - 48);
  }
  return n;
}

async function notifySetup(s: NotifySetup): Promise<{ connectMs: number }> {
  if (notify) throw new Error('notification clients are set up already');
  const started = performance.now();
  const token = await signToken(s.jwtSecret, { sub: s.userId, roles: ['user'] }, '2h');
  const sockets: WebSocket[] = [];
  const state: NotifyState = {
    setup: s,
    sockets,
    nc: await connect({ servers: s.natsUrl, name: 'bench-notify-publisher' }),
    store: await createPostgresEventStore({ connectionString: s.databaseUrl, poolSize: 2 }),
    events: [],
    next: 0,
    connectMs: 0,
    onRevision: null,
    relay: null,
  };
  notify = state;
  if (s.mode === 'notifier' && s.publish === 'relay') {
    const store = await createPostgresEventStore({ connectionString: s.databaseUrl, poolSize: 2 });
    const nc = await connect({ servers: s.natsUrl, name: 'bench-notify-relay' });
    const relay = new EventRelay({
      store,
      nc,
      connectionString: s.databaseUrl,
      log: pino({ level: 'warn' }),
      name: `bench-${s.userId}`,
      // Only this user's stream: the reference's events are not the relay's to publish.
      streamPrefix: userStream(s.userId),
    });
    await relay.start();
    state.relay = { relay, store, nc };
  }
  // The user's history, chained as the dispatcher would write it.
  let prev: string | undefined;
  for (let i = 0; state.events.length < s.events; i++) {
    const execution = noopExecutionEvents(s.userId, `notify-${i}`, prev);
    state.events.push(...execution);
    prev = execution.at(-1)!.metadata.hash;
  }
  state.events.length = s.events;

  const open = (index: number) =>
    new Promise<void>((resolve, reject) => {
      const url = s.mode === 'notifier' ? `${s.url.replace(/^http/, 'ws')}/ws` : s.url;
      const ws = new WebSocket(url, { perMessageDeflate: false });
      sockets[index] = ws;
      const timer = setTimeout(() => reject(new Error(`client ${index} not ready in 60 s`)), 60_000);
      ws.on('error', (e) => {
        clearTimeout(timer);
        reject(e);
      });
      ws.on('close', (code) => {
        clearTimeout(timer);
        reject(new Error(`client ${index} closed (${code}) before it was ready`));
      });
      let ready = false;
      ws.on('message', (data: Buffer) => {
        if (!ready) {
          if (data.includes('"kind":"ready"')) {
            ready = true;
            clearTimeout(timer);
            resolve();
          }
          return;
        }
        const revision = revisionOf(data);
        if (revision !== null) state.onRevision?.(index, revision, wallMs());
      });
      ws.on('open', () => {
        if (s.mode === 'notifier') {
          ws.send(JSON.stringify({ type: 'auth', token }));
          ws.send(JSON.stringify({ type: 'subscribe', afterRevision: -1 }));
        } else {
          ready = true;
          clearTimeout(timer);
          resolve();
        }
      });
    });
  // Connect in waves, as a fleet of browsers would arrive, not all in one instant.
  for (let i = 0; i < s.clients; i += 50) {
    await Promise.all(Array.from({ length: Math.min(50, s.clients - i) }, (_, k) => open(i + k)));
  }
  state.connectMs = performance.now() - started;
  return { connectMs: state.connectMs };
}

async function notifyRun(r: NotifyRun): Promise<NotifyResult> {
  const state = notify;
  if (!state) throw new Error('no notification clients');
  const { clients, userId } = state.setup;
  const h = newHistogram();
  const publishedAt: number[] = [];
  let received = 0;
  let disorder = 0;
  const base = state.next;
  const lastSeen = new Int32Array(clients).fill(base - 1);
  const firstRecorded = base + Math.ceil((r.warmupMs / 1000) * r.rate);
  state.onRevision = (client, revision, at) => {
    if (revision < base) return;
    received++;
    if (revision !== lastSeen[client]! + 1) disorder++;
    lastSeen[client] = Math.max(lastSeen[client]!, revision);
    const t0 = publishedAt[revision];
    if (t0 !== undefined && revision >= firstRecorded) recordMs(h, at - t0);
  };
  // Appends to one stream go one after the other (expected revision), as the dispatcher's do.
  let chain: Promise<void> = Promise.resolve();
  const stream = userStream(userId);
  const subject = subjects.events(userId);
  const total = Math.floor((r.durationMs / 1000) * r.rate);
  if (base + total > state.events.length)
    throw new Error(`only ${state.events.length} events prepared, ${base + total} needed`);
  const commit = await runOpenLoop({
    rate: r.rate,
    durationMs: r.durationMs,
    warmupMs: r.warmupMs,
    drainMs: r.drainMs,
    maxOutstanding: 10_000,
    fire: (k) => {
      const i = base + k;
      const step = chain.then(async () => {
        const event = state.events[i]!;
        await state.store.append(stream, [toEventData(event)], i === 0 ? 'no_stream' : i - 1);
        const n: Notification = {
          kind: 'event',
          name: notificationName(event.type),
          userId,
          revision: i,
          event,
        };
        // From the commit: what the relay publishes, it publishes after this.
        publishedAt[i] = wallMs();
        if (state.relay) return;
        state.nc.publish(subject, JSON.stringify(n));
      });
      chain = step.catch(() => undefined);
      return step;
    },
  });
  await chain;
  state.next = base + commit.sent;
  await state.nc.flush();
  const expected = clients * commit.sent;
  const deadline = performance.now() + r.drainMs;
  while (received < expected && performance.now() < deadline) await new Promise((res) => setTimeout(res, 20));
  state.onRevision = null;
  return {
    sent: commit.sent,
    expected,
    received,
    disorder,
    histogram: encodeHistogram(h),
    commit,
    connectMs: state.connectMs,
  };
}

async function notifyTeardown(): Promise<void> {
  const state = notify;
  notify = null;
  if (!state) return;
  for (const ws of state.sockets) {
    ws.removeAllListeners();
    ws.on('error', () => undefined);
    ws.terminate();
  }
  await state.nc.drain();
  await state.store.close();
  if (state.relay) {
    await state.relay.relay.close();
    await state.relay.nc.drain();
    await state.relay.store.close();
  }
}

serve({
  setup: (w: Workload) => setup(w),
  run: (r: RunRequest) => run(r),
  runPhases: (r: PhasedRunRequest) => runPhases(r),
  quiesce: (q: { timeoutMs: number }) => quiesce(q),
  stepsStart: async () => steps.start(),
  stepsTake: async () => steps.take(),
  teardown: () => teardown(),
  notifySetup: (s: NotifySetup) => notifySetup(s),
  notifyRun: (r: NotifyRun) => notifyRun(r),
  notifyTeardown: () => notifyTeardown(),
  cpu: async () => {
    const u = process.cpuUsage();
    return { userUs: u.user, systemUs: u.system, at: performance.now() };
  },
  stop: async () => {
    await teardown().catch(() => undefined);
    await notifyTeardown().catch(() => undefined);
  },
});
