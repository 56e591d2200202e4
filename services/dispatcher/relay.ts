import { headers } from '@nats-io/transport-node';
import pg from 'pg';
import {
  notificationName,
  subjects,
  USER_STREAM_PREFIX,
  userIdOfStream,
  type Notification,
  type ToolEvent,
} from '../../contracts/index.ts';
import { createPool, migrate, type Migration } from '../../lib/db.ts';
import {
  formatPosition,
  parsePosition,
  type EventStore,
  type Position,
  type RecordedEvent,
} from '../../lib/eventstore/types.ts';
import type { Logger } from '../../lib/log.ts';
import type { NatsConnection } from '../../lib/nats.ts';
import { backoffMs } from '../../lib/retry.ts';
import { fromRecorded } from '../../lib/toolEvents.ts';

/**
 * How committed events reach `events.user.<id>` (docs/decisions/0017-event-relay.md):
 * - `commit`: the dispatcher that appended them publishes them right after the commit (lost if it
 *   dies in between);
 * - `relay`: one relay among the dispatchers follows the store's subscription and publishes every
 *   committed event (nothing lost; a little later);
 * - `both`: the two; the relay is the safety net, the notifier drops the second hint of a revision.
 */
export const EVENT_PUBLISH_MODES = ['commit', 'relay', 'both'] as const;
export type EventPublishMode = (typeof EVENT_PUBLISH_MODES)[number];

export const publishesOnCommit = (mode: EventPublishMode): boolean => mode !== 'relay';
export const runsRelay = (mode: EventPublishMode): boolean => mode !== 'commit';

/** The message id header: JetStream deduplicates by it, and it names the event in any log of the bus. */
export const MSG_ID_HEADER = 'Nats-Msg-Id';

/**
 * Publishes one committed event on `events.user.<id>`: the notification body every publisher of
 * events sends, with the event id as `Nats-Msg-Id`. Throws what `nc.publish` throws.
 */
export function publishEvent(nc: NatsConnection, userId: string, revision: number, event: ToolEvent): void {
  const n: Notification = { kind: 'event', name: notificationName(event.type), userId, revision, event };
  const h = headers();
  h.set(MSG_ID_HEADER, event.id);
  nc.publish(subjects.events(userId), JSON.stringify(n), { headers: h });
}

export const RELAY_NAME = 'events';
/** Events the relay holds back for one socket write at most (a catch-up reads pages of hundreds). */
const MAX_QUEUED_PUBLISHES = 256;
const CHECKPOINT_TABLE = 'toolbus_relay_checkpoints';

export const relayMigrations: Migration[] = [
  {
    version: 1,
    name: 'relay checkpoints',
    sql: `create table if not exists ${CHECKPOINT_TABLE} (
      name text primary key,
      position text not null,
      updated_at timestamptz not null default now())`,
  },
];

/** The advisory-lock key that makes one relay of a name active among all dispatchers. */
export const relayLockKey = (name: string): string => `toolbus-relay:${name}`;

export type RelayState = 'idle' | 'standby' | 'active' | 'stopped';

export interface EventRelayOptions {
  store: EventStore;
  nc: NatsConnection;
  /** PostgreSQL (DATABASE_URL): the lock session and the checkpoint, whichever the event store is. */
  connectionString: string;
  log: Logger;
  name?: string;
  /** The streams relayed: those whose names start with this (default every user stream, `user-`). */
  streamPrefix?: string;
  /** How often a standby relay tries the lock. */
  lockPollMs?: number;
  /** How often the active relay flushes NATS and writes its checkpoint while it publishes. */
  checkpointMs?: number;
  /** Called on each event published (metrics). */
  onPublished?: () => void;
  /**
   * Once caught up, read the store at most this often (SubscribeOptions.settleMs): for a relay
   * behind dispatchers that publish on commit (`both`), whose copies only cover a dispatcher that
   * died between its commit and its publish. Default 0: the relay is the only publisher.
   */
  settleMs?: number;
}

/**
 * The relay's pause between reads when the dispatchers publish on commit (`both`). Reading at every
 * append cost a query and a NATS write per append, each a copy the notifiers drop; now the appends
 * of 50 ms are one read and one write. A dispatcher that dies between its commit and its publish
 * has its events relayed at most this much later.
 */
export const RELAY_SETTLE_MS = 50;

/**
 * Publishes every committed event of the user streams on NATS, in the store's global order, from a
 * checkpoint it keeps: the events a dispatcher committed and then died before publishing reach
 * the notifiers all the same. One active relay among the dispatchers: the holder of a PostgreSQL
 * advisory lock; the others stand by and take over when its session ends. The checkpoint is
 * written through the lock's own session, and only after a NATS flush: a relay that lost the lock
 * cannot write it, and a restart republishes at most what was published since the last write
 * (the notifier drops a hint at a revision it already read). Nothing in the request path waits
 * for it.
 */
