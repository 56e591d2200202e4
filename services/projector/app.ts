import type { FastifyInstance } from 'fastify';
import type pg from 'pg';
import type { Registry } from 'prom-client';
import { tokenVerifierFromConfig } from '../../lib/auth.ts';
import { createPool, migrate } from '../../lib/db.ts';
import type { EventStore } from '../../lib/eventstore/types.ts';
import { createHttpApp } from '../../lib/http.ts';
import { registerQueryApi } from './api.ts';
import { readCheckpoint } from './checkpoint.ts';
import type { ProjectorConfig } from './config.ts';
import { LagMonitor } from './lag.ts';
import { createProjectorMetrics } from './metrics.ts';
import { PROJECTION_NAME, projectorMigrations } from './migrations.ts';
import { ProjectionRunner, type RunnerOptions } from './runner.ts';
import { openEventStore } from './store.ts';

export interface StartOptions {
  /** An event store to use (the caller keeps owning it); otherwise one is opened from the config. */
  store?: EventStore;
  /** Fault injection for tests (see RunnerOptions). */
  beforeCommit?: RunnerOptions['beforeCommit'];
}

export interface Projector {
  app: FastifyInstance & { metrics: Registry };
  runner: ProjectionRunner;
  lag: LagMonitor;
  pool: pg.Pool;
  store: EventStore;
  /** http://host:port the query API listens on. */
  url: string;
  close(): Promise<void>;
}

/**
 * Runs the projector: migrations, the projection runner (active or standby), the lag gauges and the
 * query API with /health and /metrics. `close()` stops it cleanly and releases the lock.
 */
export async function startProjector(
  config: ProjectorConfig,
  options: StartOptions = {},
): Promise<Projector> {
  const pool = createPool(config.DATABASE_URL, { application: 'toolbus-projector' });
  let opened: EventStore | undefined = options.store;
  const app = createHttpApp({
    service: 'projector',
    logLevel: config.LOG_LEVEL,
    checks: {
      database: async () => void (await pool.query('select 1')),
      eventstore: async () => {
        if (!opened) throw new Error('not open');
        await opened.ping();
      },
    },
  });
  const ownStore = !options.store;
  try {
    await migrate(pool, 'projector', projectorMigrations);
    opened ??= await openEventStore(config, app.log.child({ component: 'eventstore' }));
  } catch (e) {
    await app.close();
    await pool.end();
    throw e;
  }
  const store: EventStore = opened;
  const metrics = createProjectorMetrics(app.metrics);
  const runner = new ProjectionRunner({
    pool,
    connectionString: config.DATABASE_URL,
    store,
    logger: app.log.child({ component: 'runner' }),
    metrics,
    batchSize: config.PROJECTION_BATCH_SIZE,
    batchWaitMs: config.PROJECTION_BATCH_WAIT_MS,
    lockPollMs: config.PROJECTOR_LOCK_POLL_MS,
    ...(options.beforeCommit ? { beforeCommit: options.beforeCommit } : {}),
  });
  const lag = new LagMonitor({
    db: pool,
    store,
    metrics,
    logger: app.log.child({ component: 'lag' }),
    intervalMs: config.PROJECTOR_LAG_INTERVAL_MS,
    cap: config.PROJECTOR_LAG_CAP,
  });
  await registerQueryApi(app, {
    pool,
    verifier: tokenVerifierFromConfig(config),
    status: async () => {
      const checkpoint = await readCheckpoint(pool, PROJECTION_NAME);
      return {
        projection: PROJECTION_NAME,
        instance: { state: runner.state, paused: runner.isPaused },
        checkpoint: {
          position: checkpoint.position,
          events: checkpoint.events,
          updatedAt: checkpoint.updatedAt.toISOString(),
        },
        lag: lag.last,
      };
    },
  });

  let closing: Promise<void> | null = null;
  const close = () =>
    (closing ??= (async () => {
      await app.close().catch(() => undefined);
      await lag.close();
      await runner.close();
      if (ownStore) await store.close();
      await pool.end();
    })());

  try {
    await app.listen({ host: config.HOST, port: config.PROJECTOR_PORT });
  } catch (e) {
    await close();
    throw e;
  }
  runner.start();
  lag.start();
  const address = app.server.address();
  const port = typeof address === 'object' && address ? address.port : config.PROJECTOR_PORT;
  return { app, runner, lag, pool, store, url: `http://${config.HOST}:${port}`, close };
}
