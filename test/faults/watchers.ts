import { WebSocket } from 'ws';
import { Notification, type ToolEvent } from '../../contracts/index.ts';
import type { User } from './load.ts';

/**
 * A browser-like WebSocket client of the notifier, one per user: it gets a ticket (or, when the
 * notifier cannot issue one, authenticates with the `auth` message), subscribes after the last
 * revision it has, keeps every event notification it is sent, and after any close reconnects
 * and resumes, as the live page's client does. What it received, over all its connections, is
 * what the checker compares with the user's stream.
 */

export interface Received {
  revision: number;
  event: ToolEvent;
  /** The user the notification said it was for. */
  userId: string;
  connection: number;
}

export class Watcher {
  readonly received: Received[] = [];
  /** Every close the client saw: code and reason. */
  readonly closes: Array<{ code: number; reason: string }> = [];
  /** Notifications that were not valid contract `Notification`s, or of another user. */
  readonly invalid: string[] = [];
  /** Server `error` notifications. */
  readonly errors: Array<{ code: string; message: string }> = [];
  connections = 0;
  readies = 0;
  private ws: WebSocket | null = null;
  private stopped = false;
  private loop: Promise<void> | null = null;
  private wake: (() => void) | null = null;

  constructor(
    readonly baseUrl: string,
    readonly user: User,
  ) {}

  /** The last revision received (-1 before any). */
  get last(): number {
    return this.received.at(-1)?.revision ?? -1;
  }

  start(): this {
    this.loop ??= this.run();
    return this;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.ws?.terminate();
    this.wake?.();
    await this.loop;
  }

  /** Drops the connection as a flaky network would; the client reconnects and resumes. */
  drop(): void {
    this.ws?.terminate();
  }

  private async run(): Promise<void> {
    let backoff = 200;
    while (!this.stopped) {
      const gotReady = await this.connectOnce().catch(() => false);
      if (this.stopped) break;
      backoff = gotReady ? 200 : Math.min(backoff * 2, 2_000);
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        setTimeout(resolve, backoff);
      });
      this.wake = null;
    }
  }

  private async ticket(): Promise<string | null> {
    try {
      const res = await fetch(new URL('/tickets', this.baseUrl), {
        method: 'POST',
        headers: { authorization: `Bearer ${this.user.token}` },
        signal: AbortSignal.timeout(3_000),
      });
      if (res.status !== 201) return null;
      const body = (await res.json()) as { ticket?: string };
      return body.ticket ?? null;
    } catch {
      return null;
    }
  }

  /** One connection, until it closes; resolves whether it reached `ready`. */
  private async connectOnce(): Promise<boolean> {
    const ticket = await this.ticket();
    if (this.stopped) return false;
    const url = new URL('/ws', this.baseUrl.replace(/^http/, 'ws'));
    if (ticket) url.searchParams.set('ticket', ticket);
    const ws = new WebSocket(url, { handshakeTimeout: 5_000 });
    this.ws = ws;
    const connection = ++this.connections;
    let ready = false;
    return new Promise<boolean>((resolve) => {
      ws.on('open', () => {
        if (!ticket) ws.send(JSON.stringify({ type: 'auth', token: this.user.token }));
        ws.send(JSON.stringify({ type: 'subscribe', afterRevision: this.last }));
      });
      ws.on('message', (data) => {
        let n: Notification;
        try {
          const parsed = Notification.safeParse(JSON.parse((data as Buffer).toString('utf8')));
          if (!parsed.success) {
            this.invalid.push((data as Buffer).toString('utf8').slice(0, 300));
            return;
          }
          n = parsed.data;
        } catch {
          this.invalid.push((data as Buffer).toString('utf8').slice(0, 300));
          return;
        }
        if (n.kind === 'event') {
          if (n.userId !== this.user.userId || n.event.metadata.userId !== this.user.userId) {
            this.invalid.push(
              `event of user ${n.userId} (${n.event.metadata.userId}) on ${this.user.userId}'s socket`,
            );
          }
          this.received.push({ revision: n.revision, event: n.event, userId: n.userId, connection });
        } else if (n.kind === 'ready') {
          ready = true;
          this.readies++;
        } else if (n.kind === 'error') {
          this.errors.push({ code: n.code, message: n.message });
        }
      });
      ws.on('error', () => undefined);
      ws.on('close', (code, reason) => {
        this.closes.push({ code, reason: reason.toString() });
        if (this.ws === ws) this.ws = null;
        resolve(ready);
      });
    });
  }
}

export function startWatchers(baseUrl: string, users: User[]): Watcher[] {
  return users.map((u) => new Watcher(baseUrl, u).start());
}
