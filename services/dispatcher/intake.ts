import {
  AckPolicy,
  DeliverPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  RetentionPolicy,
  StorageType,
  type ConsumerMessages,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
} from '@nats-io/jetstream';
import { nanos } from '@nats-io/transport-node';
import type { Gauge, Histogram } from 'prom-client';
import { jetstream as names, parseRequestSubject, subjects } from '../../contracts/index.ts';
import type { Logger } from '../../lib/log.ts';
import { errorInfo, type CancelOrder, type Delivery, type Disposition } from './dispatcher.ts';
import { FairQueue } from './fairQueue.ts';

/** How long JetStream remembers a `Nats-Msg-Id` to drop a repeat of the same request. */
export const DUPLICATE_WINDOW_MS = 2 * 60_000;

const isApiError = (e: unknown, code: number): boolean => e instanceof JetStreamApiError && e.code === code;

/**
 * The intake: a file-backed work-queue stream of tool requests on `toolbus.requests.>`,
 * deduplicated by `Nats-Msg-Id` over two minutes, and one durable pull consumer that every
 * dispatcher instance shares (explicit ack). Created when missing; brought in line when an
 * instance starts with other limits. Safe to call from several instances at once.
 */
export async function ensureIntake(
  jsm: JetStreamManager,
  options: { ackWaitMs: number; maxAckPending: number; log: Logger },
): Promise<void> {
  const stream = {
    name: names.requestsStream,
    subjects: [subjects.requestsAll],
    storage: StorageType.File,
    retention: RetentionPolicy.Workqueue,
    duplicate_window: nanos(DUPLICATE_WINDOW_MS),
  };
  try {
    const info = await jsm.streams.info(names.requestsStream);
    if (
      info.config.duplicate_window !== stream.duplicate_window ||
      !info.config.subjects?.includes(subjects.requestsAll)
    ) {
      await jsm.streams.update(names.requestsStream, {
        subjects: stream.subjects,
        duplicate_window: stream.duplicate_window,
      });
      options.log.info({ stream: names.requestsStream }, 'intake stream updated');
    }
  } catch (e) {
    if (!isApiError(e, JetStreamApiCodes.StreamNotFound)) throw e;
    await jsm.streams.add(stream);
    options.log.info({ stream: names.requestsStream }, 'intake stream created');
  }

  const consumer = {
    durable_name: names.dispatcherConsumer,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    ack_wait: nanos(options.ackWaitMs),
    max_ack_pending: options.maxAckPending,
    filter_subject: subjects.requestsAll,
  };
  try {
    const info = await jsm.consumers.info(names.requestsStream, names.dispatcherConsumer);
    if (
      info.config.ack_wait !== consumer.ack_wait ||
      info.config.max_ack_pending !== consumer.max_ack_pending
    ) {
      await jsm.consumers.update(names.requestsStream, names.dispatcherConsumer, {
        ack_wait: consumer.ack_wait,
        max_ack_pending: consumer.max_ack_pending,
      });
      options.log.info(
        { consumer: names.dispatcherConsumer, ackWaitMs: options.ackWaitMs },
        'intake consumer updated',
      );
    }
  } catch (e) {
    if (!isApiError(e, JetStreamApiCodes.ConsumerNotFound)) throw e;
    await jsm.consumers.add(names.requestsStream, consumer);
    options.log.info({ consumer: names.dispatcherConsumer }, 'intake consumer created');
  }
}

export interface IntakeMetrics {
  /** Requests pulled and waiting here for a slot. */
  queued: Gauge;
  /** From being pulled to being started. */
  wait: Histogram;
}

export interface IntakeOptions {
  js: JetStreamClient;
  /** Requests handled at once by this instance. */
  concurrency: number;
  ackWaitMs: number;
  handle: (delivery: Delivery) => Promise<Disposition>;
  log: Logger;
  /** How long one pull waits for requests before the next (default 5 s). */
  pullExpiresMs?: number;
  /** Slots of this instance one user may hold at once (default: see `defaultUserSlots`). */
  userSlots?: number;
  /**
   * Requests pulled ahead and waiting here, at most: a count, and their bytes (default 4096, 64 MiB;
   * the byte limit is checked before each pull, so one look-ahead pull may pass it by up to
   * `pullBatch` requests).
   */
  bufferMessages?: number;
  bufferBytes?: number;
  /** Largest pull when looking past requests that must wait (default 256). */
  pullBatch?: number;
  metrics?: IntakeMetrics;
}

