import t from 'tap';
import fc from 'fast-check';
import type { ErrorCode } from './errors.ts';
import {
  ToolApprovalRequestedData,
  ToolApprovedData,
  ToolCancelRequestedData,
  ToolCompletedData,
  ToolDeniedData,
  ToolExecutingData,
  ToolFailedData,
  ToolRequestedData,
  type ToolEventBody,
} from './events.ts';
import {
  argsHash,
  decide,
  DECISION_ERROR_CODES,
  DecisionError,
  eventProblem,
  evolve,
  executionDecider,
  foldExecution,
  initialState,
  isAwaitingApproval,
  isTerminalState,
  nextAttempt,
  omitArgs,
  type DecisionErrorCode,
  type ExecutionCommand,
  type ExecutionCommandType,
  type ExecutionState,
} from './execution.ts';
import { deciderSpecification } from './testing/decider.ts';

/*
 * The life cycle of one execution, as given/when/then: given the events recorded so far, when a
 * command arrives, then these events are decided (or nothing, or a refusal with its code).
 * One test per command; inside it, one case per state, named after the state.
 */

// ---------------------------------------------------------------------------------------------
// The world of the examples: alice asks to pay 120 to an account; approvers hold role `finance`.

const ARGS = { amount: 120, account: 'DE89 3704 0044 0532 0130 00' };
const HASH = argsHash(ARGS);
const OTHER_HASH = argsHash({ ...ARGS, amount: 12000 });
const DEADLINE = '2025-01-02T11:00:00.000Z';
const BEFORE_DEADLINE = '2025-01-02T10:30:00.000Z';
const AFTER_DEADLINE = '2025-01-02T11:00:00.000Z'; // the deadline itself counts as passed

const requirement = {
  argsHash: HASH,
  approverRoles: ['finance', 'admin'],
  deadline: DEADLINE,
  requesterId: 'alice',
  allowSelfApproval: false,
};

// Events, as the decider speaks them (type and data; the shell puts them in envelopes).
const requested: ToolEventBody = {
  type: 'ToolRequested',
  data: { tool: 'pay', version: '1.0.0', args: { ...ARGS, account: '[REDACTED]' }, redacted: ['account'] },
};
const approvalRequested: ToolEventBody = { type: 'ToolApprovalRequested', data: { ...requirement } };
const approvedByBob: ToolEventBody = {
  type: 'ToolApproved',
  data: { approverId: 'bob', approverRole: 'finance', argsHash: HASH, reason: 'expected invoice' },
};
const deniedByBob: ToolEventBody = {
  type: 'ToolDenied',
  data: { approverId: 'bob', approverRole: 'finance', argsHash: HASH, reason: 'unknown account' },
};
const executing = (attempt: number, runner = 'dispatcher-1'): ToolEventBody => ({
  type: 'ToolExecuting',
  data: { attempt, runner, timeoutMs: 5000 },
});
const completed: ToolEventBody = {
  type: 'ToolCompleted',
  data: { result: { paid: true }, redacted: [], durationMs: 12, cached: false },
};
const failedWith = (code: ErrorCode, message: string, details?: Record<string, unknown>): ToolEventBody => ({
  type: 'ToolFailed',
  data: { error: details ? { code, message, details } : { code, message }, durationMs: null },
});
const toolError: ToolEventBody = {
  type: 'ToolFailed',
  data: { error: { code: 'TOOL_ERROR', message: 'bank said no' }, durationMs: 30 },
};
const cancelByAlice: ToolEventBody = {
  type: 'ToolCancelRequested',
  data: { by: { userId: 'alice', admin: false }, reason: 'wrong amount', requestedAt: BEFORE_DEADLINE },
};
const cancelledBeforeRun = failedWith('CANCELLED', 'cancelled before it ran: wrong amount');
const deniedEnd = failedWith('DENIED', 'denied by bob (finance): unknown account', {
  approverId: 'bob',
  approverRole: 'finance',
});
const expiredEnd = failedWith('APPROVAL_EXPIRED', `nobody approved or denied the call before ${DEADLINE}`, {
  deadline: DEADLINE,
});
const refusedEnd = failedWith('FORBIDDEN', 'needs role payer');

