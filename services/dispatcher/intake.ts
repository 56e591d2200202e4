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
import { jetstream as names, subjects } from '../../contracts/index.ts';
import type { Logger } from '../../lib/log.ts';
import { errorInfo, type Delivery, type Disposition } from './dispatcher.ts';

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

export interface IntakeOptions {
  js: JetStreamClient;
  /** Requests handled at once by this instance; no more are pulled than there are free slots. */
  concurrency: number;
  ackWaitMs: number;
  handle: (delivery: Delivery) => Promise<Disposition>;
  log: Logger;
  /** How long one pull waits for requests before the next (default 5 s). */
  pullExpiresMs?: number;
}

export interface Intake {
  readonly active: number;
  /** Stops pulling, waits up to `graceMs` for running requests; the rest come back to another instance. */
  stop(graceMs: number): Promise<void>;
}

const toDelivery = (m: JsMsg): Delivery => ({
  subject: m.subject,
  data: m.data,
  header: (name) => m.headers?.get(name) || undefined,
  id: `${m.info.streamSequence}-${m.info.deliveryCount}`,
  redelivered: m.redelivered,
});

/**
 * Pulls requests from the shared consumer: at most `concurrency` at a time, each pull asking for
 * exactly the free slots (nothing waits in a client buffer while its ack deadline runs). While a
 * request is handled, `working()` tells JetStream every third of the ack wait that it is still
 * alive, so a long tool is not redelivered. Acked after its terminal event is appended (or when it
 * is answered without one); nak'ed with a delay when it could not be finished.
 */
export function startIntake(o: IntakeOptions): Intake {
  let active = 0;
  let stopped = false;
  let current: ConsumerMessages | null = null;
  let wake: (() => void) | null = null;
  const tasks = new Set<Promise<void>>();
  const heartbeats = new Set<NodeJS.Timeout>();
  const expires = o.pullExpiresMs ?? 5_000;

  const slotFree = () =>
    new Promise<void>((resolve) => {
      if (active < o.concurrency || stopped) return resolve();
      wake = resolve;
    });

  const dispatch = (m: JsMsg) => {
    active++;
    const beat = setInterval(
      () => {
        try {
          m.working();
        } catch {
          // the connection is away; JetStream redelivers if it lasts
        }
      },
      Math.max(250, Math.floor(o.ackWaitMs / 3)),
    );
    heartbeats.add(beat);
    const task = o
      .handle(toDelivery(m))
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
        tasks.delete(task);
        const w = wake;
        wake = null;
        w?.();
      });
    tasks.add(task);
  };

  const loop = async () => {
    let failures = 0;
    while (!stopped) {
      await slotFree();
      if (stopped) break;
      try {
        const consumer = await o.js.consumers.get(names.requestsStream, names.dispatcherConsumer);
        while (!stopped) {
          await slotFree();
          if (stopped) break;
          const batch = await consumer.fetch({ max_messages: o.concurrency - active, expires });
          current = batch;
          for await (const m of batch) {
            if (stopped) {
              // Pulled during shutdown: let another instance have it right away.
              m.nak();
              continue;
            }
            dispatch(m);
          }
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
    async stop(graceMs) {
      stopped = true;
      const w = wake;
      wake = null;
      w?.();
      await current?.close().catch(() => undefined);
      await running;
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
