import type { ExecutionCommand } from '../../contracts/index.ts';
import { redact, type RunnableTool } from '../../lib/tools/index.ts';
import { answered, refuseAttempt, REUSED, sendInterim } from './answer.ts';
import { askOfExecution, isConflict } from './ask.ts';
import { recheckWait, settleWait, startApproved } from './approval.ts';
import { answerFromTerminal } from './answers.ts';
import { handleExecution } from './commands.ts';
import type { Disposition } from './delivery.ts';
import { runAttempt } from './handling.ts';
import { probeRunner } from './liveness.ts';
import { requestCancel, type Handling, type Shell } from './shell.ts';
import { lastExecutingOf, terminalOf, type Execution } from './streams.ts';

/**
 * The execution is already in the stream (a retry, a redelivery, a duplicate, a dispatcher that
 * died): answer from its terminal event, or leave it to a live runner, or let the decider say what
 * becomes of it (`Recover` with what is known of its runner: start or re-run, INTERRUPTED,
 * CANCELLED when a cancel was recorded).
 */
export async function existing(
  shell: Shell,
  h: Handling,
  execution: Execution,
  tool: RunnableTool | undefined,
): Promise<Disposition> {
  h.recorded = true;
  h.recordedAsk = askOfExecution(execution) ?? undefined;
  // The request id of another request: that one stands, untouched by this delivery.
  if (isConflict(h.recordedAsk, h.request)) return refuseAttempt(shell, h, REUSED);
  const state = execution.state;
  if (state.status !== 'none' && state.status !== 'awaiting_approval' && state.approval)
    settleWait(shell, h.ref.executionId);
  const again = () => existing(shell, h, execution, tool);
  switch (state.status) {
    case 'completed':
    case 'failed': {
      const answer = answerFromTerminal(terminalOf(execution)!);
      void shell.o.guard.remember(h.ref.userId, h.ref.requestId, answer, h.recordedAsk);
      return answered(shell, h, answer, false);
    }
    case 'none':
      // Nothing recorded after all (cannot happen with a store that keeps event ids unique).
      throw new Error(`execution ${h.ref.executionId} is neither new nor recorded`);
    case 'requested':
    case 'executing':
      return recover(shell, h, execution, tool);
    case 'awaiting_approval':
      return recheckWait(shell, h, execution, again);
    case 'approved':
      return startApproved(shell, h, execution, tool, () => runAttempt(shell, h, execution, tool!), again);
    default: {
      const unknown: never = state;
      throw new Error(`unknown state ${JSON.stringify(unknown)}`);
    }
  }
}

async function recover(
  shell: Shell,
  h: Handling,
  execution: Execution,
  tool: RunnableTool | undefined,
): Promise<Disposition> {
  const { streams, metrics, log } = shell.o;
  const state = execution.state;
  const attempt = state.status === 'executing' ? state.attempt : 0;
  const runner = await liveRunnerElsewhere(shell, execution);
  if (runner) {
    // A cancel that reached this delivery is recorded; its runner learns of it from the wake-up.
    if (h.cancel) {
      await handleExecution(streams, execution, requestCancel(h.cancel, new Date()));
      shell.o.wakeRunner?.(h.ref.executionId);
    }
    metrics.redeliveries.inc({ action: 'deferred' });
    log.info(
      { userId: h.ref.userId, executionId: h.ref.executionId, runner },
      'execution still running elsewhere; request deferred',
    );
    return { ack: false, retryInMs: shell.deferMs };
  }
  const commands: ExecutionCommand[] = h.cancel ? [requestCancel(h.cancel, new Date())] : [];
  if ((state.status !== 'none' && state.cancel) || h.cancel || (tool && sameRequest(h, execution, tool))) {
    commands.push({
      type: 'Recover',
      data: {
        // Nobody runs it (checked above).
        liveness: 'dead',
        idempotent: tool?.manifest.idempotent ?? false,
        maxAttempts: Number.MAX_SAFE_INTEGER,
        runner: shell.o.dispatcherId,
        timeoutMs: tool?.manifest.timeoutMs ?? 0,
        now: new Date().toISOString(),
      },
    });
  } else {
    // It cannot be run again from this delivery, whatever the decider would allow.
    const why = tool ? 'its tool is now another version' : 'its tool is no longer available';
    commands.push({
      type: 'Fail',
      data: {
        error: { code: 'INTERRUPTED', message: `the dispatcher running this execution stopped; ${why}` },
        durationMs: null,
      },
    });
  }
  const { appended } = await handleExecution(streams, execution, commands, { attempt });
  const last = appended.at(-1);
  if (!last) return existing(shell, h, execution, tool);
  if (last.type === 'ToolExecuting') {
    metrics.redeliveries.inc({ action: 'rerun' });
    log.warn(
      { userId: h.ref.userId, executionId: h.ref.executionId, attempt: last.data.attempt, tool: h.toolLabel },
      'unfinished execution found: running it',
    );
    sendInterim(shell, h, 'executing');
    return runAttempt(shell, h, execution, tool!);
  }
  if (last.type === 'ToolFailed' && last.data.error.code === 'INTERRUPTED') {
    metrics.redeliveries.inc({ action: 'interrupted' });
    log.warn(
      { userId: h.ref.userId, executionId: h.ref.executionId, tool: h.toolLabel },
      'unfinished execution found: INTERRUPTED',
    );
  }
  return answered(shell, h, answerFromTerminal(last), true);
}

