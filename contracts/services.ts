import { z } from 'zod';
import { REQUEST_ID_PATTERN } from './ids.ts';
import type { ToolEvent } from './events.ts';
import { AgentAnswer } from './request.ts';

/**
 * The request/reply services every dispatcher serves beside the intake, as they travel on NATS.
 * Their client is lib/clients/agent.ts; their servers are services/dispatcher/lookup.ts and
 * cancel.ts.
 */

/** The queue group of the dispatchers' request/reply services: one instance answers each request. */
export const DISPATCHERS_QUEUE = 'toolbus-dispatchers';

/**
 * "What became of request R?": request/reply on `subjects.answers(userId, agentId)` (the asking identity), the token in the
 * Authorization header, body `{"requestId": R, "tool": T, "ask": D}`, T and D (optional) the tool
 * and the `askDigest` of the asker's request. The reply is an `AnswersReply`:
 * - `{"answer": TerminalAnswer}`: R's terminal answer (or a refusal of the lookup itself:
 *   UNAUTHENTICATED, FORBIDDEN, MALFORMED, which concern the asker, not R; or IDEMPOTENCY_CONFLICT,
 *   naming no execution, when R was recorded asking another tool or other arguments than T and D
 *   say, whether R has ended or not);
 * - `{"answer": null}`: R has no terminal event yet (or is unknown);
 * - `{"answer": null, "overloaded": {"retryAfterMs": n}}`: the dispatcher did not look (more
 *   lookups in flight than its bound) or gave up at its deadline; ask again, not before n ms;
 * - `{"answer": null, "shed": n}`: R is not recorded, and the intake shed a message of it n times
 *   unrun (it waited longer than INTAKE_MAX_WAIT_MS): nothing will answer it. JetStream would drop
 *   the same message id again as a repeat: publish R again under `<message id>~<n>`
 *   (`requestMsgId`'s `republish`). Older clients read it as "no answer yet".
 *
 * OVERLOADED is a field beside a null answer, not a failed answer: an older client takes a failed
 * answer as R's own terminal answer, and R may well have completed. An older client reads the
 * overload as "no answer yet" and asks again, which is safe.
 */
export const AnswersReply = z.object({
  answer: AgentAnswer.nullable(),
  overloaded: z.strictObject({ retryAfterMs: z.number().int().min(0) }).optional(),
  shed: z.number().int().min(1).optional(),
});
export type AnswersReply = z.infer<typeof AnswersReply>;

/**
 * Cancellation: request/reply on `toolbus.cancel.<userId>.<agentId>`, the token in the Authorization header
 * (the execution's user, or an admin), body `{"executionId": id}` or `{"requestId": id}`; the
 * reply is a `CancelResult`.
 */
/** Why, in a few words: recorded in `ToolCancelRequested` (else "asked through nats"). */
export const CancelReason = z.string().trim().min(1).max(500);

export const CancelRequest = z.union([
  z.strictObject({ executionId: z.uuid(), reason: CancelReason.optional() }),
  z.strictObject({ requestId: z.string().regex(REQUEST_ID_PATTERN), reason: CancelReason.optional() }),
]);
export type CancelRequest = z.infer<typeof CancelRequest>;

/**
 * What a cancel request did. `cancelled` is true when this request found the execution unfinished
 * and it ended CANCELLED; `status` is the execution's status afterwards (`unknown`: no such
 * execution of that user; `executing`: the cancel was delivered but it has not ended yet;
 * `refused`: the cancel request itself was refused, see `error`); `answer` is its terminal answer
 * when it has one (for a cancel that lost a race, the completed answer).
 */
export const CancelResult = z.strictObject({
  executionId: z.string().nullable(),
  requestId: z.string().nullable(),
  cancelled: z.boolean(),
  status: z.enum(['completed', 'failed', 'executing', 'unknown', 'refused']),
  answer: AgentAnswer.nullable(),
  message: z.string(),
  error: z
    .strictObject({
      /** `NOT_FOUND` and `ALREADY_ENDED`: HTTP only, beside the status `unknown` and an ended one. */
      code: z.enum([
        'UNAUTHENTICATED',
        'FORBIDDEN',
        'MALFORMED',
        'UNAVAILABLE',
        'NOT_FOUND',
        'ALREADY_ENDED',
      ]),
      message: z.string(),
    })
    .optional(),
});
export type CancelResult = z.infer<typeof CancelResult>;

/** An execution id as `executionIdFor` makes them (a version 5 UUID, in either case); anything else is taken as a request id. */
export const looksLikeExecutionId = (id: string): boolean =>
  /^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/i.test(id);

export type TerminalAnswer = Extract<AgentAnswer, { status: 'completed' | 'failed' }>;
type FailedAnswer = Extract<AgentAnswer, { status: 'failed' }>;

/** The answer to a request refused before anything was recorded: no execution, the reason only. */
export const unrecordedFailure = (
  requestId: string,
  error: FailedAnswer['error'],
  correlationId: string | null = null,
): FailedAnswer => ({ status: 'failed', requestId, executionId: null, correlationId, error });

/** The terminal answer a stored terminal event stands for: the same whether live or replayed. */
export function answerFromTerminal(event: ToolEvent): TerminalAnswer {
  const ids = {
    requestId: event.metadata.requestId,
    executionId: event.metadata.executionId,
    correlationId: event.metadata.correlationId,
  };
  if (event.type === 'ToolCompleted') {
    return {
      status: 'completed',
      ...ids,
      result: event.data.result,
      durationMs: event.data.durationMs,
      cached: event.data.cached,
    };
  }
  if (event.type === 'ToolFailed') {
    const { code, message, details } = event.data.error;
    return { status: 'failed', ...ids, error: details ? { code, message, details } : { code, message } };
  }
  throw new Error(`${event.type} is not a terminal event`);
}