export class EventRelay {
  private readonly name: string;
  private readonly lockPollMs: number;
  private readonly checkpointMs: number;
  private currentState: RelayState = 'idle';
  private closed = false;
  private lockClient: pg.Client | null = null;
  private holding = false;
  private loop: Promise<void> | null = null;
  private wakeSleep: (() => void) | null = null;
  private stopFollowing: (() => void) | null = null;
  /** Events this instance has published (all time). */
  published = 0;
  /** The position of the last event this instance published, or read from the checkpoint. */
  position: Position | null = null;
  /**
   * True while it follows the store from its start (read once it holds the lock: the checkpoint, or
   * the store's end for a relay that never ran): from then on, whatever is committed it relays.
   */
  following = false;

  constructor(private readonly options: EventRelayOptions) {
    this.name = options.name ?? RELAY_NAME;
    this.lockPollMs = options.lockPollMs ?? 1_000;
    this.checkpointMs = options.checkpointMs ?? 200;
  }

  get state(): RelayState {
    return this.currentState;
  }

  /** Makes the checkpoint table (at every start; cheap when it exists) and starts the loop. */
  async start(): Promise<void> {
    const pool = createPool(this.options.connectionString, { max: 1, application: 'toolbus-relay' });
    try {
      await migrate(pool, 'dispatcher-relay', relayMigrations);
    } finally {
      await pool.end();
    }
    this.loop ??= this.run();
  }

  /** Stops publishing, writes the checkpoint of what was published, and releases the lock. */
  async close(): Promise<void> {
    this.closed = true;
    this.stopFollowing?.();
    this.wakeSleep?.();
    await this.loop;
    await this.dropLock();
    this.setState('stopped');
  }

