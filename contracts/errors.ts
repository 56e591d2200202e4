import { z } from 'zod';

/** Why an execution failed: stored in `ToolFailed` and sent to the agent. */
export const ErrorCode = z.enum([
  'VALIDATION',
  'FORBIDDEN',
  'UNKNOWN_TOOL',
  'RATE_LIMITED',
  'TIMEOUT',
  'CANCELLED',
  'TOOL_ERROR',
  'OUTPUT_INVALID',
  'INTERRUPTED',
  'INTERNAL',
  /** The approval's deadline passed before anyone approved or denied. */
  'APPROVAL_EXPIRED',
  /** An approver denied the call. */
  'DENIED',
]);
export type ErrorCode = z.infer<typeof ErrorCode>;

/**
 * Refusals that cannot be recorded because no user is known (no valid token) or the system
 * cannot take the request right now. They are answered, never stored.
 */
export const RefusalCode = z.enum(['UNAUTHENTICATED', 'MALFORMED', 'OVERLOADED']);
export type RefusalCode = z.infer<typeof RefusalCode>;

export const ExecutionError = z.strictObject({
  code: ErrorCode,
  message: z.string().max(2000),
  details: z.record(z.string(), z.unknown()).optional(),
});
export type ExecutionError = z.infer<typeof ExecutionError>;
