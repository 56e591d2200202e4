import type { RawData, WebSocket } from 'ws';
import {
  CLOSE_CODES,
  isAdmin,
  userStream,
  type Notification,
  type Principal,
} from '../../contracts/index.ts';
import { AuthError, type TokenVerifier } from '../../lib/auth.ts';
import type { EventStore } from '../../lib/eventstore/types.ts';
import type { Logger } from '../../lib/log.ts';
import { ALL_USERS, type FeedListener, type Hub, type Scope } from './hub.ts';
import { classify, RateLimiter } from './ordering.ts';
import type { CatchUpReads, UserSockets } from './limits.ts';
import { authenticate, parseClientMessage, type Inbound } from './protocol.ts';
import { readNotifications, type StoredItem } from './replay.ts';
import type { Grant } from './tickets.ts';

export interface SessionLimits {
  /** Unsent bytes per socket: events wait while a socket holds more than half of this. */
  maxBufferBytes: number;
  authTimeoutMs: number;
  /** How long an event waits for its socket to drain before the socket is cut off. */
  slowConsumerMs: number;
  messagesPerSecond: number;
  messageBurst: number;
  /** Live events and progress queued behind a replay or a gap fill (count, and bytes of text); beyond either, events are read from the store later and progress is dropped. */
  maxQueue: number;
  maxQueueBytes: number;
  /** Authenticated sockets per user (the cap is kept by `SessionContext.userSockets`; here for the message). */
  maxSocketsPerUser: number;
}

export type CloseReason =
  | 'unauthenticated'
  | 'expired'
  | 'forbidden'
  | 'bad_message'
  | 'rate_limited'
  | 'slow_consumer'
  | 'internal'
  | 'shutdown'
  | 'dead'
  | 'too_many_sockets';

export interface SessionMetrics {
  sent: { inc(labels: { source: 'live' | 'replay' | 'gap' }): void };
  closed: { inc(labels: { reason: CloseReason }): void };
  /** Live events left to the store because a socket's queue was full. */
  overflowed: { inc(): void };
  refused: { inc(labels: { reason: 'user_sockets' }): void };
}

export interface SessionContext {
  store: EventStore;
  hub: Hub;
  verifier: TokenVerifier;
  log: Logger;
  limits: SessionLimits;
  metrics: SessionMetrics;
  /** Places for authenticated sockets, per user. */
  userSockets: UserSockets;
  /** Turns for the store reads of replays and gap fills. */
  catchUp: CatchUpReads;
  onDispose(session: Session): void;
}

/** WebSocket close code for a socket refused for a while ("try again later"): too many unauthenticated sockets, or too many sockets of its user. */
export const CLOSE_TRY_AGAIN_LATER = 1013;

/** Events read from the store in one turn of a replay or a gap fill (see `CatchUpReads`). */
const CATCH_UP_PAGE = 256;

/**
 * How the socket arrived: with a redeemed ticket, with one that was refused, or with none (it must
 * send an auth message; `release` gives back its place among the unauthenticated sockets).
 */
export type Admission =
  | { kind: 'ticket'; grant: Grant }
  | { kind: 'refused'; message: string }
  | { kind: 'none'; release: () => void };

type Work =
  | { kind: 'replay'; userId: string; afterRevision: number }
  | { kind: 'event'; item: StoredItem }
  | { kind: 'progress'; text: string }
  /** Stored events up to `revision` that were not queued (the queue was full). */
  | { kind: 'fill'; userId: string; revision: number };

const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * One WebSocket. Client messages are handled one at a time (auth, subscribe); events go through
 * one queue per socket, so a replay from the store, the events the user's feed reads from the
 * store meanwhile and gap fills are sent in revision order, each revision once. Everything sent
 * as an event comes from the store.
 */
