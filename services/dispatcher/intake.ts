import {
  AckPolicy,
  DeliverPolicy,
  DiscardPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  JetStreamError,
  RetentionPolicy,
  StorageType,
  type ConsumerMessages,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
} from '@nats-io/jetstream';
import { nanos } from '@nats-io/transport-node';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Gauge, Histogram } from 'prom-client';
import { jetstream as names, parseRequestSubject, subjects } from '../../contracts/index.ts';
import type { Logger } from '../../lib/log.ts';
import { type CancelOrder, type Delivery, type Disposition } from './dispatcher.ts';
import { FairQueue } from './fairQueue.ts';
import { backoffMs } from '../../lib/retry.ts';

/** How long JetStream remembers a `Nats-Msg-Id` to drop a repeat of the same request. */
export const DUPLICATE_WINDOW_MS = 2 * 60_000;

const isApiError = (e: unknown, code: number): boolean => e instanceof JetStreamApiError && e.code === code;

/**
 * JetStream answers of a cluster that is still forming (no meta leader yet, too few peers joined
 * to place three replicas) or electing a new leader: they pass within seconds. Anything else (no
 * JetStream, no permission, another stream holding the subjects) does not.
 */
const FORMING_CODES = new Set([10005 /* no suitable peers */, 10008 /* temporarily unavailable */, 10023]);

export function isJetStreamForming(e: unknown): boolean {
  for (let cause = e; cause instanceof Error; cause = cause.cause) {
    if (cause instanceof JetStreamApiError && FORMING_CODES.has(cause.code)) return true;
    if (/no suitable peers|temporarily unavailable|insufficient resources/i.test(cause.message)) return true;
    // A JetStream API request nobody answered: the cluster has no meta leader yet.
    if (cause.name === 'TimeoutError' || /^timeout$/i.test(cause.message)) return true;
  }
  return false;
}

/** A part of the intake that can disappear (deleted through the JetStream API) and be recreated. */
export type IntakeResource = 'stream' | 'consumer';

const resourceName = (r: IntakeResource): string =>
  r === 'stream' ? `stream ${names.requestsStream}` : `consumer ${names.dispatcherConsumer}`;

/** `ensureIntake` found a part missing and could not create it (another stream holds its subjects, …). */
export class IntakeCreateError extends Error {
  constructor(
    readonly resource: IntakeResource,
    cause: unknown,
  ) {
    super(
      `${resourceName(resource)} missing and not created: ${(cause as Error)?.message ?? String(cause)}`,
      {
        cause,
      },
    );
    this.name = 'IntakeCreateError';
  }
}

/**
 * Adds a missing part; when the add fails but the part is there now, another instance created it
 * at the same moment (instances heal at once), which is as good.
 */
async function createOrAccept(
  resource: IntakeResource,
  add: () => Promise<unknown>,
  exists: () => Promise<unknown>,
): Promise<void> {
  try {
    await add();
  } catch (e) {
    const there = await exists().then(
      () => true,
      () => false,
    );
    if (!there) throw new IntakeCreateError(resource, e);
  }
}

/** The subject of the intake holding the most messages, and how many. */
async function deepestSubject(jsm: JetStreamManager): Promise<{ subject: string | null; count: number }> {
  const info = await jsm.streams.info(names.requestsStream, { subjects_filter: '>' });
  let deepest: { subject: string | null; count: number } = { subject: null, count: 0 };
  for (const [subject, count] of Object.entries(info.state.subjects ?? {})) {
    if (count > deepest.count) deepest = { subject, count };
  }
  return deepest;
}

/**
 * The intake: a file-backed work-queue stream of tool requests on `toolbus.requests.>`,
 * deduplicated by `Nats-Msg-Id` over two minutes, and one durable pull consumer that every
 * dispatcher instance shares (explicit ack). Created when missing; brought in line when an
 * instance starts with other limits or another replica count (the consumer follows the stream's). Safe to call from several instances at once. Returns what it
 * created (empty when both were there); throws `IntakeCreateError` when a missing part cannot be
 * created.
 */
