import {
  executionDecider,
  type ExecutionCommand,
  type ExecutionState,
  type ToolEvent,
  type ToolEventBody,
} from '../../contracts/index.ts';
import type { Execution, UserStreams } from './streams.ts';

/** A decider, emmett style: pure `decide` and `evolve`, and the state before any event. */
export interface Decider<State, Command, Event> {
  decide(command: Command, state: State): Event[];
  evolve(state: State, event: Event): State;
  initialState(): State;
}

/**
 * Where the command loop appends: folds the stream's events (cached, caught up, or read again
 * through the index), calls `decide` with the state, appends what it returns with the expected
 * revision, and on a version conflict reads again and calls `decide` again (a bounded number of
 * times; see `UserStreams.step`).
 */
export interface DecidingStore<Stream, State, Event> {
  step(stream: Stream, decide: (state: State) => Event[]): Promise<{ appended: ToolEvent[] }>;
}

export interface HandleOptions {
  /**
   * The commands are for an execution not recorded yet (a first handling). When it is recorded
   * already (a redelivery, a duplicate won the race), nothing is decided: the caller looks at what
   * is recorded instead. Without it, `Request` on a recorded execution decides nothing and the
   * next command would act on the recorded one.
   */
  onlyNew?: boolean;
  /**
   * The commands act on this attempt (0: the execution as requested, before any attempt): the
   * outcome of attempt N, or a recovery judged from attempt N's runner. When the execution has
   * moved on (another dispatcher took it over meanwhile), nothing is decided. This is a
   * precondition on what the caller saw, like the expected revision, not a policy.
   */
  attempt?: number;
}

const sameAttempt = (state: ExecutionState, attempt: number): boolean =>
  attempt === 0 ? state.status === 'requested' : state.status === 'executing' && state.attempt === attempt;

/**
 * The command loop, one generic function: `DeciderCommandHandler(decider)(store, stream, commands)`
 * loads, folds with `evolve`, decides each command on the state the previous ones left, and
 * appends all the events in one append with the expected revision, retrying on a conflict. A
 * `DecisionError` of the decider is thrown as it is (nothing appended).
 */
export function DeciderCommandHandler<State extends ExecutionState, Command, Event extends ToolEventBody>(
  decider: Decider<State, Command, Event>,
) {
  return <Stream>(
    store: DecidingStore<Stream, State, Event>,
    stream: Stream,
    commands: Command | readonly Command[],
    options: HandleOptions = {},
  ): Promise<{ appended: ToolEvent[] }> => {
    const list: readonly Command[] = Array.isArray(commands) ? commands : [commands as Command];
    return store.step(stream, (state) => {
      if (options.onlyNew && state.status !== 'none') return [];
      if (options.attempt !== undefined && !sameAttempt(state, options.attempt)) return [];
      const events: Event[] = [];
      let s = state;
      for (const command of list) {
        for (const event of decider.decide(command, s)) {
          s = decider.evolve(s, event);
          events.push(event);
        }
      }
      return events;
    });
  };
}

/** The execution decider's command loop over the user streams. */
export const handleExecution: (
  streams: UserStreams,
  execution: Execution,
  commands: ExecutionCommand | readonly ExecutionCommand[],
  options?: HandleOptions,
) => Promise<{ appended: ToolEvent[] }> = DeciderCommandHandler(executionDecider);