export class Session implements FeedListener {
  /** Cleared at each protocol ping, set by the pong (or any frame). */
  alive = true;
  private principal: Principal | null = null;
  private expiresAt = 0;
  private scope: Scope | null = null;
  /** Per user: the revision last sent to this socket. */
  private readonly cursors = new Map<string, number>();
  private queue: Work[] = [];
  private queuedBytes = 0;
  /** Per user: the highest revision dropped because the queue was full. */
  private readonly overflow = new Map<string, number>();
  private running = false;
  private live = false;
  private closed = false;
  private disposed = false;
  private detach: (() => void) | null = null;
  /** Resolves once the user's feed has started (see `Hub.attach`); the replay waits for it. */
  private feedReady: Promise<void> = Promise.resolve();
  private releaseUnauthenticated: (() => void) | null = null;
  /** Gives back this socket's place among its user's sockets (taken on the first good auth or ticket). */
  private releaseUserPlace: (() => void) | null = null;
  private inbox: Promise<void> = Promise.resolve();
  private authTimer: NodeJS.Timeout | undefined;
  private expiryTimer: NodeJS.Timeout | undefined;
  private readonly limiter: RateLimiter;
  private log: Logger;

  constructor(
    readonly ws: WebSocket,
    private readonly ctx: SessionContext,
    admission: Admission,
  ) {
    this.log = ctx.log;
    this.limiter = new RateLimiter(ctx.limits.messagesPerSecond, ctx.limits.messageBurst);
    ws.on('message', (data, isBinary) => this.onFrame(data, isBinary));
    ws.on('pong', () => (this.alive = true));
    ws.on('close', () => this.dispose());
    switch (admission.kind) {
      case 'ticket':
        this.admit(admission.grant);
        break;
      case 'refused':
        this.refuse(CLOSE_CODES.unauthenticated, 'UNAUTHENTICATED', admission.message, 'unauthenticated');
        break;
      case 'none':
        this.releaseUnauthenticated = admission.release;
        this.authTimer = setTimeout(
          () =>
            this.refuse(
              CLOSE_CODES.unauthenticated,
              'UNAUTHENTICATED',
              'no auth message in time',
              'unauthenticated',
            ),
          ctx.limits.authTimeoutMs,
        );
        break;
    }
  }

  get isClosed(): boolean {
    return this.closed;
  }

  get userId(): string | null {
    return this.principal?.userId ?? null;
  }

  // ---- FeedListener -------------------------------------------------------------------------

  onEvent(item: StoredItem): void {
    this.enqueue({ kind: 'event', item });
  }

  onProgress(_userId: string, text: string): void {
    // Progress is transient: not replayed, and dropped while a replay runs or the client lags. It
    // is queued behind the events already queued, so it never comes before its ToolExecuting.
    if (this.live) this.enqueue({ kind: 'progress', text });
  }

  // ---- closing --------------------------------------------------------------------------------

  /** Sends an error notification, then closes with `code`. */
  refuse(code: number, errorCode: string, message: string, reason: CloseReason): void {
    if (this.closed) return;
    const level = reason === 'internal' ? 'error' : 'warn';
    this.log[level]({ userId: this.userId, reason, code }, `closing socket: ${message}`);
    this.ws.send(JSON.stringify({ kind: 'error', code: errorCode, message } satisfies Notification));
    this.close(code, errorCode, reason);
  }

  close(code: number, reasonText: string, reason: CloseReason): void {
    if (this.closed) return;
    this.closed = true;
    this.ctx.metrics.closed.inc({ reason });
    // ws keeps its close timer (30 s): a peer that never reads the close frame is destroyed then.
    this.ws.close(code, reasonText.slice(0, 120));
    this.dispose();
  }

  /** A socket that missed a pong: no close handshake, the peer is gone. */
  terminate(): void {
    if (!this.closed) this.ctx.metrics.closed.inc({ reason: 'dead' });
    this.closed = true;
    this.ws.terminate();
    this.dispose();
  }

  private dispose(): void {
    this.closed = true;
    if (this.disposed) return;
    this.disposed = true;
    clearTimeout(this.authTimer);
    clearTimeout(this.expiryTimer);
    this.leaveUnauthenticated();
    this.releaseUserPlace?.();
    this.releaseUserPlace = null;
    this.detach?.();
    this.detach = null;
    this.queue = [];
    this.queuedBytes = 0;
    this.overflow.clear();
    this.ctx.onDispose(this);
  }

  // ---- client messages ------------------------------------------------------------------------

