import {
  approvalNeeded,
  argsHash,
  type ApprovalNeed,
  type DestructiveDefault,
  type ExecutionCommand,
} from '../../contracts/index.ts';
import type { RunnableTool } from '../../lib/tools/index.ts';
import { refuseAttempt, reply, sendInterim } from './answer.ts';
import { waitOf, type ApprovalWaits } from './approvals.ts';
import { handleExecution } from './commands.ts';
import { errorInfo, type Disposition } from './delivery.ts';
import { requestCancel, type Handling, type Shell } from './shell.ts';
import type { Execution } from './streams.ts';

/**
 * Approval in the dispatcher shell (docs/approval.md). A call that needs it is recorded waiting
 * (`Request` + `RequestApproval`, one append) and its JetStream message is handed back with a
 * delay instead of acked: the message keeps the exact arguments (the store has them redacted) and
 * the agent's reply subject, and each time it comes back the store says what became of the wait:
 * still waiting (back again later, or `Expire` once the deadline passed), approved (run it, bound
 * to the hash of the arguments about to run), or ended (denied, expired, cancelled: answered).
 */

export interface ApprovalSettings {
  waits: ApprovalWaits;
  /** The operator's policy for destructive tools without their own (null: they run unasked). */
  destructive: DestructiveDefault;
  /** How soon a waiting request first comes back to see whether it was decided; then twice as late each time. */
  recheckMs: number;
  /** The longest wait between two rechecks. */
  recheckMaxMs: number;
  /** Calls of one user that may wait at once; the next that needs approval is refused. */
  maxWaitsPerUser: number;
}

/**
 * Whether the user may have one more call waiting: null when so, else the refusal. The count is
 * read from the waiting list, so calls that ask at the same moment may pass it by a few; when the
 * list cannot be read the call is let through (logged), as the list heals at the next recheck.
 */
export async function waitsRefusal(
  shell: Shell,
  h: Handling,
): Promise<{ code: 'RATE_LIMITED'; message: string; details: Record<string, unknown> } | null> {
  const max = shell.o.approvals.maxWaitsPerUser;
  let open: number;
  try {
    open = await shell.o.approvals.waits.openOf(h.ref.userId, new Date(), max);
  } catch (e) {
    shell.o.log.warn(
      { err: errorInfo(e), userId: h.ref.userId },
      'approval waits not counted; the call may wait',
    );
    return null;
  }
  if (open < max) return null;
  return {
    code: 'RATE_LIMITED',
    message: `you have ${open} calls waiting for approval already (APPROVAL_MAX_WAITS_PER_USER); retry with a new request id when one has been decided`,
    details: { limit: 'approvals', waiting: open },
  };
}

/**
 * How soon a waiting request comes back: after as long as it has waited so far, at least
 * `recheckMs` and at most `recheckMaxMs` (1, 1, 2, 4, 5, 5 … s by default), and never after the
 * deadline. Counted from when the approval was asked for, not from JetStream's deliveries, which
 * also grow when a message is handed back for other reasons (and start again with a new consumer).
 */
export function nextRecheckMs(
  settings: Pick<ApprovalSettings, 'recheckMs' | 'recheckMaxMs'>,
  waitedMs: number,
  untilDeadlineMs: number,
): number {
  const every = Math.min(Math.max(waitedMs, settings.recheckMs), settings.recheckMaxMs);
  return Math.max(1, Math.min(every, untilDeadlineMs + 1));
}

/** What this call needs: the manifest's policy on its exact arguments, or the destructive default. */
export function approvalNeedOf(shell: Shell, h: Handling, tool: RunnableTool): ApprovalNeed | null {
  return h.request ? approvalNeeded(tool.manifest, h.request.args, shell.o.approvals.destructive) : null;
}

/** `RequestApproval` for this call, its deadline counted from `now`. */
export function requestApproval(h: Handling, need: ApprovalNeed, now: Date): ExecutionCommand {
  return {
    type: 'RequestApproval',
    data: {
      argsHash: argsHash(h.request!.args),
      approverRoles: need.approverRoles,
      deadline: new Date(now.getTime() + need.timeoutMs).toISOString(),
      requesterId: h.ref.userId,
      allowSelfApproval: need.allowSelfApproval,
    },
  };
}

/**
 * The execution waits for an approver: it is kept on the waiting list (again, after a crash), the
 * agent hears it (first time), and the request comes back at the next check or at the deadline.
 */