  private setState(state: RelayState): void {
    if (this.currentState === state) return;
    this.currentState = state;
    if (state === 'active') this.options.log.info({ relay: this.name }, 'event relay active');
    if (state === 'standby')
      this.options.log.info({ relay: this.name }, 'event relay on standby: another dispatcher relays');
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.closed) {
      try {
        if (!(await this.acquire())) break;
        this.setState('active');
        await this.follow();
        failures = 0;
      } catch (e) {
        this.options.log.error({ err: e as Error }, 'event relay interrupted; resuming from the checkpoint');
        await this.sleep(backoffMs(failures++, { minMs: 100, maxMs: 5_000 }));
      }
    }
  }

  /** Holds the lock when it resolves true; false when closed first. */
  private async acquire(): Promise<boolean> {
    while (!this.closed) {
      if (this.holding && this.lockClient) return true;
      if (!this.lockClient) {
        const client = new pg.Client({
          connectionString: this.options.connectionString,
          application_name: 'toolbus-relay-lock',
          keepAlive: true,
        });
        client.on('error', (e) => this.lockLost(client, e));
        client.on('end', () => this.lockLost(client, new Error('lock session ended')));
        try {
          await client.connect();
          this.lockClient = client;
        } catch (e) {
          client.removeAllListeners();
          client.on('error', () => undefined);
          await client.end().catch(() => undefined);
          this.options.log.warn({ err: e as Error }, 'event relay: cannot open the lock session; retrying');
          await this.sleep(this.lockPollMs);
          continue;
        }
      }
      const client = this.lockClient;
      try {
        const { rows } = await client.query<{ ok: boolean }>(
          'select pg_try_advisory_lock(hashtextextended($1, 0)) as ok',
          [relayLockKey(this.name)],
        );
        if (rows[0]?.ok && this.lockClient === client) {
          this.holding = true;
          return true;
        }
        this.setState('standby');
      } catch (e) {
        this.lockLost(client, e as Error);
      }
      await this.sleep(this.lockPollMs);
    }
    return false;
  }

  private lockLost(client: pg.Client, error: Error): void {
    if (this.lockClient !== client) return;
    const wasHolding = this.holding;
    this.lockClient = null;
    this.holding = false;
    client.removeAllListeners();
    client.on('error', () => undefined);
    void client.end().catch(() => undefined);
    if (this.closed) return;
    if (wasHolding) this.options.log.error({ err: error }, 'event relay lost its lock session; standing by');
    this.setState('standby');
    this.stopFollowing?.();
  }

  private async dropLock(): Promise<void> {
    const client = this.lockClient;
    this.lockClient = null;
    this.holding = false;
    if (!client) return;
    client.removeAllListeners();
    client.on('error', () => undefined);
    await client.end().catch(() => undefined);
  }

  private sleep(ms: number): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        if (this.wakeSleep === done) this.wakeSleep = null;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wakeSleep = done;
    });
  }

  /**
   * Where to start: the checkpoint; on the very first start, the store's last event (what was
   * committed before any relay ran was published on commit), recorded at once so that a restart
   * before the first event does not skip what came meanwhile.
   */
  private async startPosition(client: pg.Client): Promise<Position | 'start'> {
    const { rows } = await client.query<{ position: string }>(
      `select position from ${CHECKPOINT_TABLE} where name = $1`,
      [this.name],
    );
    if (rows[0]) return parsePosition(rows[0].position);
    let last: Position | null = null;
    for await (const r of this.options.store.readAll({ direction: 'backwards', maxCount: 1 })) {
      last = r.position;
    }
    if (last) await this.writeCheckpoint(client, last);
    return last ?? 'start';
  }

  /** Through the lock's session: fails, and writes nothing, once this relay no longer holds it. */
  private async writeCheckpoint(client: pg.Client, position: Position): Promise<void> {
    await client.query(
      `insert into ${CHECKPOINT_TABLE} (name, position) values ($1, $2)
         on conflict (name) do update set position = excluded.position, updated_at = now()`,
      [this.name, formatPosition(position)],
    );
  }

  /** Publishes from the checkpoint on, until closed or the lock is lost. */
  private async follow(): Promise<void> {
    const client = this.lockClient;
    if (!client) return;
    const from = await this.startPosition(client);
    this.position = from === 'start' ? null : from;
    let written = this.position;
    this.options.log.info(
      { from: from === 'start' ? 'start' : formatPosition(from) },
      'event relay follows the store',
    );
    const subscription = this.options.store.subscribe({
      from,
      filter: { streamPrefixes: [this.options.streamPrefix ?? USER_STREAM_PREFIX] },
      settleMs: this.options.settleMs ?? 0,
    });
    const iterator = subscription[Symbol.asyncIterator]();
    this.following = true;
    // Each read gets its own way to be stopped. Racing every read against one promise that lives as
    // long as the relay left a handler on that promise per event, each holding its event: every
    // event relayed stayed in memory (about 1.5 KB each, found under load).
    let stopRequested = false;
    let wake: (() => void) | null = null;
    this.stopFollowing = () => {
      stopRequested = true;
      wake?.();
    };
    if (this.closed || !this.holding) this.stopFollowing();
    const nextOrStopped = () =>
      new Promise<IteratorResult<RecordedEvent> | 'stopped'>((resolve, reject) => {
        if (stopRequested) return resolve('stopped');
        wake = () => resolve('stopped');
        iterator.next().then(resolve, reject);
      }).finally(() => (wake = null));
    // Events read and not yet handed to NATS: published together at the next turn of the event
    // loop, so that a burst costs one socket write instead of one per event (the client writes
    // what was published before its next microtask checkpoint, and every event read is one).
    let queued: RecordedEvent[] = [];
    let immediate: NodeJS.Immediate | undefined;
    const publishQueued = () => {
      clearImmediate(immediate);
      immediate = undefined;
      const batch = queued;
      queued = [];
      for (const r of batch) {
        this.publish(r);
        this.position = r.position;
      }
    };
    // Flushes NATS, then records what the server has: never a position ahead of a publish.
    const checkpoint = async () => {
      publishQueued();
      const at = this.position;
      if (!at || at === written) return;
      await this.options.nc.flush();
      await this.writeCheckpoint(client, at);
      written = at;
    };
    let timer: NodeJS.Timeout | undefined;
    // The checkpoint being written, and why the last write failed (which stops this round).
    const pending: { write: Promise<void> | null; error: Error | null } = { write: null, error: null };
    const schedule = () => {
      if (timer || pending.write) return;
      timer = setTimeout(() => {
        timer = undefined;
        pending.write = checkpoint()
          .catch((e: unknown) => {
            pending.error = e instanceof Error ? e : new Error(String(e));
            this.stopFollowing?.();
          })
          .finally(() => (pending.write = null));
      }, this.checkpointMs);
    };
    try {
      while (!this.closed && this.holding) {
        const next = await nextOrStopped();
        if (next === 'stopped') break;
        if (next.done) throw new Error('the store subscription ended');
        queued.push(next.value);
        if (queued.length >= MAX_QUEUED_PUBLISHES) publishQueued();
        else
          immediate ??= setImmediate(() => {
            try {
              publishQueued();
            } catch (e) {
              pending.error = e instanceof Error ? e : new Error(String(e));
              this.stopFollowing?.();
            }
          });
        schedule();
      }
      if (pending.error) throw pending.error;
    } finally {
      clearTimeout(timer);
      // What was read before the stop goes out, as it did when each event was published at once.
      if (!pending.error) {
        try {
          publishQueued();
        } catch (e) {
          pending.error = e instanceof Error ? e : new Error(String(e));
        }
      }
      clearImmediate(immediate);
      this.stopFollowing = null;
      this.following = false;
      await subscription.close();
      void iterator.return?.(undefined).catch(() => undefined);
      await pending.write;
      // The last checkpoint: only if the lock is still held (the session writes nothing otherwise).
      if (this.holding && this.lockClient === client && !pending.error) {
        await checkpoint().catch((e: unknown) =>
          this.options.log.warn({ err: e as Error }, 'event relay: last checkpoint not written'),
        );
      }
    }
  }

  private publish(r: RecordedEvent): void {
    const parsed = fromRecorded(r);
    if (!parsed.ok) {
      // Not a tool event (the notifier would not show it either): nothing to announce.
      this.options.log.warn(
        { stream: r.streamId, revision: r.revision, reason: parsed.reason },
        'event relay skips an event',
      );
      return;
    }
    const { event } = parsed;
    publishEvent(this.options.nc, userIdOfStream(r.streamId)!, r.revision, event);
    this.published++;
    this.options.onPublished?.();
  }
}