  private onFrame(data: RawData, isBinary: boolean): void {
    if (this.closed) return;
    this.alive = true;
    if (!this.limiter.take()) {
      return this.refuse(CLOSE_CODES.rateLimited, 'RATE_LIMITED', 'too many messages', 'rate_limited');
    }
    if (isBinary)
      return this.refuse(
        CLOSE_CODES.badMessage,
        'BAD_MESSAGE',
        'binary frames are not accepted',
        'bad_message',
      );
    const text = (Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as Buffer)).toString('utf8');
    const parsed = parseClientMessage(text);
    if (!parsed.ok) return this.refuse(CLOSE_CODES.badMessage, 'BAD_MESSAGE', parsed.problem, 'bad_message');
    this.inbox = this.inbox
      .then(() => this.handleMessage(parsed.message))
      .catch((err: unknown) => {
        this.log.error({ err }, 'client message failed');
        this.refuse(
          CLOSE_CODES.internalError,
          'INTERNAL',
          'the notifier failed; reconnect and resume',
          'internal',
        );
      });
  }

  private async handleMessage(message: Inbound): Promise<void> {
    if (this.closed) return;
    if (message.type === 'auth') return this.onAuth(message.token);
    if (!this.principal) {
      return this.refuse(
        CLOSE_CODES.unauthenticated,
        'UNAUTHENTICATED',
        'authenticate first (ticket or auth message)',
        'unauthenticated',
      );
    }
    if (message.type === 'ping') return this.sendJson({ kind: 'pong' });
    return this.onSubscribe(message.userId, message.afterRevision);
  }

  private async onAuth(token: string): Promise<void> {
    let grant: Grant;
    try {
      grant = await authenticate(this.ctx.verifier, token);
    } catch (e) {
      if (!(e instanceof AuthError)) throw e;
      const reason = e.reason === 'expired' ? 'expired' : 'unauthenticated';
      return this.refuse(CLOSE_CODES.unauthenticated, 'UNAUTHENTICATED', e.message, reason);
    }
    if (this.closed) return;
    if (this.principal && grant.principal.userId !== this.principal.userId) {
      return this.refuse(
        CLOSE_CODES.forbidden,
        'FORBIDDEN',
        'a socket stays with the user it was opened for',
        'forbidden',
      );
    }
    this.admit(grant);
  }

  /** Accepts a grant (ticket or auth message; a later auth message extends it). */
  private admit(grant: Grant): void {
    if (grant.expiresAt <= Date.now()) {
      return this.refuse(CLOSE_CODES.unauthenticated, 'UNAUTHENTICATED', 'token expired', 'expired');
    }
    clearTimeout(this.authTimer);
    this.leaveUnauthenticated();
    if (!this.releaseUserPlace) {
      // The first grant of this socket (a later auth message of the same user only extends it).
      this.releaseUserPlace = this.ctx.userSockets.enter(grant.principal.userId);
      if (!this.releaseUserPlace) {
        this.ctx.metrics.refused.inc({ reason: 'user_sockets' });
        this.log = this.ctx.log.child({ userId: grant.principal.userId });
        return this.refuse(
          CLOSE_TRY_AGAIN_LATER,
          'TOO_MANY_SOCKETS',
          `this user has ${this.ctx.limits.maxSocketsPerUser} sockets open on this notifier; close one, then reconnect`,
          'too_many_sockets',
        );
      }
    }
    this.principal = grant.principal;
    this.expiresAt = grant.expiresAt;
    this.log = this.ctx.log.child({ userId: grant.principal.userId });
    if (this.scope === ALL_USERS && !isAdmin(grant.principal)) {
      return this.refuse(
        CLOSE_CODES.forbidden,
        'FORBIDDEN',
        'watching every user needs the admin role',
        'forbidden',
      );
    }
    this.scheduleExpiry();
  }

  /** Leaves the unauthenticated sockets (once: on the first good auth, or when the socket goes). */
  private leaveUnauthenticated(): void {
    this.releaseUnauthenticated?.();
    this.releaseUnauthenticated = null;
  }

  private scheduleExpiry(): void {
    clearTimeout(this.expiryTimer);
    const wait = Math.min(Math.max(this.expiresAt - Date.now(), 0), MAX_TIMER_MS);
    this.expiryTimer = setTimeout(() => {
      if (Date.now() >= this.expiresAt) {
        this.refuse(CLOSE_CODES.unauthenticated, 'UNAUTHENTICATED', 'token expired', 'expired');
      } else {
        this.scheduleExpiry();
      }
    }, wait);
  }

  private onSubscribe(userId: string | undefined, afterRevision: number | undefined): void {
    const principal = this.principal!;
    if (this.scope !== null) {
      this.sendError('ALREADY_SUBSCRIBED', `this socket already receives ${this.scope}; open another one`);
      return;
    }
    const target = userId ?? principal.userId;
    if (target !== principal.userId && !isAdmin(principal)) {
      const message =
        target === ALL_USERS
          ? 'watching every user needs the admin role'
          : 'you may only watch your own events';
      return this.refuse(CLOSE_CODES.forbidden, 'FORBIDDEN', message, 'forbidden');
    }
    this.scope = target;
    this.log.info({ scope: target, afterRevision }, 'subscribed');
    const { detach, ready } = this.ctx.hub.attach(target, this);
    this.detach = detach;
    this.feedReady = ready;
    // A failure is seen by the replay, which awaits it.
    ready.catch(() => undefined);
    if (target === ALL_USERS) {
      // Live only: each user is tracked from the first event seen, gaps after it are filled.
      this.live = true;
      this.sendJson({ kind: 'ready', userId: ALL_USERS, revision: null });
      return;
    }
    this.enqueue({ kind: 'replay', userId: target, afterRevision: afterRevision ?? -1 });
  }

  // ---- events ---------------------------------------------------------------------------------

  private enqueue(work: Work): void {
    if (this.closed) return;
    const bytes = bytesOf(work);
    if (
      work.kind !== 'replay' &&
      (this.queue.length >= this.ctx.limits.maxQueue ||
        this.queuedBytes + bytes > this.ctx.limits.maxQueueBytes)
    ) {
      if (work.kind !== 'event') return; // progress is transient
      // Not kept in memory: the store has it, and the next round reads it from there.
      const { userId, revision } = work.item;
      this.ctx.metrics.overflowed.inc();
      this.overflow.set(userId, Math.max(this.overflow.get(userId) ?? -1, revision));
      return;
    }
    this.queuedBytes += bytes;
    this.queue.push(work);
    if (!this.running) void this.run();
  }

  private async run(): Promise<void> {
    this.running = true;
    try {
      while (!this.closed) {
        let work = this.queue.shift();
        if (work) this.queuedBytes -= bytesOf(work);
        if (!work) {
          const [first] = this.overflow;
          if (!first) break;
          this.overflow.delete(first[0]);
          work = { kind: 'fill', userId: first[0], revision: first[1] };
        }
        await this.handle(work);
      }
    } catch (err) {
      this.log.error({ err }, 'could not deliver events');
      this.refuse(
        CLOSE_CODES.internalError,
        'INTERNAL',
        'the notifier could not read the event store; reconnect and resume',
        'internal',
      );
    } finally {
      this.running = false;
    }
  }

  private async handle(work: Work): Promise<void> {
    switch (work.kind) {
      case 'replay': {
        await this.feedReady;
        let after = work.afterRevision;
        if (after >= 0) {
          const info = await this.ctx.catchUp.run(
            work.userId,
            () => this.ctx.store.streamInfo(userStream(work.userId)),
            () => this.closed,
          );
          if (this.closed) return;
          const tail = info?.revision ?? -1;
          if (tail < after) {
            // The client knows revisions the store does not (a store rebuilt or reset): say so, and
            // continue from the store's tail so that new events are not taken for duplicates.
            this.sendError(
              'RESUME_AHEAD',
              `revision ${after} is past the end of the stream (${tail}); resuming from ${tail}`,
            );
            after = tail;
          }
        }
        this.cursors.set(work.userId, after);
        await this.fill(work.userId, Number.POSITIVE_INFINITY, 'replay');
        if (this.closed) return;
        this.live = true;
        this.sendJson({ kind: 'ready', userId: work.userId, revision: this.cursors.get(work.userId) ?? -1 });
        return;
      }
      case 'event': {
        const { userId, revision } = work.item;
        const verdict = classify(this.cursors.get(userId), revision);
        if (verdict === 'duplicate') return;
        if (verdict === 'gap') {
          // Events were left to the store when the queue was full: read them, this one included.
          this.log.info(
            { from: this.cursors.get(userId)! + 1, to: revision },
            'gap in live events, reading the store',
          );
          await this.fill(userId, revision, 'gap');
          return;
        }
        await this.deliver(work.item, 'live');
        return;
      }
      case 'progress':
        if (this.ws.bufferedAmount <= this.lowWater) this.send(work.text, null);
        return;
      case 'fill': {
        const cursor = this.cursors.get(work.userId);
        if (cursor !== undefined && work.revision > cursor)
          await this.fill(work.userId, work.revision, 'gap');
        return;
      }
    }
  }

  /**
   * Sends the user's stored events after the cursor, up to `upTo`, pacing to the client's reading.
   * The store is read a page at a time, each page in its turn among the catch-up reads (at most
   * one per user and a few in all at once): the page is read and parsed in the turn, and sent
   * after it, so that a socket waiting for its client holds no turn.
   */
  private async fill(userId: string, upTo: number, source: 'replay' | 'gap'): Promise<void> {
    for (;;) {
      const from = (this.cursors.get(userId) ?? -1) + 1;
      if (from > upTo) break;
      const page = await this.ctx.catchUp.run(
        userId,
        () => collect(readNotifications(this.ctx.store, userId, from, upTo, CATCH_UP_PAGE)),
        () => this.closed,
      );
      if (page === null || this.closed) return;
      for (const item of page) {
        if (this.closed) return;
        const cursor = this.cursors.get(userId) ?? -1;
        if (item.revision <= cursor) continue;
        if (!(await this.deliver(item, source))) return;
      }
      // A short page is the end of the stream (or of `upTo`).
      if (page.length < CATCH_UP_PAGE) break;
    }
    const reached = this.cursors.get(userId) ?? -1;
    if (Number.isFinite(upTo) && reached < upTo && !this.closed) {
      this.log.warn(
        { reached, expected: upTo },
        'the store has fewer events than announced; the next check fills the rest',
      );
    }
  }

  /** Sends one stored event (or says it cannot be read) and moves the cursor; false once the socket is gone. */
  private async deliver(item: StoredItem, source: 'live' | 'replay' | 'gap'): Promise<boolean> {
    if ('unreadable' in item) {
      this.log.error(
        { revision: item.revision, reason: item.unreadable },
        'stored event cannot be read; skipped',
      );
      this.sendError(
        'UNREADABLE_EVENT',
        `revision ${item.revision} cannot be read by this notifier and was skipped`,
      );
      this.cursors.set(item.userId, item.revision);
      return true;
    }
    if (!(await this.writable())) return false;
    if (!this.send(item.text, source)) return false;
    this.cursors.set(item.userId, item.revision);
    return true;
  }

  /** Unsent bytes under which the next event may be sent. */
  private get lowWater(): number {
    return this.ctx.limits.maxBufferBytes / 2;
  }

  /**
   * Every event waits here before it is sent: until the socket has drained to half the limit, so
   * that what the notifier holds for one socket stays under the limit plus one event. A socket
   * that does not drain within `slowConsumerMs` has stopped reading and is cut off.
   */
  private async writable(): Promise<boolean> {
    const deadline = Date.now() + this.ctx.limits.slowConsumerMs;
    while (!this.closed && this.ws.bufferedAmount > this.lowWater) {
      if (Date.now() > deadline) {
        this.cutSlow();
        return false;
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    return !this.closed;
  }

  /**
   * Sends. Events come here through `writable`; the rest are small control messages (ready,
   * errors, pongs at the client's own rate limit), sent without pacing.
   */
  private send(text: string, source: 'live' | 'replay' | 'gap' | null): boolean {
    if (this.closed) return false;
    this.ws.send(text);
    if (source) this.ctx.metrics.sent.inc({ source });
    return true;
  }

  private cutSlow(): void {
    this.log.warn(
      { buffered: this.ws.bufferedAmount, limit: this.ctx.limits.maxBufferBytes },
      'client stopped reading; cut off',
    );
    this.close(CLOSE_CODES.slowConsumer, 'SLOW_CONSUMER', 'slow_consumer');
  }

  private sendError(code: string, message: string): void {
    this.sendJson({ kind: 'error', code, message });
  }

  private sendJson(n: Notification): void {
    this.send(JSON.stringify(n), null);
  }
}

async function collect<T>(items: AsyncIterable<T>): Promise<T[]> {
  const all: T[] = [];
  for await (const item of items) all.push(item);
  return all;
}

function bytesOf(work: Work): number {
  if (work.kind === 'event') return 'text' in work.item ? work.item.text.length : 0;
  return work.kind === 'progress' ? work.text.length : 0;
}