export interface Intake {
  /** Requests started and not finished. */
  readonly active: number;
  /** Requests pulled and waiting for a slot. */
  readonly queued: number;
  /**
   * A request waiting here, of user `userKey` (the user token of its subject), that `match`
   * picks: it starts at once (outside the slot count) carrying `cancel`, so the dispatcher records
   * it cancelled instead of running it. False when no such request waits here.
   */
  cancelQueued(userKey: string, match: (d: Delivery) => boolean, cancel: CancelOrder): boolean;
  /** Stops pulling, hands back what waits, waits up to `graceMs` for running requests; the rest come back to another instance. */
  stop(graceMs: number): Promise<void>;
}

/** One user may hold all but an eighth of an instance's slots (at least one slot for them). */
export const defaultUserSlots = (concurrency: number): number =>
  Math.max(1, concurrency - Math.ceil(concurrency / 8));

interface Waiting {
  m: JsMsg;
  user: string;
  delivery: Delivery;
  bytes: number;
  pulledAt: number;
}

const toDelivery = (m: JsMsg): Delivery => ({
  subject: m.subject,
  data: m.data,
  header: (name) => m.headers?.get(name) || undefined,
  id: `${m.info.streamSequence}-${m.info.deliveryCount}`,
  redelivered: m.redelivered,
});

/**
 * Pulls requests from the shared consumer and starts them fairly between users.
 *
 * Normally it pulls exactly its free slots, as before: nothing waits in this process. Requests of
 * a user who already holds `userSlots` slots wait here, in a per-user queue (`FairQueue`). When
 * slots are free (or about to be) but everything waiting belongs to users at their slots, and
 * JetStream says more requests are behind (`info.pending`), it looks ahead: it pulls growing
 * batches (up to `pullBatch`) past that backlog, up to `bufferMessages` / `bufferBytes`, so that
 * another user's request behind a flood is reached and started at once. Waiting requests get a
 * `working()` every third of the ack wait, so JetStream does not hand them to another instance;
 * on stop they are handed back at once (nak). See docs/progress-cancellation-fairness.md.
 */
