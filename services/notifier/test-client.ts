import { WebSocket } from 'ws';
import type { Notification } from '../../contracts/index.ts';

/**
 * A real WebSocket client for the notifier's tests: collects every notification, and waits for
 * conditions instead of sleeping.
 */
export interface TestClient {
  ws: WebSocket;
  received: Notification[];
  /** The event notifications, in arrival order. */
  events(): Array<Extract<Notification, { kind: 'event' }>>;
  revisions(): number[];
  send(message: unknown): void;
  waitFor(what: string, condition: () => boolean, timeoutMs?: number): Promise<void>;
  /** Resolves with the close code and reason when the socket closes. */
  closed: Promise<{ code: number; reason: string }>;
  isClosed(): boolean;
}

export interface OpenOptions {
  ticket?: string;
  origin?: string;
  /** The local address to connect from (any 127.x.y.z on Linux), to look like another host. */
  localAddress?: string;
}

export async function openClient(address: string, options: OpenOptions = {}): Promise<TestClient> {
  const url = new URL('/ws', address.replace(/^http/, 'ws'));
  if (options.ticket !== undefined) url.searchParams.set('ticket', options.ticket);
  const ws = new WebSocket(url, {
    ...(options.origin ? { origin: options.origin } : {}),
    ...(options.localAddress ? { localAddress: options.localAddress } : {}),
  });
  const received: Notification[] = [];
  let closedAt: { code: number; reason: string } | null = null;
  const closed = new Promise<{ code: number; reason: string }>((resolve) => {
    ws.on('close', (code, reason) => {
      closedAt = { code, reason: reason.toString() };
      resolve(closedAt);
    });
  });
  ws.on('message', (data) => {
    received.push(JSON.parse((data as Buffer).toString('utf8')) as Notification);
  });
  await new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('unexpected-response', (_req, res) => {
      ws.terminate();
      reject(new UpgradeRefused(res.statusCode ?? 0));
    });
    ws.once('error', reject);
  });
  ws.on('error', () => undefined);
  const events = () =>
    received.filter((n): n is Extract<Notification, { kind: 'event' }> => n.kind === 'event');
  return {
    ws,
    received,
    events,
    revisions: () => events().map((e) => e.revision),
    send: (message) => ws.send(typeof message === 'string' ? message : JSON.stringify(message)),
    waitFor: (what, condition, timeoutMs = 20_000) => waitFor(what, condition, timeoutMs),
    closed,
    isClosed: () => closedAt !== null,
  };
}

export class UpgradeRefused extends Error {
  constructor(readonly status: number) {
    super(`upgrade refused with HTTP ${status}`);
  }
}

export async function waitFor(what: string, condition: () => boolean, timeoutMs = 20_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** POST /tickets; returns the status and the parsed body. */
export async function requestTicket(
  address: string,
  token: string | null,
  origin?: string,
): Promise<{ status: number; body: TicketAnswer }> {
  const headers: Record<string, string> = {};
  if (token !== null) headers['authorization'] = `Bearer ${token}`;
  if (origin) headers['origin'] = origin;
  const res = await fetch(new URL('/tickets', address), { method: 'POST', headers });
  return { status: res.status, body: (await res.json()) as TicketAnswer };
}

/** A ticket, or a refusal in every service's error shape. */
interface TicketAnswer {
  ticket?: string;
  error?: { code: string; message: string; details?: { reason?: string } };
}

/** A ticket; while the notifier's Redis is still connecting (503), it asks again (up to 30 s). */
export async function ticketFor(address: string, token: string): Promise<string> {
  for (const deadline = Date.now() + 30_000; ;) {
    const { status, body } = await requestTicket(address, token);
    if (status === 201 && body.ticket) return body.ticket;
    if (status !== 503 || Date.now() > deadline)
      throw new Error(`no ticket: ${status} ${JSON.stringify(body)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Opens a socket with a fresh ticket and subscribes; resolves once the replay is done (`ready`). */
export async function subscribe(
  address: string,
  token: string,
  options: { afterRevision?: number; userId?: string } = {},
): Promise<TestClient> {
  const client = await openClient(address, { ticket: await ticketFor(address, token) });
  client.send({ type: 'subscribe', ...options });
  await client.waitFor('ready', () => client.received.some((n) => n.kind === 'ready') || client.isClosed());
  if (client.isClosed()) throw new Error(`closed before ready: ${JSON.stringify(await client.closed)}`);
  return client;
}
