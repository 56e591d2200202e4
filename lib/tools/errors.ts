import type { ErrorCode } from '../../contracts/index.ts';

/**
 * A tool definition or a worker's manifest that cannot be registered. The message names the tool
 * and lists every problem, so the author can fix them all at once.
 */
export class ToolDefinitionError extends Error {
  readonly code = 'TOOL_DEFINITION';
  constructor(
    readonly tool: string,
    readonly problems: string[],
  ) {
    super(`tool ${tool} cannot be registered:\n  - ${problems.join('\n  - ')}`);
    this.name = 'ToolDefinitionError';
  }
}

/**
 * A tool run that ended with a coded error. Errors from tool workers arrive as this class (or one
 * of the two subclasses below) carrying the code the worker reported; the dispatcher stores
 * `code` in `ToolFailed`.
 */
export class ToolRunError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly details?: Record<string, unknown>,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = 'ToolRunError';
  }
}

/** The arguments do not match the tool's input schema (recorded as `VALIDATION`). */
export class ToolInputError extends ToolRunError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('VALIDATION', message, details);
    this.name = 'ToolInputError';
  }
}

/** The tool returned something its output schema does not allow (recorded as `OUTPUT_INVALID`). */
export class ToolOutputError extends ToolRunError {
  constructor(message: string, details?: Record<string, unknown>) {
    super('OUTPUT_INVALID', message, details);
    this.name = 'ToolOutputError';
  }
}

/** The longest message an `ExecutionError` may carry. */
export const MAX_ERROR_MESSAGE = 2000;

export const clip = (s: string, max: number = MAX_ERROR_MESSAGE): string =>
  s.length <= max ? s : `${s.slice(0, max - 1)}…`;
