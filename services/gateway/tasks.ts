import {
  ProtocolError,
  ProtocolErrorCode,
  RELATED_TASK_META_KEY,
  type CallToolResult,
} from '@modelcontextprotocol/server';
import { z } from 'zod';
import { executionIdFor, looksLikeExecutionId, type TerminalAnswer } from '../../contracts/index.ts';
import { cancelExecution, submitRequest, type InterimAnswer } from '../../lib/clients/agent.ts';
import { sleep } from '../../lib/retry.ts';
import { bodyOf, callWaitMs, checkFingerprint, requestOf, type Call, type CallDeps } from './calls.ts';
import type { ToolCatalog } from './catalog.ts';
import { readExecution, type Execution } from './executions.ts';
import { resultOf } from './mapping.ts';
import type { Caller } from './server.ts';

/**
 * Tasks as the 2025-11-25 revision defines them (docs/mcp.md, "Tasks"): a long-running tool called
 * with `params.task` answers at once with a task whose id is the execution id, once `ToolRequested`
 * is committed; the task's state is the execution's, read from the store through the dispatcher
 * each time it is asked. The gateway holds nothing, so a task outlives the gateway process.
 */

/** How often a client is asked to poll (`pollInterval`, ms). */
export const TASK_POLL_MS = 1_000;

/** The 2025-11-25 `Task` (the SDK keeps only its type, deprecated, and no runtime for it). */
// A type, not an interface: the SDK's result type wants an index signature.
export type Task = {
  taskId: string;
  /** `input_required`: it waits for an approver (a person, not the client: docs/approval.md). */
  status: 'working' | 'input_required' | 'completed' | 'failed' | 'cancelled';
  statusMessage?: string;
  createdAt: string;
  lastUpdatedAt: string;
  /** Toolbus keeps every execution: no expiry. */
  ttl: null;
  pollInterval: number;
};

export interface TaskDeps extends CallDeps {
  catalog: ToolCatalog;
  dispatcherUrl: string;
}

/** A task id is an execution id (the dispatcher's routes would also read a request id there). */
export const TaskParams = z.looseObject({ taskId: z.string().min(1).max(128) });

function statusOf(
  answer: TerminalAnswer | null,
  waiting?: Execution['awaitingApproval'],
): Pick<Task, 'status' | 'statusMessage'> {
  if (!answer && waiting) {
    return {
      status: 'input_required',
      statusMessage: `awaits approval by ${waiting.approverRoles.join(' or ')} until ${waiting.deadline}`,
    };
  }
  if (!answer) return { status: 'working' };
  if (answer.status === 'completed') return { status: 'completed' };
  const statusMessage = `${answer.error.code}: ${answer.error.message}`;
  return { status: answer.error.code === 'CANCELLED' ? 'cancelled' : 'failed', statusMessage };
}

export const taskOf = (e: Execution): Task => ({
  taskId: e.executionId,
  ...statusOf(e.answer, e.awaitingApproval),
  createdAt: e.createdAt,
  lastUpdatedAt: e.lastUpdatedAt,
  ttl: null,
  pollInterval: TASK_POLL_MS,
});

/**
 * Starts a call as a task: the request goes into the intake and the task is returned as soon as
 * the dispatcher says the execution is recorded (its first answer). The terminal answer is not
 * waited for; the client polls `tasks/get` and reads `tasks/result`. A refusal before anything
 * was recorded (OVERLOADED, ...) makes no task: it is answered as a failed call.
 */