// Commands.
const C = {
  request: { type: 'Request', data: requested.data } as ExecutionCommand,
  requestWithApproval: {
    type: 'Request',
    data: { ...(requested.data as object), approval: requirement },
  } as ExecutionCommand,
  requestApproval: { type: 'RequestApproval', data: requirement } as ExecutionCommand,
  refuse: { type: 'Refuse', data: { code: 'FORBIDDEN', message: 'needs role payer' } } as ExecutionCommand,
  start: { type: 'StartAttempt', data: { runner: 'dispatcher-1', timeoutMs: 5000 } } as ExecutionCommand,
  startApproved: {
    type: 'StartAttempt',
    data: { runner: 'dispatcher-1', timeoutMs: 5000, argsHash: HASH },
  } as ExecutionCommand,
  complete: { type: 'Complete', data: completed.data } as ExecutionCommand,
  fail: { type: 'Fail', data: toolError.data } as ExecutionCommand,
  cancel: {
    type: 'RequestCancel',
    data: { by: { userId: 'alice', admin: false }, reason: 'wrong amount', now: BEFORE_DEADLINE },
  } as ExecutionCommand,
  recover: (
    liveness: 'alive' | 'dead' | 'unknown',
    idempotent: boolean,
    maxAttempts = 3,
    now = BEFORE_DEADLINE,
  ): ExecutionCommand => ({
    type: 'Recover',
    data: { liveness, idempotent, maxAttempts, runner: 'dispatcher-2', timeoutMs: 5000, now },
  }),
  giveUp: {
    type: 'GiveUp',
    data: { reason: 'failed 5 times', details: { failures: 5 } },
  } as ExecutionCommand,
  approve: (
    over: Partial<{ approverId: string; approverRoles: string[]; argsHash: string; now: string }> = {},
  ) =>
    ({
      type: 'Approve',
      data: {
        approverId: 'bob',
        approverRoles: ['finance'],
        argsHash: HASH,
        reason: 'expected invoice',
        now: BEFORE_DEADLINE,
        ...over,
      },
    }) as ExecutionCommand,
  deny: (
    over: Partial<{ approverId: string; approverRoles: string[]; argsHash: string; now: string }> = {},
  ) =>
    ({
      type: 'Deny',
      data: {
        approverId: 'bob',
        approverRoles: ['finance'],
        argsHash: HASH,
        reason: 'unknown account',
        now: BEFORE_DEADLINE,
        ...over,
      },
    }) as ExecutionCommand,
  expire: (now: string): ExecutionCommand => ({ type: 'Expire', data: { now } }),
};

// The states, each named and given by the events that lead to it.
const STATE = {
  none: [],
  requested: [requested],
  awaiting_approval: [requested, approvalRequested],
  approved: [requested, approvalRequested, approvedByBob],
  executing: [requested, executing(1)],
  'executing (cancel requested)': [requested, executing(1), cancelByAlice],
  'executing (approved)': [requested, approvalRequested, approvedByBob, executing(1)],
  completed: [requested, executing(1), completed],
  'completed (approved)': [requested, approvalRequested, approvedByBob, executing(1), completed],
  'failed (refused)': [requested, refusedEnd],
  'failed (denied)': [requested, approvalRequested, deniedByBob, deniedEnd],
  'failed (expired)': [requested, approvalRequested, expiredEnd],
  'failed (cancelled before it ran)': [requested, cancelByAlice, cancelledBeforeRun],
} satisfies Record<string, ToolEventBody[]>;
type StateName = keyof typeof STATE;
const STATE_NAMES = Object.keys(STATE) as StateName[];
const TERMINAL: StateName[] = STATE_NAMES.filter((n) => n.startsWith('completed') || n.startsWith('failed'));

// ---------------------------------------------------------------------------------------------
// The specification checks more than the example says: every given history must be legal
// (`eventProblem`), and every decided event must pass its schema unchanged.

