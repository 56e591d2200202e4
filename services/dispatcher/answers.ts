import type { ErrorCode, RefusalCode, TerminalAnswer } from '../../contracts/index.ts';

export { answerFromTerminal, type TerminalAnswer } from '../../contracts/index.ts';

/** The ids an answer names: all three once the user and request are known. */
export interface AnswerIds {
  requestId: string;
  executionId: string;
  correlationId: string;
}

/** A refusal that is answered but not recorded (no user is known, or nothing to record it under). */
export function refusal(
  code: RefusalCode | ErrorCode,
  message: string,
  ids: Partial<AnswerIds> = {},
): TerminalAnswer {
  return {
    status: 'failed',
    requestId: ids.requestId ?? null,
    executionId: ids.executionId ?? null,
    correlationId: ids.correlationId ?? null,
    error: { code, message },
  };
}

/**
 * HTTP status of a terminal answer (POST /executions). The request's own faults are 4xx; a tool
 * that ran and failed is 502 (the gateway ran it, the tool failed), a tool that ran out of time 504.
 */
export function httpStatusOf(answer: TerminalAnswer): number {
  if (answer.status === 'completed') return 200;
  const code = answer.error.code;
  switch (code) {
    case 'UNAUTHENTICATED':
      return 401;
    case 'FORBIDDEN':
    case 'DENIED':
      return 403;
    case 'APPROVAL_EXPIRED':
      return 410;
    case 'UNKNOWN_TOOL':
      return 404;
    case 'VALIDATION':
    case 'MALFORMED':
      return 400;
    case 'RATE_LIMITED':
      return 429;
    case 'OVERLOADED':
      return 503;
    case 'CANCELLED':
      return 409;
    case 'TIMEOUT':
      return 504;
    case 'TOOL_ERROR':
    case 'OUTPUT_INVALID':
    case 'INTERRUPTED':
      return 502;
    case 'INTERNAL':
      return 500;
    default: {
      const unknown: never = code;
      throw new Error(`unknown code ${String(unknown)}`);
    }
  }
}

/** Outcome label for metrics: `completed` or the error code. */
export const outcomeOf = (answer: TerminalAnswer): string =>
  answer.status === 'completed' ? (answer.cached ? 'cached' : 'completed') : answer.error.code;
