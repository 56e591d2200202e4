import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import type { FastifyInstance } from 'fastify';
import type { Registry } from 'prom-client';
import { tokenVerifierFromConfig } from '../../lib/auth.ts';
import { createEventStore, type EventStore } from '../../lib/eventstore/index.ts';
import { createHttpApp } from '../../lib/http.ts';
import { createLogger, type Logger } from '../../lib/log.ts';
import { connectNats, natsCredentialsFromConfig, natsReady, type NatsConnection } from '../../lib/nats.ts';
import { createRedis, type Redis } from '../../lib/redis.ts';
import { acceptAnnouncements, ToolRegistry, type ToolDefinition } from '../../lib/tools/index.ts';
import { CancelCoordinator, serveCancels, wakeRunner } from './cancel.ts';
import { registerApprovalRoutes } from './approvalRoutes.ts';
import { ApprovalWaits } from './approvals.ts';
import { destructiveDefaultOf, type DispatcherConfig } from './config.ts';
import { startExpirySweep, type ExpirySweep } from './expiry.ts';
import { Dispatcher } from './dispatcher.ts';
import { Guard, REDIS_OUTAGE_LOG_INTERVAL_MS, RedisOutageLog } from './guard.ts';
import { retry } from '../../lib/retry.ts';
import { defaultUserSlots, ensureIntake, isJetStreamForming, startIntake, type Intake } from './intake.ts';
import { serveLiveness } from './liveness.ts';
import { serveAnswers } from './lookup.ts';
import { createMetrics } from './metrics.ts';
import { registerRoutes } from './routes.ts';
import { EventRelay, publishesOnCommit, RELAY_SETTLE_MS, runsRelay } from './relay.ts';
import { UserStreams } from './streams.ts';
import { exampleTools } from './tools/index.ts';
import { testTools } from './tools/testing.ts';

export interface StartOptions {
  /** An event store the caller owns (not closed by close()); default: the configured one. */
  store?: EventStore;
  log?: Logger;
  /** The clock of `occurredAt`. */
  now?: () => Date;
  /** More in-process tools (tests). */
  tools?: ToolDefinition[];
  /** Listen on DISPATCHER_PORT (default true); tests may use `app.inject` only. */
  listen?: boolean;
  /** Stream-level and timing knobs for tests. */
  pullExpiresMs?: number;
  progressIntervalMs?: number;
  /** At most one line per this while Redis stays down (default `REDIS_OUTAGE_LOG_INTERVAL_MS`). */
  redisLogIntervalMs?: number;
}

export interface RunningDispatcher {
  app: FastifyInstance & { metrics: Registry };
  dispatcher: Dispatcher;
  /** Cancels executions wherever they run (what the NATS and HTTP cancel requests use). */
  cancels: CancelCoordinator;
  registry: ToolRegistry;
  store: EventStore;
  nc: NatsConnection;
  redis: Redis;
  dispatcherId: string;
  /** The HTTP address when listening. */
  url: string | null;
  /** Requests this instance is handling now. */
  readonly active: number;
  /** Requests pulled by this instance and waiting for a slot. */
  readonly queued: number;
  /** The event relay of this instance (null when DISPATCHER_EVENT_PUBLISH=commit); one is active at a time. */
  relay: EventRelay | null;
  /** Whether the intake pulls requests (what `/health/ready` reports as `intake`), and its changes. */
  readonly intake: Pick<Intake, 'state' | 'watch'>;
  close(): Promise<void>;
}

/**
 * Starts one dispatcher instance: connects NATS, the event store and Redis, makes sure the
 * JetStream intake exists, registers the tools (and accepts workers' announcements), serves HTTP
 * and starts pulling requests. Any number of instances share the intake.
 */