export async function ensureIntake(
  jsm: JetStreamManager,
  options: {
    ackWaitMs: number;
    maxAckPending: number;
    /** Bounds of the stream: beyond them a publish is refused (discard new), nothing old is dropped. */
    maxMessages?: number;
    maxBytes?: number;
    /**
     * Requests of one user from one agent (one subject) the stream holds at most; beyond, a publish
     * on that subject is refused (discard new per subject). 0 or absent: no such bound.
     */
    maxPerAgent?: number;
    /**
     * Copies of the stream on a JetStream cluster (default 1): with 3, a publish is acknowledged
     * once two nodes stored it, and the stream outlives one lost node.
     */
    replicas?: number;
    log: Logger;
  },
): Promise<IntakeResource[]> {
  const created: IntakeResource[] = [];
  const replicas = options.replicas ?? 1;
  // Not on a cluster: up to nats-server 2.12.2 each replica checks the bound against its own copy
  // when it applies a message, and the copies diverge (nats-server#7607; decision 0036).
  const perAgent = replicas === 1 ? (options.maxPerAgent ?? 0) : 0;
  if (replicas > 1 && (options.maxPerAgent ?? 0) > 0) {
    options.log.warn(
      { replicas },
      'INTAKE_MAX_PER_AGENT is not applied to a replicated intake (nats-server#7607): one agent may queue without that bound',
    );
  }
  const stream = {
    name: names.requestsStream,
    subjects: [subjects.requestsAll],
    storage: StorageType.File,
    retention: RetentionPolicy.Workqueue,
    duplicate_window: nanos(DUPLICATE_WINDOW_MS),
    max_msgs: options.maxMessages ?? -1,
    max_bytes: options.maxBytes ?? -1,
    discard: DiscardPolicy.New,
    max_msgs_per_subject: perAgent > 0 ? perAgent : -1,
    discard_new_per_subject: perAgent > 0,
    num_replicas: replicas,
    // Nobody may purge the stream or delete a message of it through the API, whoever asks: nats-server
    // 2.9 does not check a publish's reply subject, so an agent could have JetStream send its
    // acknowledgement (`{"stream","seq"}`) to `$JS.API.STREAM.PURGE.<stream>` (or MSG.DELETE) and
    // the server would act on it as its own request (docs/security.md). Acknowledged requests
    // leave the work queue as before. Once set, nats-server refuses to unset them.
    deny_purge: true,
    deny_delete: true,
  };
  try {
    const info = await jsm.streams.info(names.requestsStream);
    // nats-server drops the oldest messages of a subject over its bound (when the bound is lowered,
    // and at every restart): requests already acknowledged to their agents. A bound is set, or
    // lowered, only when no subject holds more.
    const current = info.config.max_msgs_per_subject > 0 ? info.config.max_msgs_per_subject : Infinity;
    if (perAgent > 0 && perAgent < current) {
      const deepest = await deepestSubject(jsm);
      if (deepest.count > perAgent) {
        options.log.warn(
          { subject: deepest.subject, waiting: deepest.count, bound: perAgent },
          'INTAKE_MAX_PER_AGENT not applied yet: a subject holds more requests, which nats-server would drop; a later start applies it once fewer wait',
        );
        stream.max_msgs_per_subject = info.config.max_msgs_per_subject;
        stream.discard_new_per_subject = Boolean(info.config.discard_new_per_subject);
      }
    }
    if (
      info.config.duplicate_window !== stream.duplicate_window ||
      !info.config.subjects?.includes(subjects.requestsAll) ||
      info.config.max_msgs !== stream.max_msgs ||
      info.config.max_bytes !== stream.max_bytes ||
      info.config.discard !== stream.discard ||
      info.config.max_msgs_per_subject !== stream.max_msgs_per_subject ||
      Boolean(info.config.discard_new_per_subject) !== stream.discard_new_per_subject ||
      info.config.num_replicas !== stream.num_replicas ||
      !info.config.deny_purge ||
      !info.config.deny_delete
    ) {
      // The consumer keeps the replica count of its stream (it was created without one of its own).
      await jsm.streams.update(names.requestsStream, {
        subjects: stream.subjects,
        duplicate_window: stream.duplicate_window,
        max_msgs: stream.max_msgs,
        max_bytes: stream.max_bytes,
        discard: stream.discard,
        max_msgs_per_subject: stream.max_msgs_per_subject,
        discard_new_per_subject: stream.discard_new_per_subject,
        num_replicas: stream.num_replicas,
        deny_purge: true,
        deny_delete: true,
      });
      options.log.info(
        { stream: names.requestsStream, replicas: stream.num_replicas },
        'intake stream updated',
      );
    }
  } catch (e) {
    if (!isApiError(e, JetStreamApiCodes.StreamNotFound)) throw e;
    await createOrAccept(
      'stream',
      () => jsm.streams.add(stream),
      () => jsm.streams.info(names.requestsStream),
    );
    created.push('stream');
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
    // A bound on deliveries (one an operator set) would drop a request that waits for approval
    // or for room, unanswered: the dispatcher gives up on a request itself (DISPATCHER_MAX_FAILURES).
    const maxDeliver = info.config.max_deliver ?? -1;
    if (
      info.config.ack_wait !== consumer.ack_wait ||
      info.config.max_ack_pending !== consumer.max_ack_pending ||
      maxDeliver > 0
    ) {
      await jsm.consumers.update(names.requestsStream, names.dispatcherConsumer, {
        ack_wait: consumer.ack_wait,
        max_ack_pending: consumer.max_ack_pending,
        max_deliver: -1,
      });
      options.log.info(
        {
          consumer: names.dispatcherConsumer,
          ackWaitMs: options.ackWaitMs,
          maxAckPending: options.maxAckPending,
          ...(maxDeliver > 0 ? { maxDeliverWas: maxDeliver } : {}),
        },
        'intake consumer updated',
      );
    }
  } catch (e) {
    if (!isApiError(e, JetStreamApiCodes.ConsumerNotFound)) throw e;
    await createOrAccept(
      'consumer',
      () => jsm.consumers.add(names.requestsStream, consumer),
      () => jsm.consumers.info(names.requestsStream, names.dispatcherConsumer),
    );
    created.push('consumer');
    options.log.info({ consumer: names.dispatcherConsumer }, 'intake consumer created');
  }
  return created;
}

