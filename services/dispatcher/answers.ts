import {
  httpStatusOfCode,
  type ErrorCode,
  type RefusalCode,
  type TerminalAnswer,
} from '../../contracts/index.ts';

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
 * What the refusal of a body that does not parse (VALIDATION, recorded under its request id) adds
 * to its message: every repeat of the id gets that refusal, so the corrected request needs another.
 */
export const spentRequestIdNote = (requestId: string): string =>
  ` (request id ${requestId} is now spent on this refusal: send the corrected request with a new one)`;

/**
 * HTTP status of a terminal answer (POST /executions), from the catalogue (contracts/errors.ts):
 * the request's own faults are 4xx; a tool that ran and failed is 502 (the gateway ran it, the tool
 * failed), a tool that ran out of time 504.
 */
export function httpStatusOf(answer: TerminalAnswer): number {
  return answer.status === 'completed' ? 200 : httpStatusOfCode(answer.error.code);
}

/** Outcome label for metrics: `completed` or the error code. */
export const outcomeOf = (answer: TerminalAnswer): string =>
  answer.status === 'completed' ? (answer.cached ? 'cached' : 'completed') : answer.error.code;