export async function startDispatcher(
  config: DispatcherConfig,
  options: StartOptions = {},
): Promise<RunningDispatcher> {
  if (config.TOOLBUS_TEST_TOOLS && config.NODE_ENV === 'production') {
    // DispatcherEnv refuses it too; this catches a configuration made without it.
    throw new Error('TOOLBUS_TEST_TOOLS is a test hook: refused when NODE_ENV=production');
  }
  const dispatcherId = config.DISPATCHER_ID;
  const log = (options.log ?? createLogger('dispatcher', config.LOG_LEVEL)).child({
    dispatcher: dispatcherId,
  });
  const cleanup: Array<() => Promise<unknown>> = [];
  const undo = async () => {
    for (const fn of cleanup.reverse()) await fn().catch(() => undefined);
  };
  try {
    const store =
      options.store ??
      (await createEventStore(config, {
        application: 'toolbus-dispatcher',
        onError: (e) => log.warn({ err: e }, 'event store connection trouble'),
      }));
    if (!options.store) cleanup.push(() => store.close());

    const nc = await connectNats(
      config.NATS_URL,
      `dispatcher-${dispatcherId}`,
      natsCredentialsFromConfig(config),
    );
    cleanup.push(() => (nc.isClosed() ? Promise.resolve() : nc.drain().catch(() => nc.close())));
    const jsm = await jetstreamManager(nc);
    const intakeOptions = {
      ackWaitMs: config.ACK_WAIT_MS,
      maxAckPending: config.MAX_ACK_PENDING,
      maxMessages: config.INTAKE_MAX_MESSAGES,
      maxPerAgent: config.INTAKE_MAX_PER_AGENT,
      maxBytes: config.INTAKE_MAX_BYTES,
      replicas: config.NATS_STREAM_REPLICAS,
      log,
    };
    // A cluster whose nodes are still joining answers "no suitable peers" or nothing at all for a
    // few seconds: wait for it rather than stop (npm run start:cluster starts every node at once).
    await retry(() => ensureIntake(jsm, intakeOptions), {
      retries: 30,
      minMs: 250,
      maxMs: 4_000,
      retryable: isJetStreamForming,
      onRetry: (e, attempt, waitMs) =>
        log.warn({ err: e, attempt, waitMs }, 'JetStream is not ready for the intake yet; trying again'),
    });
    const js = jetstream(nc);

    const redis = createRedis(config.REDIS_URL);
    cleanup.push(() => redis.quit().catch(() => redis.disconnect()));

    // The intake starts last (once everything it feeds is ready); readiness and the coordinator reach it then.
    const intakeRef: { current?: Intake } = {};

    const registry = new ToolRegistry();
    for (const tool of [
      ...exampleTools,
      ...(config.TOOLBUS_TEST_TOOLS ? testTools : []),
      ...(options.tools ?? []),
    ]) {
      registry.register(tool);
    }
    const announcements = await acceptAnnouncements(nc, registry, { secret: config.WORKER_SECRET, log });
    cleanup.push(() => announcements.stop());

    const app = createHttpApp({
      service: 'dispatcher',
      logLevel: config.LOG_LEVEL,
      fastify: {
        logger: undefined,
        loggerInstance: log.child({ component: 'http' }),
        // A path may name an execution by its request id: up to 128 characters, more once encoded.
        // (Under routerOptions: the top-level option warns FSTDEP022 at every start.)
        routerOptions: { maxParamLength: 400 },
      },
      checks: {
        nats: () => natsReady(nc),
        eventstore: () => store.ping(),
        redis: async () => {
          await redis.ping();
        },
        // Not ready while requests are not pulled (before the intake starts, or while it heals).
        intake: async () => {
          const state = intakeRef.current?.state;
          if (!state) throw new Error('not started');
          if (!state.consuming) throw new Error(state.reason);
        },
      },
    });
    cleanup.push(() => app.close());
    const metrics = createMetrics(app.metrics);
    const verifier = tokenVerifierFromConfig(config);
    const now = options.now ?? (() => new Date());
    const streams = new UserStreams({
      store,
      nc,
      log,
      now,
      onConflict: () => metrics.conflicts.inc(),
      publishOnCommit: publishesOnCommit(config.DISPATCHER_EVENT_PUBLISH),
    });
    // One relay among the dispatchers publishes every committed event (relay.ts); the others stand by.
    let relay: EventRelay | null = null;
    if (runsRelay(config.DISPATCHER_EVENT_PUBLISH)) {
      const r = new EventRelay({
        store,
        nc,
        connectionString: config.DATABASE_URL,
        log: log.child({ component: 'relay' }),
        lockPollMs: config.DISPATCHER_RELAY_LOCK_POLL_MS,
        settleMs: publishesOnCommit(config.DISPATCHER_EVENT_PUBLISH) ? RELAY_SETTLE_MS : 0,
        onPublished: () => metrics.relayed.inc(),
      });
      await r.start();
      // Before NATS and the store close: the relay writes its last checkpoint on the way out.
      cleanup.push(() => r.close());
      relay = r;
    }
    // One line per outage of Redis and per interval, not one per failed call (guard.ts).
    const outage = new RedisOutageLog(log, options.redisLogIntervalMs ?? REDIS_OUTAGE_LOG_INTERVAL_MS);
    const guard = new Guard(
      redis,
      {
        ratePerSec: config.RATE_LIMIT_PER_SEC,
        burst: config.RATE_LIMIT_BURST,
        userConcurrency: config.USER_CONCURRENCY,
        cacheTtlSec: config.CACHE_TTL_SEC,
        answerTtlSec: config.IDEMPOTENCY_TTL_SEC,
        slotLeaseMs: config.SLOT_LEASE_MS,
      },
      {
        failed: (op, e) => {
          metrics.redisErrors.inc({ op });
          outage.failed(op, e);
        },
        succeeded: () => outage.succeeded(),
        lostSlots: (count) => {
          metrics.lostSlots.inc(count);
          log.warn(
            { count },
            'concurrency slots lost in Redis with their users at the limit: those calls run uncounted',
          );
        },
      },
    );
    cleanup.push(async () => guard.close());
    // Approvals waiting, listed in PostgreSQL (approvals.ts); the deadlines are enforced from it.
    const waits = await ApprovalWaits.open(config.DATABASE_URL);
    cleanup.push(() => waits.close());
    const approvals = {
      waits,
      destructive: destructiveDefaultOf(config),
      recheckMs: config.APPROVAL_RECHECK_MS,
      recheckMaxMs: Math.max(config.APPROVAL_RECHECK_MS, config.APPROVAL_RECHECK_MAX_MS),
      maxWaitsPerUser: config.APPROVAL_MAX_WAITS_PER_USER,
    };
    const dispatcher = new Dispatcher({
      approvals,
      dispatcherId,
      nc,
      registry,
      verifier,
      guard,
      streams,
      metrics,
      log,
      maxFailures: config.DISPATCHER_MAX_FAILURES,
      maxQueueWaitMs: config.INTAKE_MAX_WAIT_MS,
      ackWaitMs: config.ACK_WAIT_MS,
      ...(options.progressIntervalMs !== undefined ? { progressIntervalMs: options.progressIntervalMs } : {}),
      wakeRunner: (executionId) => wakeRunner(nc, log, executionId),
    });
    const liveness = serveLiveness(nc, dispatcherId, dispatcher.isRunning);
    cleanup.push(async () => liveness.stop());
    const answers = serveAnswers({
      nc,
      verifier,
      lookup: (u, r, asked) => dispatcher.lookup(u, r, asked),
      known: (u, r, asked) => dispatcher.lookupKnown(u, r, asked),
      log,
      limits: {
        maxInFlight: config.DISPATCHER_MAX_LOOKUPS,
        maxWaiting: config.DISPATCHER_LOOKUP_QUEUE,
        deadlineMs: config.DISPATCHER_LOOKUP_DEADLINE_MS,
      },
      metrics,
    });
    cleanup.push(() => answers.stop());
    const cancels = new CancelCoordinator({
      dispatcherId,
      nc,
      dispatcher,
      intake: () => intakeRef.current,
      streams,
      guard,
      log,
      metrics,
      waitMs: config.CANCEL_WAIT_MS,
      onWaitEnded: (executionId) =>
        void waits
          .settle(executionId)
          .catch((e: unknown) =>
            log.warn({ err: e, executionId }, 'approval wait not settled; its request will'),
          ),
    });
    const cancelService = serveCancels(nc, { verifier, coordinator: cancels, dispatcher, log });
    cleanup.push(() => cancelService.stop());
    // In a scope of their own: their error handler (POST /executions answers unreadable bodies as
    // agent answers) replaces the shared one there only, and Fastify does not warn of an override.
    await app.register(async (scope) =>
      registerRoutes(scope, {
        nc,
        js,
        registry,
        verifier,
        streams,
        cancels,
        waitMs: config.HTTP_WAIT_MS,
        destructive: approvals.destructive,
        projectorUrl: config.DISPATCHER_PROJECTOR_URL,
      }),
    );
    registerApprovalRoutes(app, { verifier, streams, waits, now, metrics });
    const expiry: ExpirySweep = startExpirySweep({
      waits,
      streams,
      log: log.child({ component: 'approvals' }),
      everyMs: config.APPROVAL_SWEEP_MS,
      metrics,
      now,
    });
    cleanup.push(() => expiry.stop());

    let url: string | null = null;
    if (options.listen !== false) {
      url = await app.listen({ port: config.DISPATCHER_PORT, host: config.HOST });
    } else {
      await app.ready();
    }

    const running = startIntake({
      js,
      concurrency: config.DISPATCH_CONCURRENCY,
      ackWaitMs: config.ACK_WAIT_MS,
      handle: (d) => dispatcher.handle(d),
      log,
      // Someone with JetStream API rights may delete the stream or the consumer: make them again.
      repair: () => ensureIntake(jsm, intakeOptions),
      ...(config.USER_DISPATCH_SLOTS !== undefined ? { userSlots: config.USER_DISPATCH_SLOTS } : {}),
      bufferMessages: config.INTAKE_BUFFER,
      bufferBytes: config.INTAKE_BUFFER_BYTES,
      pullBatch: config.INTAKE_PULL_BATCH,
      metrics: { queued: metrics.intakeQueued, wait: metrics.intakeWait },
      ...(options.pullExpiresMs !== undefined ? { pullExpiresMs: options.pullExpiresMs } : {}),
    });
    intakeRef.current = running;
    log.info(
      {
        url,
        tools: registry.list().map((m) => `${m.name}@${m.version}`),
        concurrency: config.DISPATCH_CONCURRENCY,
        userSlots: config.USER_DISPATCH_SLOTS ?? defaultUserSlots(config.DISPATCH_CONCURRENCY),
        store: store.kind,
      },
      'dispatcher ready',
    );

    let closing: Promise<void> | null = null;
    return {
      app,
      dispatcher,
      cancels,
      registry,
      store,
      nc,
      redis,
      dispatcherId,
      url,
      relay,
      get active() {
        return running.active;
      },
      get queued() {
        return running.queued;
      },
      intake: running,
      close() {
        closing ??= (async () => {
          log.info({ active: running.active, queued: running.queued }, 'dispatcher stopping');
          await running.stop(config.SHUTDOWN_GRACE_MS);
          dispatcher.shutdown();
          if (!nc.isClosed()) await nc.flush().catch(() => undefined);
          await undo();
          log.info('dispatcher stopped');
        })();
        return closing;
      },
    };
  } catch (e) {
    await undo();
    throw e;
  }
}
