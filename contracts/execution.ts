import { hash } from 'node:crypto';
import type { z } from 'zod';
import { canonicalJson } from './chain.ts';
import type { ErrorCode, ExecutionError } from './errors.ts';
import type {
  CancelRequester,
  OmittedArgs,
  ToolApprovalRequestedData,
  ToolCompletedData,
  ToolEventBody,
  ToolFailedData,
  ToolRequestedData,
} from './events.ts';
import type { JsonObject } from './json.ts';

/**
 * The execution decider: one execution's whole policy as a pure function of its past events.
 *
 *   state    = events.reduce(evolve, initialState())
 *   events'  = decide(command, state)        // or a DecisionError
 *
 * Services are shells around it: load the execution's events, fold them, decide, append what was
 * decided with the expected revision (retry on a conflict), then act (run the tool, answer). Time,
 * ids and what is known of the world (is the runner alive? is the tool idempotent?) come in with
 * the command; nothing here reads a clock. The specification (execution.unit.spec.ts) is the
 * documentation of the life cycle; docs/lifecycle.md is a reading of it.
 *
 * Two rules hold for every command:
 *  - an ended execution (completed, failed) accepts nothing that changes it: a command repeated
 *    or arriving late decides no event, and the caller answers with the recorded end. Only an
 *    approval that contradicts the recorded outcome is refused (the approver must learn it);
 *  - an execution that was never requested accepts nothing but `Request` (and `Expire`, which
 *    finds nothing to expire).
 */

export interface ApprovalInfo {
  argsHash: string;
  approverRoles: string[];
  deadline: string;
  requesterId: string;
  allowSelfApproval: boolean;
  /** null while waiting. */
  decision: null | { outcome: 'approved' | 'denied'; approverId: string; approverRole: string };
}

export interface CancelInfo {
  by: z.infer<typeof CancelRequester>;
  reason: string;
  requestedAt: string;
}

/** What every requested execution knows, whatever its status. */
export interface Known {
  tool: string;
  version: string | null;
  /** How many attempts were started (ToolExecuting events). */
  attempts: number;
  /** The approval asked for, and its outcome once decided; null when the call needs none. */
  approval: ApprovalInfo | null;
  /** The cancel asked for; null when nobody asked. Only an executing execution lives on with one. */
  cancel: CancelInfo | null;
}

export type ExecutionState =
  | { status: 'none' }
  | (Known & { status: 'requested' })
  | (Known & { status: 'awaiting_approval'; approval: ApprovalInfo })
  | (Known & { status: 'approved'; approval: ApprovalInfo })
  | (Known & { status: 'executing'; attempt: number; runner: string; timeoutMs: number })
  | (Known & { status: 'completed' })
  | (Known & { status: 'failed'; code: ErrorCode });
export type ExecutionStatus = ExecutionState['status'];
type RequestedState = Exclude<ExecutionState, { status: 'none' }>;

/** What is known of the runner of an executing attempt when recovering it. */
export type RunnerLiveness = 'alive' | 'dead' | 'unknown';

/** What a tool's approval policy asks for: the data of `ToolApprovalRequested`. */
export type ApprovalRequirement = z.input<typeof ToolApprovalRequestedData>;

/** A principal acting on an approval: their id and the roles their token carries. */
export interface Approver {
  approverId: string;
  approverRoles: readonly string[];
}

