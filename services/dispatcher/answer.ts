import { subjects, UNKNOWN_TOOL_LABEL, type AgentAnswer, type Notification } from '../../contracts/index.ts';
import { outcomeOf, refusal, type TerminalAnswer } from './answers.ts';
import { errorInfo, type Disposition } from './delivery.ts';
import type { Handling, Shell } from './shell.ts';
import { markDispatcher } from '../../lib/diagnostics.ts';

/** Publishes an answer to each reply subject; a failed publish is logged (the agent can ask again). */
export function reply(shell: Shell, to: string | undefined | Iterable<string>, answer: AgentAnswer): void {
  const targets = to === undefined ? [] : typeof to === 'string' ? [to] : [...to];
  if (targets.length === 0) return;
  const body = JSON.stringify(answer);
  for (const subject of targets) {
    try {
      shell.o.nc.publish(subject, body);
    } catch (e) {
      shell.o.log.warn({ err: errorInfo(e), subject }, 'answer publish failed');
    }
  }
}

/** Tells an agent that asked for progress that its request was recorded, or started. */
export function sendInterim(shell: Shell, h: Handling, status: 'requested' | 'executing'): void {
  if (!h.progress) return;
  const { requestId, executionId, correlationId } = h.ref;
  reply(shell, h.replyTos, { status, requestId, executionId, correlationId });
}

/** A tool's progress: to the user's progress subject (the notifier), and to the agent when it asked. */
export function sendProgress(shell: Shell, h: Handling, p: { fraction: number; message?: string }): void {
  const { userId, requestId, executionId, correlationId } = h.ref;
  const message = p.message === undefined ? {} : { message: p.message };
  const n: Notification = {
    kind: 'progress',
    userId,
    executionId,
    correlationId,
    fraction: p.fraction,
    ...message,
  };
  shell.o.nc.publish(subjects.progress(userId), JSON.stringify(n));
  if (h.progress) {
    reply(shell, h.replyTos, {
      status: 'progress',
      requestId,
      executionId,
      correlationId,
      fraction: p.fraction,
      ...message,
    });
  }
}

/**
 * Refuses this delivery alone, recording nothing for it: its request id is another request's. The
 * answer names no execution (the agent client routes answers that name one to every attempt
 * waiting for it, and the request that owns the id may wait on the same connection), goes to this
 * delivery's reply subject only, and duplicates that joined this handling are handled again on
 * their own (the owner's message may be among them).
 */
export function refuseAttempt(shell: Shell, h: Handling, why: string): Disposition {
  const { userId, requestId, executionId } = h.ref;
  h.attemptOnly = true;
  shell.o.log.info(
    { userId, requestId, executionId, tool: h.toolLabel, code: 'IDEMPOTENCY_CONFLICT' },
    'request refused: its request id is another request’s',
  );
  reply(shell, h.ownReplyTo, conflictRefusal(requestId, why));
  h.settleOutcome(null);
  return { ack: true };
}

/** The answer to a request whose request id is another request's (nothing recorded for it). */
export const conflictRefusal = (requestId: string, why: string): TerminalAnswer =>
  refusal(
    'IDEMPOTENCY_CONFLICT',
    `request id ${requestId} ${why}; send this request under a new request id`,
    {
      requestId,
    },
  );

/** Why a request id reused for another request is refused. */
export const REUSED = 'was first used with another tool or other arguments';

/**
 * Sends the terminal answer, remembers it (Redis) when this handling produced it (`fresh`), counts
 * it; the request can be acked.
 */
export async function answered(
  shell: Shell,
  h: Handling,
  answer: TerminalAnswer,
  fresh: boolean,
): Promise<Disposition> {
  // Each reply subject gets the terminal answer once; a delivery that joins later answers its own.
  const to = [...h.replyTos].filter((s) => !h.answeredTo.has(s));
  for (const s of to) h.answeredTo.add(s);
  reply(shell, to, answer);
  markDispatcher(h.ref, 'answered');
  h.settleOutcome(answer);
  if (fresh) {
    const slot = h.slot;
    h.slot = undefined;
    await shell.o.guard.finish({
      userId: h.ref.userId,
      requestId: h.ref.requestId,
      answer,
      ask: h.recordedAsk,
      ...(slot ? { slot } : {}),
      ...(h.cacheKey ? { cacheKey: h.cacheKey } : {}),
    });
  }
  const outcome = outcomeOf(answer);
  // Only names the registry knows become labels (see UNKNOWN_TOOL_LABEL).
  const tool = h.tool ? h.tool.manifest.name : UNKNOWN_TOOL_LABEL;
  const { metrics, log } = shell.o;
  metrics.executions.inc({ tool, outcome });
  metrics.duration.observe({ tool, outcome }, (performance.now() - h.startedAt) / 1000);
  log.info(
    {
      userId: h.ref.userId,
      requestId: h.ref.requestId,
      executionId: h.ref.executionId,
      tool: h.toolLabel,
      outcome,
      replay: !fresh,
      ms: Math.round(performance.now() - h.startedAt),
    },
    'request answered',
  );
  return { ack: true };
}
