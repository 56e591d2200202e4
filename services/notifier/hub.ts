import type { Subscription } from '@nats-io/transport-node';
import { notificationName, Notification, subjects, userStream } from '../../contracts/index.ts';
import type { EventStore } from '../../lib/eventstore/types.ts';
import type { Logger } from '../../lib/log.ts';
import type { NatsConnection } from '../../lib/nats.ts';
import type { Delivery } from './replay.ts';

/** `*` is an admin watching every user. */
export const ALL_USERS = '*';
export type Scope = string;

/** A socket's side of a feed. */
export interface FeedListener {
  onEvent(delivery: Delivery): void;
  onProgress(userId: string, text: string): void;
  /** The store says the user's stream ends at `revision`: fill anything not yet delivered. */
  onTail(userId: string, revision: number): void;
  /** The users whose revisions this listener tracks (for tail checks). */
  trackedUsers(): Iterable<string>;
}

interface Feed {
  listeners: Set<FeedListener>;
  subs: Subscription[];
}

export interface HubMetrics {
  natsSubscriptions: { set(value: number): void };
  invalidMessages: { inc(): void };
}

/**
 * NATS side of the notifier: one subscription (events + progress) per scope that has at least one
 * socket, dropped with the last socket. Each message is checked once (schema, subject matches the
 * user) and handed to the scope's sockets as ready-to-send text.
 */
export class Hub {
  private readonly feeds = new Map<Scope, Feed>();
  private closed = false;

  constructor(
    private readonly nc: NatsConnection,
    private readonly log: Logger,
    private readonly metrics: HubMetrics,
  ) {}

  /** Starts delivering the scope's messages to `listener`; returns the detach function. */
  attach(scope: Scope, listener: FeedListener): () => void {
    let feed = this.feeds.get(scope);
    if (!feed) {
      feed = { listeners: new Set(), subs: this.subscribe(scope) };
      this.feeds.set(scope, feed);
      this.metrics.natsSubscriptions.set(this.feeds.size);
    }
    feed.listeners.add(listener);
    const attached = feed;
    return () => {
      attached.listeners.delete(listener);
      if (attached.listeners.size === 0 && this.feeds.get(scope) === attached) {
        this.feeds.delete(scope);
        for (const sub of attached.subs) sub.unsubscribe();
        this.metrics.natsSubscriptions.set(this.feeds.size);
      }
    };
  }

  /** Scopes with a NATS subscription right now (for tests and metrics). */
  scopes(): string[] {
    return [...this.feeds.keys()];
  }

  /**
   * Asks the store for the tail of every tracked user and tells each listener, so events whose
   * NATS publish was lost (a NATS restart, a dropped message at the end of a burst) still arrive.
   */
  async checkTails(store: EventStore): Promise<void> {
    const byUser = new Map<string, FeedListener[]>();
    for (const feed of this.feeds.values()) {
      for (const listener of feed.listeners) {
        for (const userId of listener.trackedUsers()) {
          const list = byUser.get(userId) ?? [];
          list.push(listener);
          byUser.set(userId, list);
        }
      }
    }
    const users = [...byUser.keys()];
    const workers = Array.from({ length: Math.min(8, users.length) }, async () => {
      for (let userId = users.pop(); userId !== undefined; userId = users.pop()) {
        if (this.closed) return;
        const info = await store.streamInfo(userStream(userId));
        if (info === null) continue;
        for (const listener of byUser.get(userId) ?? []) listener.onTail(userId, info.revision);
      }
    });
    await Promise.all(workers);
  }

  close(): void {
    this.closed = true;
    for (const feed of this.feeds.values()) for (const sub of feed.subs) sub.unsubscribe();
    this.feeds.clear();
    this.metrics.natsSubscriptions.set(0);
  }

  private subscribe(scope: Scope): Subscription[] {
    const all = scope === ALL_USERS;
    const events = this.nc.subscribe(all ? subjects.eventsAll : subjects.events(scope), {
      callback: (err, msg) => {
        if (err) return this.log.warn({ err, scope }, 'event subscription error');
        this.onEventMessage(scope, msg.subject, msg.string());
      },
    });
    const progress = this.nc.subscribe(all ? subjects.progressAll : subjects.progress(scope), {
      callback: (err, msg) => {
        if (err) return this.log.warn({ err, scope }, 'progress subscription error');
        this.onProgressMessage(scope, msg.subject, msg.string());
      },
    });
    return [events, progress];
  }

  private onEventMessage(scope: Scope, subject: string, body: string): void {
    const userId = subject.split('.')[2];
    const n = parseNotification(body);
    if (
      !n ||
      n.kind !== 'event' ||
      n.userId !== userId ||
      n.event.metadata.userId !== userId ||
      n.name !== notificationName(n.event.type)
    ) {
      this.metrics.invalidMessages.inc();
      this.log.warn({ subject }, 'ignored an event message that is not a valid notification of its user');
      return;
    }
    const delivery: Delivery = { userId, revision: n.revision, text: JSON.stringify(n) };
    for (const listener of this.feeds.get(scope)?.listeners ?? []) listener.onEvent(delivery);
  }

  private onProgressMessage(scope: Scope, subject: string, body: string): void {
    const userId = subject.split('.')[2];
    const n = parseNotification(body);
    if (!n || n.kind !== 'progress' || n.userId !== userId) {
      this.metrics.invalidMessages.inc();
      this.log.warn({ subject }, 'ignored a progress message that is not a valid notification of its user');
      return;
    }
    const text = JSON.stringify(n);
    for (const listener of this.feeds.get(scope)?.listeners ?? []) listener.onProgress(userId, text);
  }
}

function parseNotification(body: string): Notification | null {
  try {
    const parsed = Notification.safeParse(JSON.parse(body));
    return parsed.success ? parsed.data : null;
  } catch {
    return null;
  }
}