export function startIntake(o: IntakeOptions): Intake {
  const userSlots = o.userSlots ?? defaultUserSlots(o.concurrency);
  const bufferMessages = o.bufferMessages ?? 4096;
  const bufferBytes = o.bufferBytes ?? 64 * 1024 * 1024;
  const pullBatch = o.pullBatch ?? 256;
  const expires = o.pullExpiresMs ?? 5_000;
  const queue = new FairQueue<Waiting>(userSlots);
  let active = 0;
  let queuedBytes = 0;
  let stopped = false;
  /** Requests not yet delivered to anyone, as the last delivered message said. */
  let behind = 0;
  /** The current look-ahead pull size; 0 when not looking ahead. */
  let lookahead = 0;
  let current: ConsumerMessages | null = null;
  let wake: (() => void) | null = null;
  const tasks = new Set<Promise<void>>();
  const heartbeats = new Set<NodeJS.Timeout>();
  const beatEvery = Math.max(250, Math.floor(o.ackWaitMs / 3));

  const changed = () => {
    o.metrics?.queued.set(queue.size);
    const w = wake;
    wake = null;
    w?.();
  };

  // Waiting requests tell JetStream they are alive, all with one timer.
  const waitingBeat = setInterval(() => {
    for (const w of queue.items()) {
      try {
        w.m.working();
      } catch {
        // the connection is away; JetStream redelivers if it lasts
      }
    }
  }, beatEvery);
  waitingBeat.unref();

  /** How many requests to pull now (0: wait until something changes). */
  const wanted = (): number => {
    if (stopped) return 0;
    // A request that may start waits only for a slot: pulling more would not start anything sooner.
    if (queue.hasEligible()) return 0;
    const free = o.concurrency - active;
    if (queue.size === 0) {
      // Nothing waits: exactly the free slots, so nothing is held that could run elsewhere.
      lookahead = 0;
      return Math.max(0, free);
    }
    // Everything here waits on its user's slots.
    const room = bufferMessages - queue.size;
    if (room <= 0 || queuedBytes >= bufferBytes) return 0;
    if (behind > 0) {
      // More is behind it: look past it, in growing pulls.
      lookahead = lookahead === 0 ? Math.max(free, o.concurrency) : Math.min(lookahead * 2, pullBatch);
      return Math.min(lookahead, room);
    }
    lookahead = 0;
    return Math.max(0, Math.min(free, room));
  };

  const start = (w: Waiting, cancel?: CancelOrder) => {
    active++;
    queue.begin(w.user);
    o.metrics?.wait.observe((performance.now() - w.pulledAt) / 1000);
    const m = w.m;
    const beat = setInterval(() => {
      try {
        m.working();
      } catch {
        // the connection is away; JetStream redelivers if it lasts
      }
    }, beatEvery);
    heartbeats.add(beat);
    const delivery = cancel ? { ...w.delivery, cancel } : w.delivery;
    const task = o
      .handle(delivery)
      .then(
        (d) => (d.ack ? m.ack() : m.nak(d.retryInMs)),
        (e: unknown) => {
          o.log.error(
            { err: errorInfo(e), seq: m.seq },
            'request handler failed; it will be delivered again',
          );
          m.nak(1_000);
        },
      )
      .catch((e: unknown) => o.log.warn({ err: errorInfo(e), seq: m.seq }, 'ack failed'))
      .finally(() => {
        clearInterval(beat);
        heartbeats.delete(beat);
        active--;
        queue.done(w.user);
        tasks.delete(task);
        pump();
      });
    tasks.add(task);
  };

  /** Starts waiting requests while there are free slots, fairly between users. */
  const pump = () => {
    while (!stopped && active < o.concurrency) {
      const next = queue.next();
      if (!next) break;
      queuedBytes -= next.item.bytes;
      start(next.item);
    }
    changed();
  };

  const enqueue = (m: JsMsg) => {
    const user = parseRequestSubject(m.subject)?.userId ?? m.subject;
    const bytes = m.data.byteLength + 256;
    queuedBytes += bytes;
    queue.push(user, { m, user, delivery: toDelivery(m), bytes, pulledAt: performance.now() });
    pump();
  };

  const untilWanted = async (): Promise<number> => {
    for (;;) {
      const n = wanted();
      if (n > 0 || stopped) return n;
      await new Promise<void>((resolve) => (wake = resolve));
    }
  };

  const loop = async () => {
    let failures = 0;
    while (!stopped) {
      try {
        const consumer = await o.js.consumers.get(names.requestsStream, names.dispatcherConsumer);
        while (!stopped) {
          const n = await untilWanted();
          if (stopped) break;
          const batch = await consumer.fetch({ max_messages: n, expires });
          current = batch;
          let received = 0;
          for await (const m of batch) {
            if (stopped) {
              // Pulled during shutdown: let another instance have it right away.
              m.nak();
              continue;
            }
            received++;
            behind = m.info.pending;
            enqueue(m);
          }
          if (received === 0) behind = 0;
          current = null;
          failures = 0;
        }
      } catch (e) {
        current = null;
        if (stopped) break;
        failures++;
        o.log.warn({ err: errorInfo(e), failures }, 'pulling requests failed; retrying');
        await new Promise((r) => setTimeout(r, Math.min(5_000, 100 * 2 ** Math.min(failures, 6))));
      }
    }
  };
  const running = loop();

  return {
    get active() {
      return active;
    },
    get queued() {
      return queue.size;
    },
    cancelQueued(userKey, match, cancel) {
      if (stopped) return false;
      const w = queue.take(userKey, (x) => match(x.delivery));
      if (!w) return false;
      queuedBytes -= w.bytes;
      start(w, cancel);
      changed();
      return true;
    },
    async stop(graceMs) {
      stopped = true;
      changed();
      await current?.close().catch(() => undefined);
      await running;
      clearInterval(waitingBeat);
      // Not started: another instance may have them at once.
      for (const w of queue.drain()) {
        try {
          w.m.nak();
        } catch {
          // redelivered after the ack wait
        }
      }
      queuedBytes = 0;
      o.metrics?.queued.set(0);
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        Promise.allSettled([...tasks]),
        new Promise((r) => (timer = setTimeout(r, graceMs))),
      ]);
      clearTimeout(timer);
      // Whatever still runs is left to redelivery: stop telling JetStream it is alive.
      for (const beat of heartbeats) clearInterval(beat);
      heartbeats.clear();
    },
  };
}