export async function waitForApproval(
  shell: Shell,
  h: Handling,
  execution: Execution,
  first: boolean,
): Promise<Disposition> {
  const state = execution.state;
  if (state.status !== 'awaiting_approval') throw new Error('waitForApproval: it does not wait');
  const wait = waitOf(execution);
  // The list heals at the next recheck: PostgreSQL away must not fail (and at last give up) the call.
  if (wait) {
    await shell.o.approvals.waits
      .record(wait)
      .catch((e: unknown) =>
        shell.o.log.warn(
          { err: errorInfo(e), executionId: wait.executionId },
          'approval wait not listed; the next recheck will',
        ),
      );
  }
  // Waiting is not running: the user's concurrency slot is free for their other calls now.
  if (h.slot) {
    await shell.o.guard.release(h.ref.userId, h.slot);
    h.slot = undefined;
  }
  if (first) {
    shell.o.metrics.approvals.inc({ event: 'requested' });
    sendInterim(shell, h, 'requested');
    if (h.progress) {
      const { requestId, executionId, correlationId } = h.ref;
      const { argsHash: hash, approverRoles, deadline } = state.approval;
      reply(shell, h.replyTos, {
        status: 'awaiting_approval',
        requestId,
        executionId,
        correlationId,
        argsHash: hash,
        approverRoles,
        deadline,
      });
    }
    shell.o.log.info(
      {
        userId: h.ref.userId,
        executionId: h.ref.executionId,
        tool: h.toolLabel,
        deadline: state.approval.deadline,
      },
      'execution awaits approval',
    );
  }
  const now = Date.now();
  const waited = wait ? now - Date.parse(wait.requestedAt) : 0;
  const untilDeadline = Date.parse(state.approval.deadline) - now;
  return { ack: false, retryInMs: nextRecheckMs(shell.o.approvals, waited, untilDeadline) };
}

/**
 * A request that came back while its execution waits: a cancel that reached it is recorded (the
 * decider ends it CANCELLED), a passed deadline ends it APPROVAL_EXPIRED; else it waits on.
 * `next` handles whatever it is now when it no longer waits.
 */
export async function recheckWait(
  shell: Shell,
  h: Handling,
  execution: Execution,
  next: () => Promise<Disposition>,
): Promise<Disposition> {
  const now = new Date();
  const command: ExecutionCommand = h.cancel
    ? requestCancel(h.cancel, now)
    : { type: 'Expire', data: { now: now.toISOString() } };
  const { appended } = await handleExecution(shell.o.streams, execution, command);
  if (appended.at(-1)?.type === 'ToolFailed' && command.type === 'Expire')
    shell.o.metrics.approvals.inc({ event: 'expired' });
  if (execution.state.status === 'awaiting_approval') return waitForApproval(shell, h, execution, false);
  return next();
}

/**
 * An approved execution's request came back: run it. `StartAttempt` carries the hash of the
 * arguments of this delivery, so the decider refuses to run other arguments than those approved
 * (a request id reused with other arguments is refused here, unrecorded: the approved call stays).
 */
export async function startApproved(
  shell: Shell,
  h: Handling,
  execution: Execution,
  tool: RunnableTool | undefined,
  run: () => Promise<Disposition>,
  next: () => Promise<Disposition>,
): Promise<Disposition> {
  const state = execution.state;
  if (state.status !== 'approved') return next();
  const commands: ExecutionCommand[] = h.cancel ? [requestCancel(h.cancel, new Date())] : [];
  if (!tool || !h.request) {
    commands.push({
      type: 'Fail',
      data: {
        error: { code: 'INTERRUPTED', message: 'it was approved, but its tool is no longer available' },
        durationMs: null,
      },
    });
  } else {
    const hash = argsHash(h.request.args);
    if (hash !== state.approval.argsHash) {
      // Other arguments than those approved (those whose redacted form is the same: a sensitive
      // field's value changed): this attempt alone is refused, the approved call stays.
      return refuseAttempt(shell, h, 'was approved for other arguments');
    }
    // It runs within the user's concurrency limit like any call; at the limit it stays approved
    // and comes back.
    const slot = `${shell.o.dispatcherId}:${h.delivery.id}`;
    const taken = await shell.o.guard.takeSlot(
      h.ref.userId,
      slot,
      tool.manifest.timeoutMs + shell.slotMarginMs,
    );
    if (taken === 'busy') return { ack: false, retryInMs: shell.o.approvals.recheckMs };
    if (taken === 'go') h.slot = slot;
    commands.push({
      type: 'StartAttempt',
      data: { runner: shell.o.dispatcherId, timeoutMs: tool.manifest.timeoutMs, argsHash: hash },
    });
  }
  const { appended } = await handleExecution(shell.o.streams, execution, commands);
  if (appended.at(-1)?.type === 'ToolExecuting') {
    shell.o.log.info({ userId: h.ref.userId, executionId: h.ref.executionId }, 'approved execution starts');
    sendInterim(shell, h, 'executing');
    return run();
  }
  return next();
}

/** Takes an execution that no longer waits off the waiting list (logged when PostgreSQL is away). */
export function settleWait(shell: Shell, executionId: string): void {
  shell.o.approvals.waits
    .settle(executionId)
    .catch((e: unknown) =>
      shell.o.log.warn({ err: errorInfo(e), executionId }, 'approval wait not settled; the sweep will'),
    );
}