export type ExecutionCommand =
  /** Record the request; with `approval`, it waits for an approver before it may run. */
  | {
      type: 'Request';
      data: z.input<typeof ToolRequestedData> & { approval?: ApprovalRequirement | undefined };
    }
  /** Ask for approval of a request already recorded (the policy was judged after admission). */
  | { type: 'RequestApproval'; data: ApprovalRequirement }
  /** Admission said no (validation, authorization, rate, unknown tool...): end it unrun. */
  | { type: 'Refuse'; data: ExecutionError }
  /** Run the first attempt. `argsHash` of the arguments about to run binds them to an approval. */
  | { type: 'StartAttempt'; data: { runner: string; timeoutMs: number; argsHash?: string | undefined } }
  | { type: 'Complete'; data: z.input<typeof ToolCompletedData> }
  /** End it with this error: the attempt failed (or the shell ended it before it ran). */
  | { type: 'Fail'; data: z.input<typeof ToolFailedData> }
  | { type: 'RequestCancel'; data: { by: z.infer<typeof CancelRequester>; reason: string; now: string } }
  /** A shell found it unfinished (a redelivery, a restart): decide from what is known of its runner. */
  | {
      type: 'Recover';
      data: {
        liveness: RunnerLiveness;
        idempotent: boolean;
        /** Attempts allowed in all; a re-run beyond them ends INTERRUPTED. */
        maxAttempts: number;
        /** Who would run the next attempt, and for how long. */
        runner: string;
        timeoutMs: number;
        now: string;
      };
    }
  /** The shell cannot handle it (it failed too often): end it INTERNAL. */
  | { type: 'GiveUp'; data: { reason: string; details?: Record<string, unknown> | undefined } }
  | { type: 'Approve'; data: Approver & { argsHash: string; reason?: string | undefined; now: string } }
  | { type: 'Deny'; data: Approver & { argsHash: string; reason: string; now: string } }
  /** End a wait whose deadline passed (a timer, a sweep or a recovery calls it with the time). */
  | { type: 'Expire'; data: { now: string } };
export type ExecutionCommandType = ExecutionCommand['type'];

/** Why a command was refused. The shell maps these to its answers (HTTP 409/403/410...). */
export const DECISION_ERROR_CODES = [
  /** The execution was never requested. */
  'NOT_REQUESTED',
  /** The command does not apply in this status (e.g. a refusal after admission). */
  'ILLEGAL_COMMAND',
  /** Nothing may run or end it but an approver, a cancel, the deadline or a give-up. */
  'AWAITING_APPROVAL',
  /** An attempt is running: a new one is decided by `Recover`, not started. */
  'ALREADY_RUNNING',
  /** Completion of an execution that is not running. */
  'NOT_RUNNING',
  /** Approve/Deny of an execution that does not wait for approval (or was decided otherwise). */
  'NOT_AWAITING',
  /** The arguments hash differs from the one approval was asked for. */
  'HASH_MISMATCH',
  /** The approver holds none of the approver roles. */
  'NOT_AN_APPROVER',
  /** The approver is the requester, and self-approval is not allowed. */
  'SELF_APPROVAL',
  /** The deadline passed: the caller should `Expire`. */
  'EXPIRED',
] as const;
export type DecisionErrorCode = (typeof DECISION_ERROR_CODES)[number];

/** A command the decider refuses, with why. Nothing was decided; nothing is to be appended. */
export class DecisionError extends Error {
  constructor(
    readonly code: DecisionErrorCode,
    readonly command: ExecutionCommandType,
    readonly status: ExecutionStatus,
    detail?: string,
  ) {
    super(`${command} refused (${code}) when the execution is ${status}${detail ? `: ${detail}` : ''}`);
    this.name = 'DecisionError';
  }
}

export const initialState = (): ExecutionState => ({ status: 'none' });

export const isTerminalState = (
  s: ExecutionState,
): s is Extract<ExecutionState, { status: 'completed' | 'failed' }> =>
  s.status === 'completed' || s.status === 'failed';

export const isAwaitingApproval = (
  s: ExecutionState,
): s is Extract<ExecutionState, { status: 'awaiting_approval' }> => s.status === 'awaiting_approval';

/** The number the next ToolExecuting would carry. */
export const nextAttempt = (s: ExecutionState): number => (s.status === 'none' ? 1 : s.attempts + 1);

/**
 * The hash an approval binds: SHA-256 (hex) of the canonical JSON of the arguments exactly as the
 * agent sent them, before redaction. Over the redacted form, two calls differing only in a
 * sensitive field (an account number, a recipient) would share one approval; over the exact form,
 * the shell can check at `StartAttempt` that what runs is what was approved. The cost: whoever
 * reads the stream (the user, auditors, admins) could confirm a guess of a low-entropy sensitive
 * value against the hash. docs/decisions/0012-execution-decider.md records the choice.
 */
