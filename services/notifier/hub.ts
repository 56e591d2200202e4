import type { Subscription } from '@nats-io/transport-node';
import { notificationName, Notification, subjects } from '../../contracts/index.ts';
import type { EventStore } from '../../lib/eventstore/types.ts';
import type { Logger } from '../../lib/log.ts';
import type { NatsConnection } from '../../lib/nats.ts';
import { UserFeed, type FeedMetrics } from './feed.ts';
import type { StoredItem } from './replay.ts';

/** `*` is an admin watching every user. */
export const ALL_USERS = '*';
export type Scope = string;

/** A socket's side of a feed. */
export interface FeedListener {
  /** A stored event of a watched user, in revision order per user. */
  onEvent(item: StoredItem): void;
  onProgress(userId: string, text: string): void;
}

interface ScopeEntry {
  listeners: Set<FeedListener>;
  subs: Subscription[];
  /** Resolves once the NATS server has the subscriptions (or after a short wait while it is away). */
  subscribed: Promise<void>;
}

export interface HubMetrics extends FeedMetrics {
  natsSubscriptions: { set(value: number): void };
  invalidMessages: { inc(): void };
}

/** How long a new subscription waits for the server's acknowledgement before the store is read anyway. */
const SUBSCRIBE_WAIT_MS = 2_000;

/**
 * NATS side of the notifier, and one `UserFeed` per watched user. A scope (a user id, or `*`)
 * has one NATS subscription (events + progress) while at least one socket watches it. NATS
 * messages are hints: an event message wakes the user's feed, which reads the store and hands the
 * stored events to every socket watching the user; progress is checked against the feed.
 */
export class Hub {
  private readonly scopes = new Map<Scope, ScopeEntry>();
  private readonly feeds = new Map<string, UserFeed>();

  constructor(
    private readonly nc: NatsConnection,
    private readonly store: EventStore,
    private readonly log: Logger,
    private readonly metrics: HubMetrics,
  ) {}

  /**
   * Starts delivering the scope's events to `listener`. `ready` resolves once the stored events
   * the feed will not send are all in the store (so a replay read after it leaves no gap); it
   * rejects when the store cannot be read.
   */
  attach(scope: Scope, listener: FeedListener): { detach: () => void; ready: Promise<void> } {
    let entry = this.scopes.get(scope);
    if (!entry) {
      entry = this.subscribe(scope);
      this.scopes.set(scope, entry);
      this.metrics.natsSubscriptions.set(this.scopes.size);
    }
    entry.listeners.add(listener);
    const attached = entry;
    const ready =
      scope === ALL_USERS
        ? entry.subscribed
        : Promise.all([entry.subscribed, this.feedOf(scope, null).ready()]).then(() => undefined);
    const detach = () => {
      attached.listeners.delete(listener);
      if (attached.listeners.size > 0 || this.scopes.get(scope) !== attached) return;
      this.scopes.delete(scope);
      for (const sub of attached.subs) sub.unsubscribe();
      this.metrics.natsSubscriptions.set(this.scopes.size);
      this.dropUnwatchedFeeds(scope);
    };
    return { detach, ready };
  }

  /** Scopes with a NATS subscription right now (for tests and metrics). */
  scopeNames(): string[] {
    return [...this.scopes.keys()];
  }

  /**
   * Every feed reads what its user's stream holds beyond what it has sent: events whose NATS
   * publish was lost (a NATS restart, the dispatcher stopping between commit and publish) arrive.
   */
  async wakeAll(): Promise<void> {
    await Promise.all([...this.feeds.values()].map((feed) => feed.wake()));
  }

  close(): void {
    for (const entry of this.scopes.values()) for (const sub of entry.subs) sub.unsubscribe();
    this.scopes.clear();
    for (const feed of this.feeds.values()) feed.close();
    this.feeds.clear();
    this.metrics.natsSubscriptions.set(0);
  }

  private feedOf(userId: string, firstRevision: number | null): UserFeed {
    let feed = this.feeds.get(userId);
    if (feed) return feed;
    feed = new UserFeed(
      userId,
      {
        store: this.store,
        log: this.log,
        metrics: this.metrics,
        onEvent: (item) => {
          for (const listener of this.listenersOf(userId)) listener.onEvent(item);
        },
        onProgress: (text) => {
          for (const listener of this.listenersOf(userId)) listener.onProgress(userId, text);
        },
        subscribed: () =>
          (this.scopes.get(userId) ?? this.scopes.get(ALL_USERS))?.subscribed ?? Promise.resolve(),
      },
      firstRevision,
    );
    this.feeds.set(userId, feed);
    return feed;
  }

  private listenersOf(userId: string): FeedListener[] {
    return [...(this.scopes.get(userId)?.listeners ?? []), ...(this.scopes.get(ALL_USERS)?.listeners ?? [])];
  }

  /** A feed lives while its user's scope or `*` has a socket. */
  private dropUnwatchedFeeds(leftScope: Scope): void {
    const users = leftScope === ALL_USERS ? [...this.feeds.keys()] : [leftScope];
    for (const userId of users) {
      if (this.scopes.has(userId) || this.scopes.has(ALL_USERS)) continue;
      this.feeds.get(userId)?.close();
      this.feeds.delete(userId);
    }
  }

  private subscribe(scope: Scope): ScopeEntry {
    const all = scope === ALL_USERS;
    const events = this.nc.subscribe(all ? subjects.eventsAll : subjects.events(scope), {
      callback: (err, msg) => {
        if (err) return this.log.warn({ err, scope }, 'event subscription error');
        this.onEventMessage(msg.subject, msg.string());
      },
    });
    const progress = this.nc.subscribe(all ? subjects.progressAll : subjects.progress(scope), {
      callback: (err, msg) => {
        if (err) return this.log.warn({ err, scope }, 'progress subscription error');
        this.onProgressMessage(msg.subject, msg.string());
      },
    });
    // While NATS is away the flush waits for the reconnect; the reconnect wakes every feed anyway.
    let timer: NodeJS.Timeout | undefined;
    const subscribed = Promise.race([
      this.nc.flush().catch(() => undefined),
      new Promise<void>((resolve) => (timer = setTimeout(resolve, SUBSCRIBE_WAIT_MS))),
    ]).finally(() => clearTimeout(timer));
    return { listeners: new Set(), subs: [events, progress], subscribed };
  }

  private onEventMessage(subject: string, body: string): void {
    const userId = subject.split('.')[2]!;
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
    // A user seen only through `*` gets a feed that starts at the announced revision.
    const feed =
      this.feeds.get(userId) ?? (this.scopes.has(ALL_USERS) ? this.feedOf(userId, n.revision) : undefined);
    feed?.onAnnounced(n.revision, n.event.id);
  }

  private onProgressMessage(subject: string, body: string): void {
    const userId = subject.split('.')[2]!;
    const n = parseNotification(body);
    if (!n || n.kind !== 'progress' || n.userId !== userId) {
      this.metrics.invalidMessages.inc();
      this.log.warn({ subject }, 'ignored a progress message that is not a valid notification of its user');
      return;
    }
    const feed = this.feeds.get(userId);
    if (!feed) return this.metrics.progressDropped.inc();
    feed.onProgress(n.executionId, JSON.stringify(n));
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
