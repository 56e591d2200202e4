import { randomUUID } from 'node:crypto';
import {
  envelopeEvents,
  requestContext,
  executionIdFor,
  GENESIS_HASH,
  notificationName,
  subjects,
  userStream,
  type Notification,
  type ToolEvent,
  type ToolEventBody,
} from '../../contracts/index.ts';
import type { EventStore } from '../../lib/eventstore/types.ts';
import type { NatsConnection } from '../../lib/nats.ts';
import { fromRecorded, toEventData } from '../../lib/toolEvents.ts';

/**
 * Writes well-formed, chained executions into a user's stream the way the dispatcher does, for
 * tests of the parts downstream of it (projector, notifier, auditor). Optionally publishes each
 * event on NATS as the dispatcher would.
 */
export interface RecordOptions {
  requestId?: string;
  tool?: string;
  version?: string;
  args?: Record<string, unknown>;
  outcome?: 'completed' | 'failed' | 'executing' | 'requested' | 'refused';
  durationMs?: number;
  code?:
    'TOOL_ERROR' | 'TIMEOUT' | 'FORBIDDEN' | 'VALIDATION' | 'CANCELLED' | 'INTERRUPTED' | 'OUTPUT_INVALID';
  result?: unknown;
  at?: Date;
  nats?: NatsConnection;
}

export async function streamTail(
  store: EventStore,
  userId: string,
): Promise<{ revision: number; hash: string }> {
  for await (const e of store.readStream(userStream(userId), { direction: 'backwards', maxCount: 1 })) {
    return { revision: e.revision, hash: (e.metadata as { hash: string }).hash };
  }
  return { revision: -1, hash: GENESIS_HASH };
}

export async function recordExecution(
  store: EventStore,
  userId: string,
  options: RecordOptions = {},
): Promise<{ executionId: string; requestId: string; events: ToolEvent[]; revisions: number[] }> {
  const requestId = options.requestId ?? randomUUID();
  const executionId = executionIdFor(userId, requestId);
  const tool = options.tool ?? 'noop';
  const outcome = options.outcome ?? 'completed';
  const durationMs = options.durationMs ?? 5;
  const bodies: ToolEventBody[] = [
    {
      type: 'ToolRequested',
      data: { tool, version: options.version ?? '1.0.0', args: (options.args ?? {}) as never, redacted: [] },
    },
  ];
  if (outcome === 'refused') {
    bodies.push({
      type: 'ToolFailed',
      data: { error: { code: options.code ?? 'FORBIDDEN', message: 'refused' }, durationMs: null },
    });
  } else if (outcome !== 'requested') {
    bodies.push({ type: 'ToolExecuting', data: { attempt: 1, runner: 'test', timeoutMs: 1000 } });
    if (outcome === 'completed') {
      bodies.push({
        type: 'ToolCompleted',
        data: { result: (options.result ?? { ok: true }) as never, redacted: [], durationMs, cached: false },
      });
    } else if (outcome === 'failed') {
      bodies.push({
        type: 'ToolFailed',
        data: { error: { code: options.code ?? 'TOOL_ERROR', message: 'it failed' }, durationMs },
      });
    }
  }
  const at = options.at ?? new Date();
  for (;;) {
    const tail = await streamTail(store, userId);
    // The terminal event of a run comes `durationMs` after the others.
    const occurredAt = (i: number) =>
      new Date(at.getTime() + (i === bodies.length - 1 && i > 1 ? durationMs : 0)).toISOString();
    const events = envelopeEvents(bodies, requestContext(userId, requestId, occurredAt), tail.hash);
    try {
      const result = await store.append(
        userStream(userId),
        events.map(toEventData),
        tail.revision < 0 ? 'no_stream' : tail.revision,
      );
      const revisions = events.map((_, i) => result.nextRevision - events.length + 1 + i);
      if (options.nats) {
        events.forEach((event, i) => {
          const n: Notification = {
            kind: 'event',
            name: notificationName(event.type),
            userId,
            revision: revisions[i]!,
            event,
          };
          options.nats!.publish(subjects.events(userId), JSON.stringify(n));
        });
      }
      return { executionId, requestId, events, revisions };
    } catch (e) {
      if ((e as { code?: string }).code === 'WRONG_EXPECTED_REVISION') continue;
      throw e;
    }
  }
}

/** Every event of a user's stream, parsed. */
export async function readUserEvents(
  store: EventStore,
  userId: string,
): Promise<Array<{ revision: number; event: ToolEvent }>> {
  const out: Array<{ revision: number; event: ToolEvent }> = [];
  for await (const r of store.readStream(userStream(userId))) {
    const parsed = fromRecorded(r);
    if (!parsed.ok) throw new Error(parsed.reason);
    out.push({ revision: parsed.revision, event: parsed.event });
  }
  return out;
}