/**
 * What a failed pull says is missing: the stream or the consumer (JetStream's API errors, or the
 * pull's 409 status), or null when it says nothing about that (a timeout, a lost connection).
 */
export function missingResource(e: unknown): IntakeResource | null {
  if (e instanceof IntakeCreateError) return e.resource;
  if (isApiError(e, JetStreamApiCodes.StreamNotFound)) return 'stream';
  if (isApiError(e, JetStreamApiCodes.ConsumerNotFound)) return 'consumer';
  // A pull's status (JetStreamStatusError, not exported by the client): 409 with a description.
  if (e instanceof JetStreamError && (e as JetStreamError & { code?: unknown }).code === 409) {
    if (e.message === 'stream deleted') return 'stream';
    if (e.message === 'consumer deleted') return 'consumer';
  }
  return null;
}

/** Whether the intake is pulling requests; when not, why (what `/health/ready` shows). */
export type IntakeState =
  | { consuming: true }
  | {
      consuming: false;
      reason: string;
      /** What is missing, when that is the trouble. */
      missing: IntakeResource | null;
      /** Attempts to pull (and repair) that failed since the trouble began. */
      attempts: number;
    };

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
  /**
   * Recreates what is missing (`ensureIntake`), called after a pull fails: the stream or the
   * consumer may have been deleted through the JetStream API. Without it the intake only retries.
   */
  repair?: () => Promise<IntakeResource[]>;
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
  /** Whether it is pulling requests, or why not. */
  readonly state: IntakeState;
  /** Calls `listener` on each change of `state` (consuming again, or a new trouble); returns the unsubscribe. */
  watch(listener: (state: IntakeState) => void): () => void;
  /** Stops pulling, hands back what waits, waits up to `graceMs` for running requests; the rest come back to another instance. */
  stop(graceMs: number): Promise<void>;
}

/**
 * The wait after the n-th failed pull in a row, before repairing and pulling again: a random time
 * below 500 ms doubling up to 5 s (instances that lost the stream together do not repair together).
 */