const SCHEMAS = {
  ToolRequested: ToolRequestedData,
  ToolExecuting: ToolExecutingData,
  ToolCompleted: ToolCompletedData,
  ToolFailed: ToolFailedData,
  ToolCancelRequested: ToolCancelRequestedData,
  ToolApprovalRequested: ToolApprovalRequestedData,
  ToolApproved: ToolApprovedData,
  ToolDenied: ToolDeniedData,
};
const checked = {
  initialState,
  evolve(state: ExecutionState, event: ToolEventBody): ExecutionState {
    const problem = eventProblem(state, event);
    if (problem) throw new Error(`illegal given history: ${event.type} when ${state.status}: ${problem}`);
    return evolve(state, event);
  },
  decide(command: ExecutionCommand, state: ExecutionState): ToolEventBody[] {
    const events = decide(command, state);
    let s = state;
    for (const e of events) {
      const parsed: unknown = SCHEMAS[e.type].parse(e.data);
      if (JSON.stringify(parsed) !== JSON.stringify(e.data))
        throw new Error(`${e.type} data is not in parsed form`);
      const problem = eventProblem(s, e);
      if (problem) throw new Error(`decided an illegal ${e.type} when ${s.status}: ${problem}`);
      s = evolve(s, e);
    }
    return events;
  },
};
const spec = deciderSpecification(checked);

type Expected = ToolEventBody[] | { refused: DecisionErrorCode };
const refused = (code: DecisionErrorCode): Expected => ({ refused: code });
const nothing: Expected = [];
const SPECIFIED = new Set<ExecutionCommandType>();

/** One command in every state: the table must name each state exactly once. */
function specify(
  command: ExecutionCommandType,
  description: string,
  when: ExecutionCommand,
  table: Record<StateName, Expected>,
) {
  SPECIFIED.add(command);
  t.test(`${command}: ${description}`, async (t) => {
    t.strictSame(Object.keys(table).sort(), [...STATE_NAMES].sort(), 'every state is specified');
    for (const name of STATE_NAMES) {
      const expected = table[name];
      t.test(`when ${name}`, async (t) => {
        const then = spec.given(STATE[name]).when(when);
        if (Array.isArray(expected)) then.then(expected);
        else then.thenThrows(expected.refused);
        t.pass(
          Array.isArray(expected)
            ? `${expected.map((e) => e.type).join(' + ') || 'nothing'}`
            : expected.refused,
        );
      });
    }
  });
}

/** Terminal states accept nothing that changes them: the caller answers with the recorded end. */
const endedDecideNothing: Partial<Record<StateName, Expected>> = Object.fromEntries(
  TERMINAL.map((n) => [n, nothing]),
);

// ---------------------------------------------------------------------------------------------

specify('Request', 'records the call; a request delivered again decides nothing', C.request, {
  none: [requested],
  requested: nothing,
  awaiting_approval: nothing,
  approved: nothing,
  executing: nothing,
  'executing (cancel requested)': nothing,
  'executing (approved)': nothing,
  ...endedDecideNothing,
} as Record<StateName, Expected>);

t.test('Request with an approval requirement records the request and the wait in one decision', async () => {
  spec.given([]).when(C.requestWithApproval).then([requested, approvalRequested]);
  spec.given(STATE.awaiting_approval).when(C.requestWithApproval).thenNothing();
});

specify('RequestApproval', 'asks for approval of an admitted request before any attempt', C.requestApproval, {
  none: refused('NOT_REQUESTED'),
  requested: [approvalRequested],
  awaiting_approval: nothing,
  approved: refused('ILLEGAL_COMMAND'),
  executing: refused('ILLEGAL_COMMAND'),
  'executing (cancel requested)': refused('ILLEGAL_COMMAND'),
  'executing (approved)': refused('ILLEGAL_COMMAND'),
  ...endedDecideNothing,
} as Record<StateName, Expected>);

specify('Refuse', 'admission says no: it ends before it runs', C.refuse, {
  none: refused('NOT_REQUESTED'),
  requested: [refusedEnd],
  awaiting_approval: refused('ILLEGAL_COMMAND'),
  approved: refused('ILLEGAL_COMMAND'),
  executing: refused('ILLEGAL_COMMAND'),
  'executing (cancel requested)': refused('ILLEGAL_COMMAND'),
  'executing (approved)': refused('ILLEGAL_COMMAND'),
  ...endedDecideNothing,
} as Record<StateName, Expected>);

specify('StartAttempt', 'runs the first attempt of an admitted (and, if asked, approved) call', C.start, {
  none: refused('NOT_REQUESTED'),
  requested: [executing(1)],
  // Nothing runs before ToolApproved.
  awaiting_approval: refused('AWAITING_APPROVAL'),
  // Approved calls run only with the arguments approved: the shell passes their hash (below).
  approved: refused('HASH_MISMATCH'),
  // A new attempt of a running execution is Recover's decision.
  executing: refused('ALREADY_RUNNING'),
  'executing (cancel requested)': refused('ALREADY_RUNNING'),
  'executing (approved)': refused('ALREADY_RUNNING'),
  // A cancel before the start ended it already: it never runs.
  ...endedDecideNothing,
} as Record<StateName, Expected>);