export async function startTask(
  deps: TaskDeps,
  call: Omit<Call, 'signal' | 'onProgress'>,
): Promise<{ task: Task } | { result: TerminalAnswer }> {
  const { principal } = call;
  const { requestId, fingerprint } = requestOf(call);
  if (call.idempotencyKey) {
    // The same key again: the task is the execution already recorded, whatever its state.
    const known = await readExecution(
      deps.dispatcherUrl,
      call.token,
      executionIdFor(principal.userId, requestId),
    );
    if (known) {
      checkFingerprint(fingerprint, known, known.executionId);
      return { task: taskOf(known) };
    }
  }
  let recorded!: (a: InterimAnswer) => void;
  const firstInterim = new Promise<InterimAnswer>((resolve) => (recorded = resolve));
  const terminal = submitRequest(deps.nc, deps.js, {
    token: call.token,
    userId: principal.userId,
    requestId,
    body: bodyOf(call, requestId, fingerprint),
    onProgress: recorded,
    timeoutMs: callWaitMs(deps.timeoutMs, call.tool),
  });
  // The gateway stops listening at the terminal answer or its timeout; the execution goes on regardless.
  terminal.catch((e: unknown) => deps.log.warn({ err: e, requestId }, 'task: no terminal answer'));
  const first = await Promise.race([firstInterim, terminal]);
  checkFingerprint(fingerprint, first, executionIdFor(principal.userId, requestId));
  if (first.executionId === null) return { result: first as TerminalAnswer };
  // As tasks/get will show it: its times are its events' (the store has the first one by now).
  const stored = await readExecution(
    deps.dispatcherUrl,
    call.token,
    first.executionId,
    AbortSignal.timeout(2_000),
  ).catch(() => null);
  if (stored) return { task: taskOf(stored) };
  const now = new Date().toISOString();
  const answer = first.status === 'completed' || first.status === 'failed' ? first : null;
  return {
    task: {
      taskId: first.executionId,
      ...statusOf(answer),
      createdAt: now,
      lastUpdatedAt: now,
      ttl: null,
      pollInterval: TASK_POLL_MS,
    },
  };
}

const unknownTask = (taskId: string) =>
  new ProtocolError(ProtocolErrorCode.InvalidParams, `Unknown task: ${taskId}`);

/** `tasks/get`: the execution's state from the store. Another user's task is unknown. */
export async function getTask(deps: TaskDeps, caller: Caller, taskId: string): Promise<Task> {
  if (!looksLikeExecutionId(taskId)) throw unknownTask(taskId);
  const e = await readExecution(deps.dispatcherUrl, caller.token, taskId);
  if (!e) throw unknownTask(taskId);
  return taskOf(e);
}

/** `tasks/result`: waits (polling the store) for the terminal answer, then the call's result. */
export async function taskResult(
  deps: TaskDeps,
  caller: Caller,
  taskId: string,
  signal: AbortSignal,
): Promise<CallToolResult> {
  for (;;) {
    const e = looksLikeExecutionId(taskId)
      ? await readExecution(deps.dispatcherUrl, caller.token, taskId, signal)
      : null;
    if (!e) throw unknownTask(taskId);
    if (e.answer) {
      const tool = await deps.catalog.find(caller.principal, e.tool);
      const result = resultOf(e.answer, tool);
      return { ...result, _meta: { ...result._meta, [RELATED_TASK_META_KEY]: { taskId } } };
    }
    await sleep(TASK_POLL_MS / 4, signal);
  }
}

/** `tasks/cancel`: a Toolbus cancel of the execution; a task already ended cannot be cancelled. */
export async function cancelTask(deps: TaskDeps, caller: Caller, taskId: string): Promise<Task> {
  const before = await getTask(deps, caller, taskId);
  if (before.status !== 'working' && before.status !== 'input_required') {
    throw new ProtocolError(
      ProtocolErrorCode.InvalidParams,
      `task ${taskId} has already ended (${before.status})`,
    );
  }
  const r = await cancelExecution(
    deps.nc,
    { executionId: taskId, reason: 'the MCP client: tasks/cancel' },
    { token: caller.token },
  );
  const after = await getTask(deps, caller, taskId);
  // The cancel was delivered to a running tool that has not stopped yet: it ends CANCELLED.
  return r.cancelled && after.status === 'working' ? { ...after, status: 'cancelled' } : after;
}
