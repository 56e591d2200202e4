import { Session } from 'node:inspector/promises';
import { type AddressInfo } from 'node:net';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { Worker } from 'bullmq';
import { WebSocket, WebSocketServer } from 'ws';
import { loadConfig } from '../lib/config.ts';
import { dispatcherSteps } from '../lib/diagnostics.ts';
import { createPool } from '../lib/db.ts';
import { serve } from './lib/ipc.ts';
import { summarise, type ProfileSummary } from './lib/profile.ts';
import { insertStep, RAW_EVENTS_DDL, RowFactory } from './lib/rows.ts';
import { stepKey, StepRecorder } from './lib/steps.ts';

/**
 * One process under test, forked by bench/run.ts: a Toolbus service (dispatcher, projector,
 * notifier: started through its own start function, configured from `env` exactly as its main.ts
 * would be) or a reference server (a bare NATS replier, the same replier with PostgreSQL commits,
 * a BullMQ worker, a bare `ws` broadcaster). Calls: `start`, `cpu` (process.cpuUsage), `stop`,
 * `stepsStart` / `stepsTake` (benchmark 1b: the marks of each request this process handled) and
 * `profileStart` / `profileTake` (benchmark 2: a V8 sampling profile of this process's main
 * thread, summarised here so that only the top entries cross the channel).
 */
type Role =
  'dispatcher' | 'projector' | 'notifier' | 'replier' | 'replier-pg' | 'bullmq-worker' | 'ws-broadcast';

export interface StartRequest {
  role: Role;
  /** Environment of a Toolbus service (its main.ts reads the same variables). */
  env?: Record<string, string>;
  natsUrl?: string;
  databaseUrl?: string;
  redisUrl?: string;
  /** replier: the subject to answer on. ws-broadcast: the NATS subject to forward. */
  subject?: string;
  /** replier-pg: connections (as many as the dispatcher's event store pool). */
  poolSize?: number;
  /** bullmq-worker: queue name and concurrency. */
  queue?: string;
  concurrency?: number;
}

export interface Started {
  pid: number;
  /** notifier / ws-broadcast: where to connect. */
  url?: string;
}

export interface CpuSample {
  userUs: number;
  systemUs: number;
  /** performance.now() of the sample (ms). */
  at: number;
}

let closeRole: (() => Promise<void>) | null = null;
/** The inspector session of a profile being taken. */
let profiler: Session | null = null;
/** Sampling interval of the profile (µs): V8's default is 1,000. */
const PROFILE_INTERVAL_US = 500;
/** The dispatcher's marks come through its diagnostics channel; the replier marks its own. */
const steps = new StepRecorder([dispatcherSteps]);