t.test('StartAttempt of an approved call binds the arguments to the approval', async () => {
  spec
    .given(STATE.approved)
    .when(C.startApproved)
    .then([executing(1)]);
  spec
    .given(STATE.approved)
    .when({ type: 'StartAttempt', data: { runner: 'dispatcher-1', timeoutMs: 5000, argsHash: OTHER_HASH } })
    .thenThrows('HASH_MISMATCH');
});

specify('Complete', 'records the result of the running attempt', C.complete, {
  none: refused('NOT_REQUESTED'),
  requested: refused('NOT_RUNNING'),
  awaiting_approval: refused('NOT_RUNNING'),
  approved: refused('NOT_RUNNING'),
  executing: [completed],
  // A result that arrives before the runner acted on the cancel wins: the work was done.
  'executing (cancel requested)': [completed],
  'executing (approved)': [completed],
  // A late result of an execution that ended elsewhere is dropped.
  ...endedDecideNothing,
} as Record<StateName, Expected>);

specify('Fail', 'ends it with the error of the attempt (or of the shell, before it ran)', C.fail, {
  none: refused('NOT_REQUESTED'),
  requested: [toolError],
  awaiting_approval: refused('AWAITING_APPROVAL'),
  approved: [toolError],
  executing: [toolError],
  'executing (cancel requested)': [toolError],
  'executing (approved)': [toolError],
  ...endedDecideNothing,
} as Record<StateName, Expected>);

specify('RequestCancel', 'records the cancel; what is not running ends at once', C.cancel, {
  none: refused('NOT_REQUESTED'),
  requested: [cancelByAlice, cancelledBeforeRun],
  awaiting_approval: [cancelByAlice, cancelledBeforeRun],
  approved: [cancelByAlice, cancelledBeforeRun],
  // Running: the runner learns of it from the store and ends the attempt CANCELLED.
  executing: [cancelByAlice],
  'executing (cancel requested)': nothing,
  'executing (approved)': [cancelByAlice],
  // Ended: the caller answers with the recorded end.
  ...endedDecideNothing,
} as Record<StateName, Expected>);

specify('Recover', 'the runner is dead, the tool idempotent: the next attempt', C.recover('dead', true), {
  none: refused('NOT_REQUESTED'),
  // Never started: starting is safe whatever the tool.
  requested: [executing(1, 'dispatcher-2')],
  // Waiting is not running; nothing to recover before the deadline.
  awaiting_approval: nothing,
  approved: [executing(1, 'dispatcher-2')],
  executing: [executing(2, 'dispatcher-2')],
  // A cancel asked for wins over a re-run.
  'executing (cancel requested)': [failedWith('CANCELLED', 'cancelled; its runner dispatcher-1 stopped')],
  'executing (approved)': [executing(2, 'dispatcher-2')],
  ...endedDecideNothing,
} as Record<StateName, Expected>);

t.test('Recover: what is known of the runner decides', async (t) => {
  t.test('alive: its runner carries on, nothing is decided', async () => {
    for (const name of ['requested', 'approved', 'executing', 'executing (cancel requested)'] as const)
      spec.given(STATE[name]).when(C.recover('alive', true)).thenNothing();
  });
  t.test('unknown is not dead: nothing until the runner lease says, or the shell gives up', async () => {
    spec.given(STATE.executing).when(C.recover('unknown', true)).thenNothing();
    spec.given(STATE['executing (cancel requested)']).when(C.recover('unknown', false)).thenNothing();
  });
  t.test('dead and not idempotent: INTERRUPTED, never run twice', async () => {
    spec
      .given(STATE.executing)
      .when(C.recover('dead', false))
      .then([
        failedWith(
          'INTERRUPTED',
          'its runner dispatcher-1 stopped and pay is not idempotent, so it is not run again',
        ),
      ]);
    // Not started yet: running it is not running it twice.
    spec
      .given(STATE.requested)
      .when(C.recover('dead', false))
      .then([executing(1, 'dispatcher-2')]);
  });
  t.test('dead, idempotent, attempts used up: INTERRUPTED', async () => {
    spec
      .given([requested, executing(1), executing(2)])
      .when(C.recover('dead', true, 2))
      .then([
        failedWith('INTERRUPTED', 'its runner dispatcher-1 stopped after 2 attempts, the most allowed', {
          attempts: 2,
        }),
      ]);
    spec
      .given([requested, executing(1), executing(2)])
      .when(C.recover('dead', true, 3))
      .then([executing(3, 'dispatcher-2')]);
  });
  t.test(
    'awaiting approval past its deadline: it expires (enforced from the store after a restart)',
    async () => {
      spec
        .given(STATE.awaiting_approval)
        .when(C.recover('dead', true, 3, AFTER_DEADLINE))
        .then([expiredEnd]);
    },
  );
});

