import { deepStrictEqual, fail } from 'node:assert/strict';

/** A decider as emmett shapes it: pure, time and ids in the command. */
export interface Decider<State, Command, Event> {
  decide: (command: Command, state: State) => Event[];
  evolve: (state: State, event: Event) => State;
  initialState: () => State;
}

export interface Then<Event> {
  /** The command decides exactly these events, in this order. */
  then(expected: Event[]): void;
  /** The command decides nothing (repeated, late, or nothing to do). */
  thenNothing(): void;
  /** The command is refused with an error carrying this `code`. */
  thenThrows(code: string): void;
}

/**
 * Given/when/then for a decider (emmett's DeciderSpecification): the given events are folded with
 * `evolve` from `initialState`, then the command is decided against that state. Framework-neutral:
 * a failed expectation throws an AssertionError, which a tap test reports as a failure.
 *
 *   spec.given([requested]).when(startAttempt).then([executing(1)])
 */
export function deciderSpecification<State, Command, Event>(decider: Decider<State, Command, Event>) {
  return {
    given(events: Event[]) {
      return {
        when(command: Command): Then<Event> {
          const decided = (): Event[] =>
            decider.decide(command, events.reduce(decider.evolve, decider.initialState()));
          return {
            then: (expected) => deepStrictEqual(decided(), expected),
            thenNothing: () => deepStrictEqual(decided(), []),
            thenThrows: (code) => {
              let events: Event[];
              try {
                events = decided();
              } catch (e) {
                const actual = (e as { code?: unknown }).code;
                if (actual !== code) fail(`expected a refusal ${code}, got ${String(actual)}: ${String(e)}`);
                return;
              }
              fail(`expected a refusal ${code}, but it decided ${JSON.stringify(events)}`);
            },
          };
        },
      };
    },
  };
}