export const argsHash = (args: JsonObject): string => hash('sha256', canonicalJson(args), 'hex');

/**
 * What a ToolRequested records instead of `args` it does not store (`argsOmitted`): the UTF-8 size
 * and `argsHash` of their canonical JSON. Pass them as the event would have held them (redacted).
 */
export function omitArgs(args: JsonObject): OmittedArgs {
  const json = canonicalJson(args);
  return { bytes: Buffer.byteLength(json, 'utf8'), sha256: hash('sha256', json, 'hex') };
}

const ms = (iso: string): number => {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) throw new TypeError(`not a date-time: ${iso}`);
  return t;
};
/** Whether the approval's deadline has passed at `now` (the deadline itself counts as passed). */
export const deadlinePassed = (approval: Pick<ApprovalInfo, 'deadline'>, now: string): boolean =>
  ms(now) >= ms(approval.deadline);

const failed = (code: ErrorCode, message: string, details?: Record<string, unknown>): ToolEventBody => ({
  type: 'ToolFailed',
  data: { error: details ? { code, message, details } : { code, message }, durationMs: null },
});

const approvalRequested = (a: ApprovalRequirement): ToolEventBody => ({
  type: 'ToolApprovalRequested',
  data: {
    argsHash: a.argsHash,
    approverRoles: [...a.approverRoles],
    deadline: a.deadline,
    requesterId: a.requesterId,
    allowSelfApproval: a.allowSelfApproval,
  },
});

const executing = (attempt: number, runner: string, timeoutMs: number): ToolEventBody => ({
  type: 'ToolExecuting',
  data: { attempt, runner, timeoutMs },
});

export function decide(command: ExecutionCommand, state: ExecutionState): ToolEventBody[] {
  const refuse = (code: DecisionErrorCode, detail?: string): never => {
    throw new DecisionError(code, command.type, state.status, detail);
  };
  if (command.type === 'Request') return request(command.data, state);
  if (command.type === 'Expire') return expire(command.data.now, state);
  if (state.status === 'none') return refuse('NOT_REQUESTED');
  if (command.type === 'Approve' || command.type === 'Deny') return decideApproval(command, state);
  if (isTerminalState(state)) return [];

  switch (command.type) {
    case 'RequestApproval':
      if (state.status === 'awaiting_approval') return [];
      if (state.status !== 'requested')
        return refuse('ILLEGAL_COMMAND', 'approval is asked before any attempt');
      return [approvalRequested(command.data)];
    case 'Refuse':
      if (state.status !== 'requested')
        return refuse('ILLEGAL_COMMAND', 'a refusal ends a request before admission');
      return [failed(command.data.code, command.data.message, command.data.details)];
    case 'StartAttempt': {
      if (state.status === 'awaiting_approval') return refuse('AWAITING_APPROVAL');
      if (state.status === 'executing') return refuse('ALREADY_RUNNING');
      if (state.approval && command.data.argsHash !== state.approval.argsHash) {
        return refuse('HASH_MISMATCH', 'the arguments about to run are not the ones approved');
      }
      return [executing(state.attempts + 1, command.data.runner, command.data.timeoutMs)];
    }
    case 'Complete':
      // A cancel asked for while it ran does not undo a result that arrived first: Complete wins.
      if (state.status !== 'executing') return refuse('NOT_RUNNING');
      return [
        { type: 'ToolCompleted', data: { ...command.data, redacted: [...(command.data.redacted ?? [])] } },
      ];
    case 'Fail':
      if (state.status === 'awaiting_approval') return refuse('AWAITING_APPROVAL');
      return [{ type: 'ToolFailed', data: { ...command.data } }];
    case 'RequestCancel': {
      if (state.status === 'executing' && state.cancel) return [];
      const asked: ToolEventBody = {
        type: 'ToolCancelRequested',
        data: { by: { ...command.data.by }, reason: command.data.reason, requestedAt: command.data.now },
      };
      // Running: the runner learns of it and ends the attempt CANCELLED (or completes first).
      if (state.status === 'executing') return [asked];
      // Not running: nothing to stop, so it ends now.
      return [asked, failed('CANCELLED', `cancelled before it ran: ${command.data.reason}`)];
    }
    case 'Recover':
      return recover(command.data, state);
    case 'GiveUp':
      return [failed('INTERNAL', command.data.reason, command.data.details)];
    default: {
      const unknown: never = command;
      throw new Error(`unknown command ${JSON.stringify(unknown)}`);
    }
  }
}

