import { jetstream } from '@nats-io/jetstream';
import { headers } from '@nats-io/transport-node';
import { REQUEST_HEADERS, subjects, type ToolEvent } from '../../contracts/index.ts';
import type { TerminalAnswer } from '../../lib/clients/agent.ts';
import { connectionIdentity, inboxFor, type NatsConnection } from '../../lib/nats.ts';
import type { EventStore } from '../../lib/eventstore/types.ts';
import { fromRecorded } from '../../lib/toolEvents.ts';
import { readStreams } from './checker.ts';
import type { FaultStack } from './harness.ts';
import { parseTerminal, type User } from './load.ts';

/** Pieces several fault tests share. */

/** `n` users named `<prefix>-<i>` with valid user tokens. */
export async function makeUsers(fs: FaultStack, prefix: string, n: number): Promise<User[]> {
  return Promise.all(
    Array.from({ length: n }, async (_, i) => {
      const userId = `${prefix}-${i}`;
      return { userId, token: await fs.token(userId) };
    }),
  );
}

/** Every execution of the store, by id: its user, and its events in order. */
export async function executions(
  store: EventStore,
): Promise<Map<string, { userId: string; requestId: string; events: ToolEvent[] }>> {
  const out = new Map<string, { userId: string; requestId: string; events: ToolEvent[] }>();
  for (const list of (await readStreams(store)).values()) {
    for (const r of list) {
      const p = fromRecorded(r);
      if (!p.ok) continue;
      const id = p.event.metadata.executionId;
      let x = out.get(id);
      if (!x) out.set(id, (x = { userId: p.userId, requestId: p.event.metadata.requestId, events: [] }));
      x.events.push(p.event);
    }
  }
  return out;
}

/** Executions whose last event is `ToolExecuting`: running now, or left by a dead runner. */
export async function running(
  store: EventStore,
): Promise<Array<{ executionId: string; userId: string; tool: string; runner: string; attempt: number }>> {
  const out = [];
  for (const [executionId, x] of await executions(store)) {
    const last = x.events.at(-1);
    const requested = x.events[0];
    if (last?.type === 'ToolExecuting' && requested?.type === 'ToolRequested') {
      out.push({
        executionId,
        userId: x.userId,
        tool: requested.data.tool,
        runner: last.data.runner,
        attempt: last.data.attempt,
      });
    }
  }
  return out;
}

/** The runner ids recorded in `ToolExecuting` events of the store. */
export async function runners(store: EventStore): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const x of (await executions(store)).values()) {
    for (const e of x.events) {
      if (e.type === 'ToolExecuting') out.set(e.data.runner, (out.get(e.data.runner) ?? 0) + 1);
    }
  }
  return out;
}

export interface RawRequest {
  subject: string;
  /** An object gets `replyTo` set to a fresh inbox (unless it has one); bytes are sent as they are. */
  body: Record<string, unknown> | Uint8Array | string;
  /** The bearer token (null: no Authorization header). */
  token: string | null;
  /** `Nats-Msg-Id` (default none). */
  msgId?: string;
  /** How long to wait for a terminal answer (default 10 s); 0: do not wait. */
  timeoutMs?: number;
}

/**
 * Publishes a request into the intake the way a hostile or careless agent might (any subject,
 * body, token and message id), and waits for a terminal answer on its inbox. Null when none came.
 */
export async function rawRequest(nc: NatsConnection, r: RawRequest): Promise<TerminalAnswer | null> {
  const inbox = inboxFor(nc);
  const sub = nc.subscribe(inbox);
  try {
    const data =
      r.body instanceof Uint8Array
        ? r.body
        : typeof r.body === 'string'
          ? new TextEncoder().encode(r.body)
          : new TextEncoder().encode(JSON.stringify({ replyTo: inbox, ...r.body }));
    const h = headers();
    if (r.token !== null) h.set(REQUEST_HEADERS.authorization, `Bearer ${r.token}`);
    if (r.msgId) h.set(REQUEST_HEADERS.msgId, r.msgId);
    await jetstream(nc).publish(r.subject, data, { headers: h });
    const timeoutMs = r.timeoutMs ?? 10_000;
    if (timeoutMs === 0) return null;
    const timer = setTimeout(() => sub.unsubscribe(), timeoutMs);
    try {
      for await (const m of sub) {
        const a = parseTerminal(m.data);
        if (a) return a;
      }
    } finally {
      clearTimeout(timer);
    }
    return null;
  } finally {
    sub.unsubscribe();
  }
}

/**
 * What the dispatchers say became of (user, request id), asked as the agent client does on
 * `toolbus.answers.<user>`; polls until a terminal answer is there or `timeoutMs` passes.
 */
export async function lookupAnswer(
  nc: NatsConnection,
  user: User,
  requestId: string,
  timeoutMs = 10_000,
): Promise<TerminalAnswer | null> {
  const h = headers();
  h.set(REQUEST_HEADERS.authorization, `Bearer ${user.token}`);
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      const reply = await nc.request(
        subjects.answers(user.userId, connectionIdentity(nc)),
        JSON.stringify({ requestId }),
        {
          timeout: 3_000,
          headers: h,
        },
      );
      const answer = reply.json<{ answer?: unknown }>().answer;
      if (answer) {
        const parsed = parseTerminal(new TextEncoder().encode(JSON.stringify(answer)));
        if (parsed) return parsed;
      }
    } catch {
      // no dispatcher answered in time; ask again
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  return null;
}