specify('GiveUp', 'the shell cannot handle it: INTERNAL', C.giveUp, {
  none: refused('NOT_REQUESTED'),
  requested: [failedWith('INTERNAL', 'failed 5 times', { failures: 5 })],
  awaiting_approval: [failedWith('INTERNAL', 'failed 5 times', { failures: 5 })],
  approved: [failedWith('INTERNAL', 'failed 5 times', { failures: 5 })],
  executing: [failedWith('INTERNAL', 'failed 5 times', { failures: 5 })],
  'executing (cancel requested)': [failedWith('INTERNAL', 'failed 5 times', { failures: 5 })],
  'executing (approved)': [failedWith('INTERNAL', 'failed 5 times', { failures: 5 })],
  ...endedDecideNothing,
} as Record<StateName, Expected>);

specify('Approve', 'an approver allows the waiting call, bound to its arguments', C.approve(), {
  none: refused('NOT_REQUESTED'),
  requested: refused('NOT_AWAITING'),
  awaiting_approval: [approvedByBob],
  // The same decision again is a no-op; the other decision is refused.
  approved: nothing,
  executing: refused('NOT_AWAITING'),
  'executing (cancel requested)': refused('NOT_AWAITING'),
  'executing (approved)': nothing,
  completed: refused('NOT_AWAITING'),
  'completed (approved)': nothing,
  'failed (refused)': refused('NOT_AWAITING'),
  'failed (denied)': refused('NOT_AWAITING'),
  'failed (expired)': refused('NOT_AWAITING'),
  'failed (cancelled before it ran)': refused('NOT_AWAITING'),
});

specify('Deny', 'an approver refuses the waiting call: it ends DENIED', C.deny(), {
  none: refused('NOT_REQUESTED'),
  requested: refused('NOT_AWAITING'),
  awaiting_approval: [deniedByBob, deniedEnd],
  approved: refused('NOT_AWAITING'),
  executing: refused('NOT_AWAITING'),
  'executing (cancel requested)': refused('NOT_AWAITING'),
  'executing (approved)': refused('NOT_AWAITING'),
  completed: refused('NOT_AWAITING'),
  'completed (approved)': refused('NOT_AWAITING'),
  'failed (refused)': refused('NOT_AWAITING'),
  'failed (denied)': nothing,
  'failed (expired)': refused('NOT_AWAITING'),
  'failed (cancelled before it ran)': refused('NOT_AWAITING'),
});

t.test('Approve and Deny: who may decide, on what, until when', async (t) => {
  for (const [name, command] of [
    ['Approve', C.approve],
    ['Deny', C.deny],
  ] as const) {
    t.test(name, async () => {
      const waiting = spec.given(STATE.awaiting_approval);
      waiting.when(command({ argsHash: OTHER_HASH })).thenThrows('HASH_MISMATCH');
      waiting.when(command({ approverRoles: ['support'] })).thenThrows('NOT_AN_APPROVER');
      waiting.when(command({ approverRoles: [] })).thenThrows('NOT_AN_APPROVER');
      // alice holds an approver role, but she asked for the call.
      waiting.when(command({ approverId: 'alice', approverRoles: ['finance'] })).thenThrows('SELF_APPROVAL');
      waiting.when(command({ now: AFTER_DEADLINE })).thenThrows('EXPIRED');
      // After a decision, an unauthorized or mismatched repeat is still refused, not a silent no-op.
      spec
        .given(STATE.approved)
        .when(command({ approverRoles: ['support'] }))
        .thenThrows('NOT_AN_APPROVER');
    });
  }
  t.test('self-approval when the policy allows it', async () => {
    spec
      .given([
        requested,
        { type: 'ToolApprovalRequested', data: { ...requirement, allowSelfApproval: true } },
      ])
      .when(C.approve({ approverId: 'alice', approverRoles: ['admin'] }))
      .then([
        {
          type: 'ToolApproved',
          data: { approverId: 'alice', approverRole: 'admin', argsHash: HASH, reason: 'expected invoice' },
        },
      ]);
  });
  t.test('the recorded role is the first approver role the approver holds, in the order asked', async () => {
    spec
      .given(STATE.awaiting_approval)
      .when(C.approve({ approverRoles: ['admin', 'finance'] }))
      .then([approvedByBob]);
  });
});

