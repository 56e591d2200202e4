import diagnosticsChannel from 'node:diagnostics_channel';

/**
 * Where a dispatch's time goes, as marks on Node's diagnostics channels (the mechanism undici and
 * fastify use): nothing is built or published unless something in the process subscribes, so the
 * marks cost a property read each when no one listens. The benchmark subscribes (bench/lib/steps.ts,
 * benchmark 1b); an operator can too, in a preloaded module.
 *
 * Each mark names a request by user and request id, and carries `performance.now()` of the
 * process that made it: compare marks of one process, not across processes.
 */
export type DispatcherStep =
  /** The dispatcher took the delivery (before its token and body were checked). */
  | 'received'
  /** Redis answered its admission (idempotency, rate, concurrency), whatever the verdict. */
  | 'admitted'
  /** The first append of a new execution committed (for a call that runs: ToolRequested and ToolExecuting). */
  | 'recorded'
  /** The tool returned. */
  | 'ran'
  /** The outcome's append committed. */
  | 'completed'
  /** The terminal answer was published to the agent. */
  | 'answered';

export type AgentStep =
  /** The agent client publishes the request to the intake. */
  | 'sent'
  /** JetStream acknowledged it: stored. */
  | 'stored';

export interface StepMark<S extends string> {
  userId: string;
  requestId: string;
  step: S;
  at: number;
}

export const dispatcherSteps = diagnosticsChannel.channel('toolbus:dispatcher:step');
export const agentSteps = diagnosticsChannel.channel('toolbus:agent:step');

export function markDispatcher(
  ref: { userId: string; requestId: string },
  step: DispatcherStep,
  at?: number,
): void {
  if (!dispatcherSteps.hasSubscribers) return;
  const mark: StepMark<DispatcherStep> = {
    userId: ref.userId,
    requestId: ref.requestId,
    step,
    at: at ?? performance.now(),
  };
  dispatcherSteps.publish(mark);
}

export function markAgent(userId: string, requestId: string, step: AgentStep): void {
  if (!agentSteps.hasSubscribers) return;
  const mark: StepMark<AgentStep> = { userId, requestId, step, at: performance.now() };
  agentSteps.publish(mark);
}