const retryDelayMs = (attempts: number): number => backoffMs(attempts - 1, { minMs: 500, maxMs: 5_000 });

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
  sentAt: Number(m.info.timestampNanos) / 1e6,
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
    // What stands behind it as it starts: requests JetStream has not delivered yet (as the last
    // pull said) and those waiting here.
    const delivery = { ...w.delivery, behind: behind + queue.size, ...(cancel ? { cancel } : {}) };
    const task = o
      .handle(delivery)
      .then(
        async (d) => {
          if (!d.ack) return m.nak(d.retryInMs);
          if (!d.afterAck) return m.ack();
          let confirmed = true;
          try {
            await m.ackAck();
          } catch {
            confirmed = false; // the ack may still reach JetStream, or the message come back
          }
          d.afterAck(confirmed);
        },
        (e: unknown) => {
          o.log.error({ err: e, seq: m.seq }, 'request handler failed; it will be delivered again');
          m.nak(1_000);
        },
      )
      .catch((e: unknown) => o.log.warn({ err: e, seq: m.seq }, 'ack failed'))
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

  let state: IntakeState = { consuming: false, reason: 'starting', missing: null, attempts: 0 };
  const listeners = new Set<(s: IntakeState) => void>();
  const setState = (next: IntakeState) => {
    state = next;
    for (const l of listeners) l(next);
  };

  /** The trouble last logged (a missing part, or null: another failure); undefined while consuming. */
  let logged: IntakeResource | null | undefined;
  /** Wakes a retry wait when the intake stops. */
  const halt = new AbortController();

  /** A pull works: say so once when it did not. */
  const consuming = () => {
    if (state.consuming) return;
    if (state.attempts > 0)
      o.log.info({ attempts: state.attempts, was: state.reason }, 'intake consuming again');
    logged = undefined;
    setState({ consuming: true });
  };

  const trouble = (missing: IntakeResource | null, cause: unknown, attempts: number) => {
    const reason = missing
      ? `${resourceName(missing)} missing; recreating`
      : `pulling requests failed: ${cause instanceof Error ? cause.message : String(cause)}`;
    setState({ consuming: false, reason, missing, attempts });
  };

  /**
   * After a failed pull (and a wait): recreates what is missing and says what the trouble is. One
   * log line per trouble, not per attempt: an outage retried every few seconds does not flood the
   * log, and a part deleted again after the intake healed is logged again.
   */
  const repair = async (e: unknown) => {
    let missing = missingResource(e);
    let cause: unknown = e;
    if (o.repair) {
      try {
        const created = await o.repair();
        // The stream gone takes its consumer with it; name the stream then.
        if (created.length > 0) missing = created[0]!;
      } catch (re) {
        missing = missingResource(re) ?? missing;
        cause = re;
      }
    }
    trouble(missing, cause, state.consuming ? 1 : state.attempts);
    if (logged === missing) return;
    logged = missing;
    const fields = { err: cause, ...(missing ? { missing: resourceName(missing) } : {}) };
    if (missing) o.log.error(fields, `intake ${resourceName(missing)} missing; recreating it`);
    else o.log.warn(fields, 'pulling requests failed; retrying');
  };

  const loop = async () => {
    while (!stopped) {
      try {
        const consumer = await o.js.consumers.get(names.requestsStream, names.dispatcherConsumer);
        consuming();
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
          consuming();
        }
      } catch (e) {
        current = null;
        if (stopped) break;
        // Not consuming from now on (readiness says so at once), with what the error tells.
        const attempts = state.consuming ? 1 : state.attempts + 1;
        trouble(state.consuming ? missingResource(e) : state.missing, e, attempts);
        // Wait before creating anything again: the pull hears of a deletion before nats-server has
        // finished removing the files, and a stream or consumer created in that moment is broken
        // (v2.9: "error opening msg block file", "directory not empty").
        await sleep(retryDelayMs(attempts), undefined, { signal: halt.signal }).catch(() => undefined);
        if (stopped) break;
        await repair(e);
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
    get state() {
      return state;
    },
    watch(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
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
      halt.abort();
      setState({ consuming: false, reason: 'stopping', missing: null, attempts: 0 });
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
