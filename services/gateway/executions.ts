import { z } from 'zod';
import { AgentAnswer, isTerminalAnswer, type TerminalAnswer } from '../../contracts/index.ts';

/** What the dispatcher's GET /executions/:executionId answers (the parts the gateway reads). */
const ExecutionView = z.object({
  executionId: z.string(),
  requestId: z.string(),
  correlationId: z.string(),
  tool: z.string(),
  answer: AgentAnswer.nullable(),
  events: z.array(z.object({ metadata: z.object({ occurredAt: z.string() }) })).min(1),
});

export interface Execution {
  executionId: string;
  requestId: string;
  correlationId: string;
  tool: string;
  /** The terminal answer, once there is one. */
  answer: TerminalAnswer | null;
  createdAt: string;
  lastUpdatedAt: string;
}

/**
 * An execution as the store has it, read through the dispatcher's HTTP API with the user's own
 * token (GET /executions/:id reads only the caller's stream, through the execution index): what
 * task state is made of, the same from any gateway process and after a restart.
 */
export async function readExecution(
  dispatcherUrl: string,
  token: string,
  executionId: string,
  signal?: AbortSignal,
): Promise<Execution | null> {
  const res = await fetch(new URL(`/executions/${encodeURIComponent(executionId)}`, dispatcherUrl), {
    headers: { authorization: `Bearer ${token}` },
    signal: signal ? AbortSignal.any([signal, AbortSignal.timeout(10_000)]) : AbortSignal.timeout(10_000),
  });
  // 404: not this user's (or no such) execution; 400: not an execution id at all.
  if (res.status === 404 || res.status === 400) return null;
  if (!res.ok) throw new Error(`the dispatcher answered GET /executions with ${res.status}`);
  const view = ExecutionView.parse(await res.json());
  return {
    executionId: view.executionId,
    requestId: view.requestId,
    correlationId: view.correlationId,
    tool: view.tool,
    answer: view.answer && isTerminalAnswer(view.answer) ? (view.answer as TerminalAnswer) : null,
    createdAt: view.events[0]!.metadata.occurredAt,
    lastUpdatedAt: view.events.at(-1)!.metadata.occurredAt,
  };
}
