import t from 'tap';
import fc from 'fast-check';
import {
  ToolCompletedData,
  ToolExecutingData,
  ToolFailedData,
  ToolRequestedData,
  type ToolEventBody,
} from './events.ts';
import {
  decide,
  evolve,
  foldExecution,
  IllegalCommandError,
  initialState,
  isTerminalState,
  type ExecutionCommand,
  type ExecutionState,
  type ExecutionStatus,
} from './lifecycle.ts';

const requestCmd: ExecutionCommand = {
  type: 'Request',
  data: { tool: 'echo', version: '1.0.0', args: { text: 'hi' } },
};
const startCmd: ExecutionCommand = { type: 'Start', data: { runner: 'dispatcher-1', timeoutMs: 5000 } };
const completeCmd: ExecutionCommand = {
  type: 'Complete',
  data: { result: { echoed: 'hi' }, durationMs: 12, cached: false },
};
const failCmd: ExecutionCommand = {
  type: 'Fail',
  data: { error: { code: 'TIMEOUT', message: 'took too long' }, durationMs: 5000 },
};
const COMMANDS = { Request: requestCmd, Start: startCmd, Complete: completeCmd, Fail: failCmd } as const;

const STATES: Record<ExecutionStatus, ExecutionState> = {
  none: { status: 'none' },
  requested: { status: 'requested', tool: 'echo', version: '1.0.0' },
  executing: { status: 'executing', tool: 'echo', version: '1.0.0', attempt: 2 },
  completed: { status: 'completed', tool: 'echo', version: '1.0.0', attempts: 1 },
  failed: { status: 'failed', tool: 'echo', version: '1.0.0', attempts: 0, code: 'TIMEOUT' },
};

const ILLEGAL = 'illegal' as const;
type Expected = ToolEventBody[] | typeof ILLEGAL;

/** Every (state status x command) pair, with the events it must emit or `illegal`. */
const TABLE: Record<ExecutionStatus, Record<ExecutionCommand['type'], Expected>> = {
  none: {
    Request: [
      { type: 'ToolRequested', data: { tool: 'echo', version: '1.0.0', args: { text: 'hi' }, redacted: [] } },
    ],
    Start: ILLEGAL,
    Complete: ILLEGAL,
    Fail: ILLEGAL,
  },
  requested: {
    Request: ILLEGAL,
    Start: [{ type: 'ToolExecuting', data: { runner: 'dispatcher-1', timeoutMs: 5000, attempt: 1 } }],
    Complete: ILLEGAL,
    Fail: [
      {
        type: 'ToolFailed',
        data: { error: { code: 'TIMEOUT', message: 'took too long' }, durationMs: 5000 },
      },
    ],
  },
  executing: {
    Request: ILLEGAL,
    // a re-run after a crash: the attempt counts on from the state's attempt (2)
    Start: [{ type: 'ToolExecuting', data: { runner: 'dispatcher-1', timeoutMs: 5000, attempt: 3 } }],
    Complete: [
      {
        type: 'ToolCompleted',
        data: { result: { echoed: 'hi' }, durationMs: 12, cached: false, redacted: [] },
      },
    ],
    Fail: [
      {
        type: 'ToolFailed',
        data: { error: { code: 'TIMEOUT', message: 'took too long' }, durationMs: 5000 },
      },
    ],
  },
  completed: { Request: ILLEGAL, Start: ILLEGAL, Complete: ILLEGAL, Fail: ILLEGAL },
  failed: { Request: ILLEGAL, Start: ILLEGAL, Complete: ILLEGAL, Fail: ILLEGAL },
};

/** Deep-freezes a value so that any mutation by the decider throws. */
function frozen<T>(v: T): T {
  if (v !== null && typeof v === 'object') {
    for (const child of Object.values(v)) frozen(child);
    Object.freeze(v);
  }
  return v;
}