function request(
  data: Extract<ExecutionCommand, { type: 'Request' }>['data'],
  state: ExecutionState,
): ToolEventBody[] {
  // A request delivered again: already recorded, nothing new (the caller compares arguments).
  if (state.status !== 'none') return [];
  const { approval, ...requested } = data;
  const events: ToolEventBody[] = [
    { type: 'ToolRequested', data: { ...requested, redacted: [...(requested.redacted ?? [])] } },
  ];
  if (approval) events.push(approvalRequested(approval));
  return events;
}

function expire(now: string, state: ExecutionState): ToolEventBody[] {
  if (!isAwaitingApproval(state) || !deadlinePassed(state.approval, now)) return [];
  return [
    failed('APPROVAL_EXPIRED', `nobody approved or denied the call before ${state.approval.deadline}`, {
      deadline: state.approval.deadline,
    }),
  ];
}

function recover(
  r: Extract<ExecutionCommand, { type: 'Recover' }>['data'],
  state: Exclude<RequestedState, { status: 'completed' | 'failed' }>,
): ToolEventBody[] {
  switch (state.status) {
    case 'awaiting_approval':
      // Waiting is not running: nothing to recover but a deadline that passed meanwhile.
      return expire(r.now, state);
    case 'requested':
    case 'approved':
      // Admitted, never started: starting is safe whatever the tool. A live shell starts it itself.
      return r.liveness === 'alive' ? [] : [executing(state.attempts + 1, r.runner, r.timeoutMs)];
    case 'executing':
      // Unknown is not dead: decide nothing until the runner's lease says (or the shell gives up).
      if (r.liveness !== 'dead') return [];
      if (state.cancel) return [failed('CANCELLED', `cancelled; its runner ${state.runner} stopped`)];
      if (!r.idempotent) {
        return [
          failed(
            'INTERRUPTED',
            `its runner ${state.runner} stopped and ${state.tool} is not idempotent, so it is not run again`,
          ),
        ];
      }
      if (state.attempts >= r.maxAttempts) {
        return [
          failed(
            'INTERRUPTED',
            `its runner ${state.runner} stopped after ${state.attempts} attempts, the most allowed`,
            {
              attempts: state.attempts,
            },
          ),
        ];
      }
      return [executing(state.attempts + 1, r.runner, r.timeoutMs)];
    default: {
      const unknown: never = state;
      throw new Error(`unknown state ${JSON.stringify(unknown)}`);
    }
  }
}

function decideApproval(
  command: Extract<ExecutionCommand, { type: 'Approve' | 'Deny' }>,
  state: RequestedState,
): ToolEventBody[] {
  const refuse = (code: DecisionErrorCode, detail?: string): never => {
    throw new DecisionError(code, command.type, state.status, detail);
  };
  const approval = state.approval;
  if (!approval) return refuse('NOT_AWAITING', 'the call needs no approval');
  const { approverId, approverRoles, argsHash: hash, now } = command.data;
  const role = approval.approverRoles.find((r) => approverRoles.includes(r));
  if (role === undefined)
    return refuse('NOT_AN_APPROVER', `needs one of ${approval.approverRoles.join(', ')}`);
  if (approverId === approval.requesterId && !approval.allowSelfApproval) return refuse('SELF_APPROVAL');
  if (hash !== approval.argsHash) return refuse('HASH_MISMATCH', 'approval was asked for other arguments');

  const outcome = command.type === 'Approve' ? 'approved' : 'denied';
  if (state.status !== 'awaiting_approval') {
    // Decided already: the same decision again is a no-op, the other one is refused.
    if (approval.decision?.outcome === outcome) return [];
    return refuse(
      'NOT_AWAITING',
      approval.decision ? `already ${approval.decision.outcome}` : 'it ended unapproved',
    );
  }
  if (deadlinePassed(approval, now)) return refuse('EXPIRED', `the deadline was ${approval.deadline}`);

  if (command.type === 'Approve') {
    const reason = command.data.reason;
    return [
      {
        type: 'ToolApproved',
        data: { approverId, approverRole: role, argsHash: hash, ...(reason === undefined ? {} : { reason }) },
      },
    ];
  }
  return [
    {
      type: 'ToolDenied',
      data: { approverId, approverRole: role, argsHash: hash, reason: command.data.reason },
    },
    failed('DENIED', `denied by ${approverId} (${role}): ${command.data.reason}`, {
      approverId,
      approverRole: role,
    }),
  ];
}