async function start(r: StartRequest): Promise<Started> {
  const env = { ...process.env, ...(r.env ?? {}) } as Record<string, string | undefined>;
  switch (r.role) {
    // Each service is imported only by the process that runs it: one that does not load (being
    // edited, say) fails its own benchmarks, not the others.
    case 'dispatcher': {
      const { startDispatcher } = await import('../services/dispatcher/app.ts');
      const { DispatcherEnv } = await import('../services/dispatcher/config.ts');
      const d = await startDispatcher(loadConfig(DispatcherEnv, env), { listen: false });
      closeRole = () => d.close();
      return { pid: process.pid };
    }
    case 'projector': {
      const { startProjector } = await import('../services/projector/app.ts');
      const { ProjectorEnv } = await import('../services/projector/config.ts');
      const p = await startProjector(loadConfig(ProjectorEnv, env));
      closeRole = () => p.close();
      return { pid: process.pid, url: p.url };
    }
    case 'notifier': {
      const { startNotifier } = await import('../services/notifier/app.ts');
      const { NotifierEnv } = await import('../services/notifier/config.ts');
      const n = await startNotifier(loadConfig(NotifierEnv, env));
      closeRole = () => n.close();
      return { pid: process.pid, url: n.address };
    }
    case 'replier':
    case 'replier-pg': {
      const nc = await connect({ servers: r.natsUrl!, name: `bench-${r.role}` });
      const pool =
        r.role === 'replier-pg'
          ? createPool(r.databaseUrl!, { max: r.poolSize ?? 10, application: 'bench-replier' })
          : null;
      if (pool) await pool.query(RAW_EVENTS_DDL);
      const rows = new RowFactory(`user-ref-replier-${process.pid}`);
      const reply = new TextEncoder().encode(JSON.stringify({ status: 'completed', result: {} }));
      nc.subscribe(r.subject!, {
        callback: (err, m) => {
          if (err) return;
          if (!pool) {
            m.respond(reply);
            return;
          }
          // Marked as the dispatcher marks its steps (the request id of the body names it).
          const key = steps.recording ? stepKey('ref', m.json<{ requestId: string }>().requestId) : '';
          steps.mark(key, 'received');
          // The dispatcher's two commits: Requested + Executing, then Completed.
          insertStep(pool, rows.step(0))
            .then(() => {
              steps.mark(key, 'recorded');
              return insertStep(pool, rows.step(1));
            })
            .then(
              () => {
                steps.mark(key, 'completed');
                m.respond(reply);
                steps.mark(key, 'answered');
              },
              (e: unknown) => m.respond(JSON.stringify({ status: 'failed', error: String(e) })),
            );
        },
      });
      await nc.flush();
      closeRole = async () => {
        await nc.drain();
        await pool?.end();
      };
      return { pid: process.pid };
    }
    case 'bullmq-worker': {
      const url = new URL(r.redisUrl!);
      const worker = new Worker(r.queue!, async () => ({}), {
        connection: { host: url.hostname, port: Number(url.port) },
        concurrency: r.concurrency ?? 64,
      });
      await worker.waitUntilReady();
      closeRole = () => worker.close();
      return { pid: process.pid };
    }
    case 'ws-broadcast': {
      const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
      await new Promise<void>((resolve) => wss.once('listening', () => resolve()));
      const nc: NatsConnection = await connect({ servers: r.natsUrl!, name: 'bench-ws-broadcast' });
      // The `ws` README's broadcast: the received bytes, as a text frame, to every open client.
      nc.subscribe(r.subject!, {
        callback: (err, m) => {
          if (err) return;
          for (const client of wss.clients) {
            if (client.readyState === WebSocket.OPEN) client.send(m.data, { binary: false });
          }
        },
      });
      await nc.flush();
      const port = (wss.address() as AddressInfo).port;
      closeRole = async () => {
        for (const c of wss.clients) c.terminate();
        await new Promise<void>((resolve) => wss.close(() => resolve()));
        await nc.drain();
      };
      return { pid: process.pid, url: `ws://127.0.0.1:${port}` };
    }
  }
}

serve({
  start: (r: StartRequest) => start(r),
  cpu: async (): Promise<CpuSample> => {
    const u = process.cpuUsage();
    return { userUs: u.user, systemUs: u.system, at: performance.now() };
  },
  stepsStart: async () => steps.start(),
  stepsTake: async () => steps.take(),
  profileStart: async () => {
    if (profiler) throw new Error('a profile is already being taken');
    const session = new Session();
    session.connect();
    await session.post('Profiler.enable');
    await session.post('Profiler.setSamplingInterval', { interval: PROFILE_INTERVAL_US });
    await session.post('Profiler.start');
    profiler = session;
  },
  profileTake: async ({ top }: { top: number }): Promise<ProfileSummary> => {
    const session = profiler;
    if (!session) throw new Error('no profile is being taken');
    profiler = null;
    try {
      const { profile } = await session.post('Profiler.stop');
      return summarise(profile, top);
    } finally {
      session.disconnect();
    }
  },
  stop: async () => {
    const close = closeRole;
    closeRole = null;
    await close?.();
  },
});