/** The event data a decider emits must be valid data for the event's schema, already in parsed form. */
function parseData(body: ToolEventBody): unknown {
  const schema = {
    ToolRequested: ToolRequestedData,
    ToolExecuting: ToolExecutingData,
    ToolCompleted: ToolCompletedData,
    ToolFailed: ToolFailedData,
  }[body.type];
  return schema.parse(body.data);
}

t.test('the decision table names every (status x command) pair exactly once', async (t) => {
  const statuses = Object.keys(TABLE).sort();
  t.strictSame(statuses, ['completed', 'executing', 'failed', 'none', 'requested']);
  for (const status of statuses) {
    t.strictSame(
      Object.keys(TABLE[status as ExecutionStatus]).sort(),
      ['Complete', 'Fail', 'Request', 'Start'],
      status,
    );
  }
  t.equal(statuses.length * 4, 20);
});

for (const [status, row] of Object.entries(TABLE) as Array<[ExecutionStatus, Record<string, Expected>]>) {
  for (const [commandType, expected] of Object.entries(row)) {
    t.test(`decide(${commandType}) when ${status}`, async (t) => {
      const state = frozen(structuredClone(STATES[status]));
      const command = frozen(structuredClone(COMMANDS[commandType as ExecutionCommand['type']]));
      if (expected === ILLEGAL) {
        let thrown: unknown;
        try {
          decide(command, state);
        } catch (e) {
          thrown = e;
        }
        t.type(thrown, IllegalCommandError, 'throws IllegalCommandError');
        const err = thrown as IllegalCommandError;
        t.equal(err.code, 'ILLEGAL_COMMAND');
        t.equal(err.command, commandType);
        t.equal(err.status, status);
        t.match(err.message, new RegExp(`${commandType}.*${status}`));
      } else {
        const events = decide(command, state);
        t.strictSame(events, expected);
        for (const e of events)
          t.strictSame(parseData(e), e.data, `${e.type} data passes its schema unchanged`);
      }
    });
  }
}

t.test('decide leaves the command data it was given alone (no aliasing of redacted)', async (t) => {
  const command: ExecutionCommand = {
    type: 'Request',
    data: { tool: 'echo', version: null, args: {}, redacted: ['$.password'] },
  };
  const [event] = decide(command, initialState());
  t.strictSame(event, {
    type: 'ToolRequested',
    data: { tool: 'echo', version: null, args: {}, redacted: ['$.password'] },
  });
  t.not(event!.data, command.data, 'a new data object, not the command itself');
});

t.test('evolve and fold', async (t) => {
  const run = (commands: ExecutionCommand[]): { events: ToolEventBody[]; state: ExecutionState } => {
    let state = initialState();
    const events: ToolEventBody[] = [];
    for (const c of commands) {
      const out = decide(c, state);
      for (const e of out) state = evolve(state, e);
      events.push(...out);
    }
    return { events, state };
  };

  t.test('a request gives the requested state with tool and version', async (t) => {
    const { state } = run([requestCmd]);
    t.strictSame(state, { status: 'requested', tool: 'echo', version: '1.0.0' });
  });

  t.test('the attempt increments on each re-Start', async (t) => {
    const { events, state } = run([requestCmd, startCmd, startCmd, startCmd]);
    t.strictSame(
      events.filter((e) => e.type === 'ToolExecuting').map((e) => (e.data as { attempt: number }).attempt),
      [1, 2, 3],
    );
    t.strictSame(state, { status: 'executing', tool: 'echo', version: '1.0.0', attempt: 3 });
  });

  t.test('attempts are carried into a completed state', async (t) => {
    t.strictSame(run([requestCmd, startCmd, completeCmd]).state, {
      status: 'completed',
      tool: 'echo',
      version: '1.0.0',
      attempts: 1,
    });
    t.strictSame(run([requestCmd, startCmd, startCmd, completeCmd]).state, {
      status: 'completed',
      tool: 'echo',
      version: '1.0.0',
      attempts: 2,
    });
  });

  t.test('a failed state carries attempts and the error code', async (t) => {
    t.strictSame(run([requestCmd, startCmd, startCmd, startCmd, failCmd]).state, {
      status: 'failed',
      tool: 'echo',
      version: '1.0.0',
      attempts: 3,
      code: 'TIMEOUT',
    });
  });

  t.test('a request refused before it runs fails with zero attempts', async (t) => {
    const refuse: ExecutionCommand = {
      type: 'Fail',
      data: { error: { code: 'FORBIDDEN', message: 'needs role admin' }, durationMs: null },
    };
    const { events, state } = run([requestCmd, refuse]);
    t.strictSame(
      events.map((e) => e.type),
      ['ToolRequested', 'ToolFailed'],
    );
    t.strictSame(state, { status: 'failed', tool: 'echo', version: '1.0.0', attempts: 0, code: 'FORBIDDEN' });
  });

  t.test('foldExecution replays the events to the same state', async (t) => {
    const { events, state } = run([requestCmd, startCmd, startCmd, completeCmd]);
    t.strictSame(foldExecution(events), state);
    t.strictSame(foldExecution([]), { status: 'none' });
    t.strictSame(foldExecution(events.slice(0, 2)), {
      status: 'executing',
      tool: 'echo',
      version: '1.0.0',
      attempt: 1,
    });
  });

  t.test('evolve does not mutate the state it is given', async (t) => {
    const state = frozen(structuredClone(STATES.executing));
    const next = evolve(state, {
      type: 'ToolCompleted',
      data: { result: 1, durationMs: 1, cached: false, redacted: [] },
    });
    t.equal(next.status, 'completed');
    t.strictSame(state, STATES.executing);
  });
});

