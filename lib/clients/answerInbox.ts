import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import { AgentAnswer, executionIdFor, type TerminalAnswer } from '../../contracts/index.ts';
import { inboxFor } from '../nats.ts';

export type InterimAnswer = Exclude<AgentAnswer, TerminalAnswer>;

const isTerminal = (a: AgentAnswer): a is TerminalAnswer => a.status === 'completed' || a.status === 'failed';

/** Terminal answers kept for a retry from the same connection (they never change once given). */
const RECENT_ANSWERS = 1_024;

/** One request waiting for its answer on the connection's inbox. */
export interface Waiter {
  /** Where this attempt's answers go: `<inbox>.<ask digest>.<n>`, under the shared subscription. */
  readonly replyTo: string;
  /** The terminal answer (or a rejection when the inbox closes). */
  readonly answer: Promise<TerminalAnswer>;
  /**
   * Marks this attempt as the one JetStream accepted (not a duplicate): its answer comes to this
   * inbox, so other attempts of the same request here need not look it up while it waits.
   */
  own(): void;
  /** Resolves when no attempt of this request owning the answer waits here any more. */
  ownersGone(): Promise<void>;
  /** Delivers a terminal answer found another way (a lookup). */
  settle(answer: TerminalAnswer): void;
  /**
   * Calls `listener` at the connection's next reconnect, once the server has the inbox's
   * subscription again (an answer sent while the connection was away reached nobody); returns
   * its removal. Released with the waiter.
   */
  onReconnect(listener: () => void): () => void;
  /** Stops waiting (after the answer, a timeout or a failure). */
  release(): void;
}

interface Entry {
  requestId: string;
  /** The execution id the request will have: answers to another user's request never match. */
  executionId: string;
  /** `<executionId>/<ask digest>`: attempts of the same request that ask the same. */
  key: string;
  replyTo: string;
  onProgress: ((a: InterimAnswer) => void) | undefined;
  resolve(a: TerminalAnswer): void;
  reject(e: Error): void;
  owner: boolean;
  /** Its `onReconnect` listeners, removed with it. */
  reconnectListeners: Set<() => void> | undefined;
}

/**
 * One subscription per connection for every answer its requests wait for: each request's
 * `replyTo` is `<inbox>.<ask digest>.<n>` under the connection's own prefix (`inboxFor`), and the
 * one subscription on `<inbox>.>` routes each answer to the attempts waiting for it: by execution
 * id and what they ask (every attempt of the same request of the same user here, whichever inbox
 * the dispatcher answered), and by `replyTo` for refusals that name no execution.
 *
 * Routing by execution id, not request id: one connection (the dispatcher's HTTP API) carries
 * requests of many users, who may choose the same request id. And by what they ask (`askDigest`
 * of the tool and arguments, carried in the reply subject): an attempt that reuses a request id
 * for another tool or other arguments is refused by the dispatcher (IDEMPOTENCY_CONFLICT), and
 * must never get the first request's answer here.
 */
export class AnswerInbox {
  private readonly base: string;
  private sub: Subscription | null = null;
  private seq = 0;
  private readonly byExecution = new Map<string, Set<Entry>>();
  private readonly byReplyTo = new Map<string, Entry>();
  private readonly recent = new Map<string, TerminalAnswer>();
  private readonly ownerWatchers = new Map<string, Array<() => void>>();
  /** Called at the connection's next reconnect (`Waiter.onReconnect`). */
  private readonly reconnectListeners = new Set<() => void>();
  private watchingReconnects = false;
  /** How many subscriptions this inbox made (one, unless the connection closed in between). */
  subscriptions = 0;

  constructor(
    private readonly nc: NatsConnection,
    /** The error a waiting attempt of `requestId` fails with when the inbox cannot serve it. */
    private readonly onClosed: (cause: Error, requestId: string) => Error,
  ) {
    this.base = inboxFor(nc);
  }

  /**
   * Registers an attempt of `requestId` by `userId` before it is published; `ask` is the
   * `askDigest` of its tool and arguments.
   */
  wait(userId: string, requestId: string, ask: string, onProgress?: (a: InterimAnswer) => void): Waiter {
    this.subscribe(requestId);
    const executionId = executionIdFor(userId, requestId);
    const key = `${executionId}/${ask}`;
    const replyTo = `${this.base}.${ask}.${++this.seq}`;
    let entry!: Entry;
    const answer = new Promise<TerminalAnswer>((resolve, reject) => {
      entry = {
        requestId,
        executionId,
        key,
        replyTo,
        onProgress,
        resolve,
        reject,
        owner: false,
        reconnectListeners: undefined,
      };
    });
    // Rejections are the caller's to handle; a released waiter's rejection must not go unhandled.
    answer.catch(() => undefined);
    const set = this.byExecution.get(key) ?? new Set<Entry>();
    set.add(entry);
    this.byExecution.set(key, set);
    this.byReplyTo.set(replyTo, entry);
    const known = this.recent.get(key);
    if (known) entry.resolve(known);
    return {
      replyTo,
      answer,
      own: () => {
        entry.owner = true;
      },
      ownersGone: () => this.ownersGone(key),
      settle: (a) => {
        this.remember(key, a);
        entry.resolve(a);
      },
      onReconnect: (listener) => {
        this.watchReconnects();
        const once = () => {
          remove();
          listener();
        };
        const remove = () => {
          this.reconnectListeners.delete(once);
          entry.reconnectListeners?.delete(once);
        };
        this.reconnectListeners.add(once);
        (entry.reconnectListeners ??= new Set()).add(once);
        return remove;
      },
      release: () => this.release(entry),
    };
  }