const known = (state: ExecutionState): Known =>
  state.status === 'none'
    ? { tool: '', version: null, attempts: 0, approval: null, cancel: null }
    : {
        tool: state.tool,
        version: state.version,
        attempts: state.attempts,
        approval: state.approval,
        cancel: state.cancel,
      };

/**
 * What of an event the life-cycle rules (`evolve`, `eventProblem`) read: every ToolEventBody is
 * one. `lifecycleBody` cuts an event down to it (the auditor's worker threads send back only this,
 * not the arguments and results the rules never read).
 */
export type LifecycleBody =
  | Exclude<ToolEventBody, { type: 'ToolRequested' | 'ToolCompleted' | 'ToolFailed' }>
  | { type: 'ToolRequested'; data: Pick<z.infer<typeof ToolRequestedData>, 'tool' | 'version'> }
  | { type: 'ToolCompleted'; data: unknown }
  | { type: 'ToolFailed'; data: { error: Pick<ExecutionError, 'code'> } };

export function lifecycleBody(event: ToolEventBody): LifecycleBody {
  switch (event.type) {
    case 'ToolRequested':
      return { type: event.type, data: { tool: event.data.tool, version: event.data.version } };
    case 'ToolCompleted':
      return { type: event.type, data: null };
    case 'ToolFailed':
      return { type: event.type, data: { error: { code: event.data.error.code } } };
    case 'ToolExecuting':
      return { type: event.type, data: event.data };
    case 'ToolCancelRequested':
      return { type: event.type, data: event.data };
    case 'ToolApprovalRequested':
      return { type: event.type, data: event.data };
    case 'ToolApproved':
      return { type: event.type, data: event.data };
    case 'ToolDenied':
      return { type: event.type, data: event.data };
    default: {
      const unknown: never = event;
      throw new Error(`unknown event ${JSON.stringify(unknown)}`);
    }
  }
}

/**
 * The state after an event. Total: it folds whatever history it is given (legality of a recorded
 * history is `eventProblem`'s question), so the projector, the auditor and the shells share it.
 *
 * Each state is written out as one literal rather than as `{ ...known, status, ... }`: V8 builds a
 * spread followed by keys in a slow path (6.8 µs against 0.1 for a ToolExecuting, measured), and
 * every service folds every event through here.
 */