specify('Expire', 'the deadline passed while it waited: APPROVAL_EXPIRED', C.expire(AFTER_DEADLINE), {
  none: nothing,
  requested: nothing,
  awaiting_approval: [expiredEnd],
  approved: nothing,
  executing: nothing,
  'executing (cancel requested)': nothing,
  'executing (approved)': nothing,
  ...endedDecideNothing,
} as Record<StateName, Expected>);

t.test('Expire before the deadline decides nothing', async () => {
  spec.given(STATE.awaiting_approval).when(C.expire(BEFORE_DEADLINE)).thenNothing();
});

t.test('every command is specified', async (t) => {
  t.strictSame([...SPECIFIED].sort(), [
    'Approve',
    'Complete',
    'Deny',
    'Expire',
    'Fail',
    'GiveUp',
    'Recover',
    'Refuse',
    'Request',
    'RequestApproval',
    'RequestCancel',
    'StartAttempt',
  ]);
});

// ---------------------------------------------------------------------------------------------
// Races: two commands decided against the same state, the second against what the first left.

/** Decides the commands in turn, each against the state the ones before left; returns all events. */
function play(
  given: ToolEventBody[],
  commands: ExecutionCommand[],
): { events: ToolEventBody[]; errors: string[] } {
  let state = foldExecution(given);
  const events: ToolEventBody[] = [];
  const errors: string[] = [];
  for (const c of commands) {
    try {
      for (const e of checked.decide(c, state)) {
        state = evolve(state, e);
        events.push(e);
      }
    } catch (e) {
      if (!(e instanceof DecisionError)) throw e;
      errors.push(`${c.type}:${e.code}`);
    }
  }
  return { events, errors };
}

t.test('races end exactly once', async (t) => {
  t.test(
    'a cancel and a completion of the running attempt: whichever is appended first stands',
    async (t) => {
      // The cancel first: recorded, then the result arrives and wins (the work was done).
      t.strictSame(play(STATE.executing, [C.cancel, C.complete]).events, [cancelByAlice, completed]);
      // The result first: the cancel finds it ended and decides nothing.
      t.strictSame(play(STATE.executing, [C.complete, C.cancel]).events, [completed]);
    },
  );
  t.test('an approval and a cancel of a waiting call', async (t) => {
    t.strictSame(play(STATE.awaiting_approval, [C.approve(), C.cancel]), {
      events: [approvedByBob, cancelByAlice, cancelledBeforeRun],
      errors: [],
    });
    t.strictSame(play(STATE.awaiting_approval, [C.cancel, C.approve()]), {
      events: [cancelByAlice, cancelledBeforeRun],
      errors: ['Approve:NOT_AWAITING'],
    });
  });
  t.test('an approval, a denial and the deadline', async (t) => {
    t.strictSame(play(STATE.awaiting_approval, [C.approve(), C.deny(), C.expire(AFTER_DEADLINE)]), {
      events: [approvedByBob],
      errors: ['Deny:NOT_AWAITING'],
    });
    t.strictSame(play(STATE.awaiting_approval, [C.expire(AFTER_DEADLINE), C.approve()]), {
      events: [expiredEnd],
      errors: ['Approve:NOT_AWAITING'],
    });
  });
  t.test('a wait cancelled: every later decision is refused or decides nothing', async (t) => {
    t.strictSame(
      play(STATE.awaiting_approval, [
        C.cancel,
        C.approve(),
        C.deny(),
        C.expire(AFTER_DEADLINE),
        C.cancel,
        C.startApproved,
      ]),
      {
        events: [cancelByAlice, cancelledBeforeRun],
        errors: ['Approve:NOT_AWAITING', 'Deny:NOT_AWAITING'],
      },
    );
  });
  t.test('approved, then the deadline passes before it starts: it still runs', async (t) => {
    t.strictSame(play(STATE.awaiting_approval, [C.approve(), C.expire(AFTER_DEADLINE), C.startApproved]), {
      events: [approvedByBob, executing(1)],
      errors: [],
    });
  });
  t.test('two approvals by two approvers: recorded once', async (t) => {
    t.strictSame(play(STATE.awaiting_approval, [C.approve(), C.approve({ approverId: 'carol' })]).events, [
      approvedByBob,
    ]);
  });
});