  /** Watches the connection's status (once per inbox) for the reconnects `onReconnect` waits for. */
  private watchReconnects(): void {
    if (this.watchingReconnects) return;
    this.watchingReconnects = true;
    void (async () => {
      for await (const status of this.nc.status()) {
        if (status.type !== 'reconnect') continue;
        // Once the flush returns the server has this connection's subscriptions again: an answer
        // sent from then on comes to the inbox, one sent before is for the lookup to find.
        await this.nc.flush().catch(() => undefined);
        for (const listener of [...this.reconnectListeners]) listener();
      }
    })().catch(() => undefined);
  }

  private subscribe(requestId: string): void {
    if (this.sub && !this.sub.isClosed()) return;
    if (this.nc.isClosed()) throw this.onClosed(new Error('the connection is closed'), requestId);
    this.subscriptions++;
    const sub = this.nc.subscribe(`${this.base}.>`, {
      callback: (err, msg) => {
        if (err) return this.fail(err);
        let parsed;
        try {
          parsed = AgentAnswer.safeParse(msg.json());
        } catch {
          return; // not JSON: nothing a dispatcher sends
        }
        if (parsed.success) this.route(msg.subject, parsed.data);
      },
    });
    this.sub = sub;
    void sub.closed.then((e) => {
      if (this.sub === sub) this.fail(e ?? new Error('the subscription closed before the answer came'));
    });
  }

  /** The key of the attempts an answer to `replyTo` is for (null when it names no execution). */
  private keyOf(replyTo: string, a: AgentAnswer): string | null {
    if (a.executionId === null) return null;
    const ask = replyTo.slice(this.base.length + 1).split('.')[0];
    return `${a.executionId}/${ask}`;
  }

  /** Every attempt waiting here that this answer is for. */
  private targets(replyTo: string, key: string | null, a: AgentAnswer): Set<Entry> {
    const out = new Set<Entry>();
    const direct = this.byReplyTo.get(replyTo);
    if (direct && (a.requestId === null || a.requestId === direct.requestId)) out.add(direct);
    if (key !== null) for (const e of this.byExecution.get(key) ?? []) out.add(e);
    return out;
  }

  private route(replyTo: string, a: AgentAnswer): void {
    const key = this.keyOf(replyTo, a);
    if (isTerminal(a) && key !== null) this.remember(key, a);
    for (const entry of this.targets(replyTo, key, a)) {
      if (isTerminal(a)) {
        entry.resolve(a);
        continue;
      }
      try {
        entry.onProgress?.(a);
      } catch {
        // the caller's callback failing must not lose the answer
      }
    }
  }

  private remember(key: string, a: TerminalAnswer): void {
    if (a.executionId === null) return;
    this.recent.delete(key);
    this.recent.set(key, a);
    if (this.recent.size > RECENT_ANSWERS) this.recent.delete(this.recent.keys().next().value!);
  }

  private release(entry: Entry): void {
    for (const listener of entry.reconnectListeners ?? []) this.reconnectListeners.delete(listener);
    this.byReplyTo.delete(entry.replyTo);
    const set = this.byExecution.get(entry.key);
    set?.delete(entry);
    if (set?.size === 0) this.byExecution.delete(entry.key);
    if (entry.owner && !this.hasOwner(entry.key)) {
      for (const w of this.ownerWatchers.get(entry.key) ?? []) w();
      this.ownerWatchers.delete(entry.key);
    }
  }

  private hasOwner(key: string): boolean {
    for (const e of this.byExecution.get(key) ?? []) if (e.owner) return true;
    return false;
  }

  private ownersGone(key: string): Promise<void> {
    if (!this.hasOwner(key)) return Promise.resolve();
    return new Promise((resolve) => {
      const list = this.ownerWatchers.get(key) ?? [];
      list.push(resolve);
      this.ownerWatchers.set(key, list);
    });
  }

  /** The subscription failed or closed: every waiting attempt fails; the next one subscribes again. */
  private fail(cause: Error): void {
    this.sub = null;
    for (const entry of this.byReplyTo.values()) entry.reject(this.onClosed(cause, entry.requestId));
  }
}

const inboxes = new WeakMap<NatsConnection, AnswerInbox>();

/** The connection's one answer inbox (made on first use). */
export function answerInboxOf(
  nc: NatsConnection,
  onClosed: (cause: Error, requestId: string) => Error,
): AnswerInbox {
  let inbox = inboxes.get(nc);
  if (!inbox) {
    inbox = new AnswerInbox(nc, onClosed);
    inboxes.set(nc, inbox);
  }
  return inbox;
}