t.test('nothing follows a terminal event', async (t) => {
  for (const terminal of [completeCmd, failCmd]) {
    let state = initialState();
    for (const c of [requestCmd, startCmd, terminal])
      for (const e of decide(c, state)) state = evolve(state, e);
    t.ok(isTerminalState(state), `${terminal.type} leads to a terminal state`);
    for (const c of Object.values(COMMANDS)) {
      t.throws(() => decide(c, state), IllegalCommandError, `${c.type} after ${state.status} is refused`);
    }
  }
  t.notOk(isTerminalState(STATES.none));
  t.notOk(isTerminalState(STATES.requested));
  t.notOk(isTerminalState(STATES.executing));
});

t.test('random command sequences: one request, at most one terminal event, attempts counted', async (t) => {
  const commandArb = fc.constantFrom(...Object.values(COMMANDS));
  fc.assert(
    fc.property(fc.array(commandArb, { maxLength: 12 }), (commands) => {
      let state = initialState();
      const events: ToolEventBody[] = [];
      for (const c of commands) {
        const wasTerminal = isTerminalState(state);
        let out: ToolEventBody[];
        try {
          out = decide(c, state);
        } catch (e) {
          if (!(e instanceof IllegalCommandError)) throw e;
          continue;
        }
        if (wasTerminal) throw new Error(`${c.type} accepted after a terminal state`);
        for (const e of out) state = evolve(state, e);
        events.push(...out);
      }
      const types = events.map((e) => e.type);
      if (types.filter((x) => x === 'ToolRequested').length > 1) throw new Error('two ToolRequested');
      if (types.length > 0 && types[0] !== 'ToolRequested')
        throw new Error('first event is not ToolRequested');
      const terminals = types.filter((x) => x === 'ToolCompleted' || x === 'ToolFailed').length;
      if (terminals > 1) throw new Error('two terminal events');
      if (terminals === 1 && !['ToolCompleted', 'ToolFailed'].includes(types.at(-1)!)) {
        throw new Error('an event after the terminal one');
      }
      const starts = types.filter((x) => x === 'ToolExecuting').length;
      if (state.status === 'executing' && state.attempt !== starts)
        throw new Error('attempt != number of starts');
      if ((state.status === 'completed' || state.status === 'failed') && state.attempts !== starts) {
        throw new Error('attempts != number of starts');
      }
    }),
  );
  t.pass('property holds');
});