// ---------------------------------------------------------------------------------------------
// The state, as evolve folds it.

t.test('evolve folds what shells, projector and auditor need to know', async (t) => {
  t.strictSame(foldExecution([]), { status: 'none' });
  t.strictSame(foldExecution(STATE.requested), {
    status: 'requested',
    tool: 'pay',
    version: '1.0.0',
    attempts: 0,
    approval: null,
    cancel: null,
  });
  t.match(foldExecution(STATE.awaiting_approval), {
    status: 'awaiting_approval',
    approval: { argsHash: HASH, deadline: DEADLINE, decision: null },
  });
  t.match(foldExecution(STATE['executing (approved)']), {
    status: 'executing',
    attempt: 1,
    attempts: 1,
    runner: 'dispatcher-1',
    approval: { decision: { outcome: 'approved', approverId: 'bob', approverRole: 'finance' } },
  });
  t.match(foldExecution(STATE['executing (cancel requested)']), {
    status: 'executing',
    cancel: { by: { userId: 'alice', admin: false }, reason: 'wrong amount' },
  });
  t.match(foldExecution([requested, executing(1), executing(2), completed]), {
    status: 'completed',
    attempts: 2,
  });
  t.match(foldExecution(STATE['failed (denied)']), { status: 'failed', code: 'DENIED', attempts: 0 });

  t.ok(isTerminalState(foldExecution(STATE.completed)));
  t.notOk(isTerminalState(foldExecution(STATE.executing)));
  t.ok(isAwaitingApproval(foldExecution(STATE.awaiting_approval)));
  t.notOk(isAwaitingApproval(foldExecution(STATE.approved)));
  t.equal(nextAttempt(foldExecution([])), 1);
  t.equal(nextAttempt(foldExecution([requested, executing(1), executing(2)])), 3);
  t.equal(executionDecider.evolve, evolve);
});

t.test('argsHash is the SHA-256 of the canonical JSON: key order does not matter, values do', async (t) => {
  t.match(HASH, /^[0-9a-f]{64}$/);
  t.equal(argsHash({ account: ARGS.account, amount: 120 }), HASH);
  t.not(argsHash({ ...ARGS, account: '[REDACTED]' }), HASH, 'the redacted form is another call');
});

t.test(
  'omitArgs: the UTF-8 size and argsHash of the canonical JSON; Request records it as given',
  async (t) => {
    t.strictSame(omitArgs(ARGS), { bytes: Buffer.byteLength(JSON.stringify(ARGS)), sha256: HASH });
    t.strictSame(
      omitArgs({ note: 'é' }),
      { bytes: 13, sha256: argsHash({ note: 'é' }) },
      'bytes, not characters',
    );
    const summary = omitArgs({ ...ARGS, account: '[REDACTED]' });
    const [event] = decide(
      { type: 'Request', data: { tool: 'pay', version: '1.0.0', args: {}, argsOmitted: summary } },
      initialState(),
    );
    t.strictSame(event, {
      type: 'ToolRequested',
      data: { tool: 'pay', version: '1.0.0', args: {}, argsOmitted: summary, redacted: [] },
    });
  },
);

t.test('decide and evolve leave their inputs alone', async (t) => {
  const state = foldExecution(STATE.awaiting_approval);
  const before = structuredClone(state);
  const command = C.requestWithApproval;
  const commandBefore = structuredClone(command);
  decide(C.approve(), state);
  evolve(state, approvedByBob);
  const [event] = decide(command, initialState());
  t.strictSame(state, before);
  t.strictSame(command, commandBefore);
  t.not((event!.data as { redacted: string[] }).redacted, (command.data as { redacted: string[] }).redacted);
});