export function evolve(state: ExecutionState, event: LifecycleBody): ExecutionState {
  const k = known(state);
  switch (event.type) {
    case 'ToolRequested':
      return {
        tool: event.data.tool,
        version: event.data.version,
        attempts: 0,
        approval: null,
        cancel: null,
        status: 'requested',
      };
    case 'ToolApprovalRequested':
      return {
        tool: k.tool,
        version: k.version,
        attempts: k.attempts,
        approval: { ...event.data, decision: null },
        cancel: k.cancel,
        status: 'awaiting_approval',
      };
    case 'ToolApproved':
    case 'ToolDenied': {
      // (An approval without a request for it is illegal; folded all the same, with what it says.)
      const asked = k.approval;
      const approval: ApprovalInfo = {
        argsHash: asked ? asked.argsHash : event.data.argsHash,
        approverRoles: asked ? asked.approverRoles : [],
        deadline: asked ? asked.deadline : '',
        requesterId: asked ? asked.requesterId : '',
        allowSelfApproval: asked ? asked.allowSelfApproval : false,
        decision: {
          outcome: event.type === 'ToolApproved' ? 'approved' : 'denied',
          approverId: event.data.approverId,
          approverRole: event.data.approverRole,
        },
      };
      return {
        tool: k.tool,
        version: k.version,
        attempts: k.attempts,
        approval,
        cancel: k.cancel,
        // A denial is followed by ToolFailed DENIED in the same decision; until then it may not run.
        status: event.type === 'ToolApproved' ? 'approved' : 'awaiting_approval',
      };
    }
    case 'ToolExecuting':
      return {
        tool: k.tool,
        version: k.version,
        attempts: event.data.attempt,
        approval: k.approval,
        cancel: k.cancel,
        status: 'executing',
        attempt: event.data.attempt,
        runner: event.data.runner,
        timeoutMs: event.data.timeoutMs,
      };
    case 'ToolCancelRequested':
      // Rare; keeps whatever the state's status carries (an executing attempt's runner...).
      return state.status === 'none' ? state : { ...state, cancel: { ...event.data } };
    case 'ToolCompleted':
      return {
        tool: k.tool,
        version: k.version,
        attempts: k.attempts,
        approval: k.approval,
        cancel: k.cancel,
        status: 'completed',
      };
    case 'ToolFailed':
      return {
        tool: k.tool,
        version: k.version,
        attempts: k.attempts,
        approval: k.approval,
        cancel: k.cancel,
        status: 'failed',
        code: event.data.error.code,
      };
    default: {
      const unknown: never = event;
      throw new Error(`unknown event ${JSON.stringify(unknown)}`);
    }
  }
}

/**
 * Why a recorded event may not follow this state, or null: the same rules `decide` follows, read
 * from the other side. The auditor reports a history that breaks them; the projector skips such an
 * event. (A history the old dispatcher wrote, ending an unstarted execution with ToolFailed
 * CANCELLED or INTERRUPTED without a ToolCancelRequested, stays legal: ToolFailed may end any
 * execution not waiting for approval... and one waiting, for a cancel, expiry, denial or give-up.)
 */
export function eventProblem(state: ExecutionState, event: LifecycleBody): string | null {
  if (state.status === 'none') {
    return event.type === 'ToolRequested' ? null : 'an execution starts with ToolRequested';
  }
  if (isTerminalState(state)) return `nothing may follow a terminal event (it ${state.status})`;
  const waiting = state.status === 'awaiting_approval';
  switch (event.type) {
    case 'ToolRequested':
      return 'it was requested already';
    case 'ToolApprovalRequested':
      return state.status === 'requested' && state.approval === null && state.attempts === 0
        ? null
        : 'approval is asked once, before any attempt';
    case 'ToolApproved':
    case 'ToolDenied':
      if (!waiting || state.approval.decision) return 'no approval is awaited';
      return event.data.argsHash === state.approval.argsHash
        ? null
        : 'its argsHash is not the one approval was asked for';
    case 'ToolExecuting':
      if (waiting) return 'it awaits approval';
      if (state.cancel) return 'a cancel was asked for';
      return event.data.attempt === state.attempts + 1
        ? null
        : `it says attempt ${event.data.attempt}, but it is attempt ${state.attempts + 1}`;
    case 'ToolCompleted':
      return state.status === 'executing' ? null : 'it is not running';
    case 'ToolFailed':
      // While waiting, only a denial, expiry, cancel or give-up ends it (their codes say which).
      return !waiting ||
        ['DENIED', 'APPROVAL_EXPIRED', 'CANCELLED', 'INTERNAL'].includes(event.data.error.code)
        ? null
        : `${event.data.error.code} while it awaits approval`;
    case 'ToolCancelRequested':
      return state.cancel ? 'a cancel was asked for already' : null;
    default: {
      const unknown: never = event;
      throw new Error(`unknown event ${JSON.stringify(unknown)}`);
    }
  }
}

export const foldExecution = (events: Iterable<ToolEventBody>): ExecutionState => {
  let state = initialState();
  for (const e of events) state = evolve(state, e);
  return state;
};

/** The decider as one value, emmett style, for shells and specifications. */
export const executionDecider = { decide, evolve, initialState } as const;