/**
 * Whether the delivery asks for what is recorded, of the tool this dispatcher would run: the same
 * tool and version, and the same arguments (`isConflict`, checked before recovery, compares them).
 */
function sameRequest(h: Handling, execution: Execution, tool: RunnableTool): boolean {
  const requested = execution.events.find((e) => e.type === 'ToolRequested');
  return (
    h.request !== null &&
    requested?.type === 'ToolRequested' &&
    requested.data.tool === tool.manifest.name &&
    requested.data.version === tool.manifest.version &&
    !requested.data.argsOmitted
  );
}

/** The dispatcher running the execution's last attempt, when it is another one and says it still runs it. */
export async function liveRunnerElsewhere(shell: Shell, execution: Execution): Promise<string | null> {
  const runner = lastExecutingOf(execution)?.data.runner;
  if (!runner || runner === shell.o.dispatcherId) return null;
  const answer = await probeRunner(shell.o.nc, runner, execution.ref.executionId, shell.probeTimeoutMs);
  return answer === 'running' ? runner : null;
}

/**
 * Ends a request that keeps failing: `GiveUp` (after a minimal `Request`, its arguments all
 * redacted, when nothing is recorded), answered. An execution that has ended is answered as it
 * ended; one that runs on a live dispatcher is left to it.
 */
export async function giveUp(shell: Shell, h: Handling, failures: number): Promise<Disposition> {
  const execution = await shell.o.streams.load(h.ref);
  // Another request's id: that one's failures are its own to count.
  if (isConflict(askOfExecution(execution), h.request)) return refuseAttempt(shell, h, REUSED);
  const state = execution.state;
  if (state.status === 'completed' || state.status === 'failed')
    return existing(shell, h, execution, undefined);
  if (await liveRunnerElsewhere(shell, execution)) return { ack: false, retryInMs: shell.deferMs };
  const give: ExecutionCommand = {
    type: 'GiveUp',
    data: {
      reason: `the dispatcher failed to handle this request ${failures} times and gave it up`,
      details: { failures },
    },
  };
  const args = h.request?.args ?? {};
  const { value, redacted } = redact(args, Object.keys(args));
  const tool = h.tool?.manifest;
  const request: ExecutionCommand = {
    type: 'Request',
    data: { tool: tool?.name ?? h.toolLabel, version: tool?.version ?? null, args: value, redacted },
  };
  // Request decides nothing on a recorded execution; GiveUp ends whatever is not ended.
  const { appended } = await handleExecution(shell.o.streams, execution, [request, give]);
  h.recordedAsk = askOfExecution(execution) ?? undefined;
  const last = appended.at(-1);
  if (!last) return existing(shell, h, execution, undefined);
  shell.o.metrics.redeliveries.inc({ action: 'given_up' });
  return answered(shell, h, answerFromTerminal(last), true);
}
