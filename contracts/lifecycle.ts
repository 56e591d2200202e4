import type { z } from 'zod';
import type {
  ToolCompletedData,
  ToolEventBody,
  ToolExecutingData,
  ToolFailedData,
  ToolRequestedData,
} from './events.ts';

/**
 * The life of one execution as a pure decider: requested -> executing -> completed | failed.
 * A request may fail before it runs (refused); an executing tool may be started again (a re-run
 * after a crash); nothing follows a terminal event.
 */
export type ExecutionState =
  | { status: 'none' }
  | { status: 'requested'; tool: string; version: string | null }
  | { status: 'executing'; tool: string; version: string | null; attempt: number }
  | { status: 'completed'; tool: string; version: string | null; attempts: number }
  | { status: 'failed'; tool: string | null; version: string | null; attempts: number; code: string };
export type ExecutionStatus = ExecutionState['status'];

export type ExecutionCommand =
  | { type: 'Request'; data: z.input<typeof ToolRequestedData> }
  | { type: 'Start'; data: Omit<z.input<typeof ToolExecutingData>, 'attempt'> }
  | { type: 'Complete'; data: z.input<typeof ToolCompletedData> }
  | { type: 'Fail'; data: z.input<typeof ToolFailedData> };

export class IllegalCommandError extends Error {
  readonly code = 'ILLEGAL_COMMAND';
  constructor(
    readonly command: ExecutionCommand['type'],
    readonly status: ExecutionStatus,
  ) {
    super(`${command} is not allowed when the execution is ${status}`);
    this.name = 'IllegalCommandError';
  }
}

export const initialState = (): ExecutionState => ({ status: 'none' });

export const isTerminalState = (s: ExecutionState): boolean =>
  s.status === 'completed' || s.status === 'failed';

export function decide(command: ExecutionCommand, state: ExecutionState): ToolEventBody[] {
  const refuse = (): never => {
    throw new IllegalCommandError(command.type, state.status);
  };
  switch (command.type) {
    case 'Request':
      if (state.status !== 'none') return refuse();
      return [
        {
          type: 'ToolRequested',
          data: { ...command.data, redacted: command.data.redacted ?? [] },
        },
      ];
    case 'Start':
      if (state.status === 'requested')
        return [{ type: 'ToolExecuting', data: { ...command.data, attempt: 1 } }];
      if (state.status === 'executing') {
        return [{ type: 'ToolExecuting', data: { ...command.data, attempt: state.attempt + 1 } }];
      }
      return refuse();
    case 'Complete':
      if (state.status !== 'executing') return refuse();
      return [{ type: 'ToolCompleted', data: { ...command.data, redacted: command.data.redacted ?? [] } }];
    case 'Fail':
      if (state.status !== 'requested' && state.status !== 'executing') return refuse();
      return [{ type: 'ToolFailed', data: command.data }];
    default: {
      const unknown: never = command;
      throw new Error(`unknown command ${JSON.stringify(unknown)}`);
    }
  }
}

export function evolve(state: ExecutionState, event: ToolEventBody): ExecutionState {
  switch (event.type) {
    case 'ToolRequested':
      return { status: 'requested', tool: event.data.tool, version: event.data.version };
    case 'ToolExecuting':
      return {
        status: 'executing',
        tool: 'tool' in state ? (state.tool ?? '') : '',
        version: 'version' in state ? state.version : null,
        attempt: event.data.attempt,
      };
    case 'ToolCompleted':
      return {
        status: 'completed',
        tool: 'tool' in state ? (state.tool ?? '') : '',
        version: 'version' in state ? state.version : null,
        attempts: state.status === 'executing' ? state.attempt : 0,
      };
    case 'ToolFailed':
      return {
        status: 'failed',
        tool: 'tool' in state ? state.tool : null,
        version: 'version' in state ? state.version : null,
        attempts: state.status === 'executing' ? state.attempt : 0,
        code: event.data.error.code,
      };
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