t.test('DecisionError says what was refused, in which state, and why', async (t) => {
  const e = t.throws(() =>
    decide(C.start, foldExecution(STATE.awaiting_approval)),
  ) as unknown as DecisionError;
  t.type(e, DecisionError);
  t.match(e, { code: 'AWAITING_APPROVAL', command: 'StartAttempt', status: 'awaiting_approval' });
  t.match(e.message, /StartAttempt refused \(AWAITING_APPROVAL\) when the execution is awaiting_approval/);
  t.ok(DECISION_ERROR_CODES.includes(e.code));
});

// ---------------------------------------------------------------------------------------------
// Legality of recorded histories: the rules read from the events' side (auditor, projector).

t.test('eventProblem names what a recorded history may not hold', async (t) => {
  const problem = (given: ToolEventBody[], next: ToolEventBody) => eventProblem(foldExecution(given), next);
  t.equal(problem([], executing(1)), 'an execution starts with ToolRequested');
  t.equal(problem(STATE.requested, requested), 'it was requested already');
  t.equal(problem(STATE.requested, completed), 'it is not running');
  t.equal(problem(STATE.executing, executing(3)), 'it says attempt 3, but it is attempt 2');
  t.equal(problem(STATE.awaiting_approval, executing(1)), 'it awaits approval');
  t.equal(problem(STATE.awaiting_approval, toolError), 'TOOL_ERROR while it awaits approval');
  t.equal(
    problem(STATE.awaiting_approval, {
      type: 'ToolApproved',
      data: { ...approvedByBob.data, argsHash: OTHER_HASH },
    }),
    'its argsHash is not the one approval was asked for',
  );
  t.equal(problem(STATE.approved, approvedByBob), 'no approval is awaited');
  t.equal(problem(STATE.executing, approvalRequested), 'approval is asked once, before any attempt');
  t.equal(problem(STATE['executing (cancel requested)'], cancelByAlice), 'a cancel was asked for already');
  t.equal(problem(STATE['executing (cancel requested)'], executing(2)), 'a cancel was asked for');
  t.match(problem(STATE.completed, toolError), /nothing may follow a terminal event/);
  // What the dispatcher before the decider wrote stays legal: an unstarted execution ended
  // CANCELLED or INTERRUPTED without a ToolCancelRequested.
  t.equal(problem(STATE.requested, failedWith('CANCELLED', 'cancelled before it started')), null);
  t.equal(problem(STATE.executing, failedWith('INTERRUPTED', 'its dispatcher stopped')), null);
});

const ALL_COMMANDS: ExecutionCommand[] = [
  C.request,
  C.requestWithApproval,
  C.requestApproval,
  C.refuse,
  C.start,
  C.startApproved,
  C.complete,
  C.fail,
  C.cancel,
  C.recover('dead', true),
  C.recover('dead', false),
  C.recover('alive', true),
  C.giveUp,
  C.approve(),
  C.approve({ approverId: 'carol' }),
  C.deny(),
  C.expire(BEFORE_DEADLINE),
  C.expire(AFTER_DEADLINE),
];

t.test('any sequence of commands leaves a legal history with at most one end', async (t) => {
  fc.assert(
    fc.property(fc.array(fc.constantFrom(...ALL_COMMANDS), { maxLength: 14 }), (commands) => {
      // `checked.decide` throws on any illegal decided event or data that fails its schema.
      const { events } = play([], commands);
      const ends = events.filter((e) => e.type === 'ToolCompleted' || e.type === 'ToolFailed');
      if (ends.length > 1) throw new Error('two terminal events');
      if (ends.length === 1 && events.at(-1) !== ends[0]) throw new Error('an event after the end');
      const state = foldExecution(events);
      const attempts = events.filter((e) => e.type === 'ToolExecuting').length;
      if (state.status !== 'none' && state.attempts !== attempts) throw new Error('attempts miscounted');
      const approvedAt = events.findIndex((e) => e.type === 'ToolApproved');
      const askedAt = events.findIndex((e) => e.type === 'ToolApprovalRequested');
      const firstRun = events.findIndex((e) => e.type === 'ToolExecuting');
      if (askedAt >= 0 && firstRun >= 0 && (approvedAt < 0 || approvedAt > firstRun))
        throw new Error('ran before it was approved');
    }),
  );
  t.pass('property holds');
});
