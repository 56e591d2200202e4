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
 * Refusals that cannot be recorded because no user is known (no valid token), the system cannot
 * take the request right now, or its request id is another request's. They are answered, never
 * stored.
 */
export const RefusalCode = z.enum(['UNAUTHENTICATED', 'MALFORMED', 'OVERLOADED', 'IDEMPOTENCY_CONFLICT']);
export type RefusalCode = z.infer<typeof RefusalCode>;

export const ExecutionError = z.strictObject({
  code: ErrorCode,
  message: z.string().max(2000),
  details: z.record(z.string(), z.unknown()).optional(),
});
export type ExecutionError = z.infer<typeof ExecutionError>;

/**
 * Codes the HTTP APIs answer besides those of executions: the projector's and auditor's query
 * errors, the cancel service's store-unavailable refusal, the approval routes' refusals (the
 * decider's, contracts/execution.ts), the notifier's tickets, the console's forwarding, and what
 * every service answers to a request its routes never see (wrong method, body too large, ...).
 * The notifier's WebSocket codes, sent on the socket, are in docs/notifier.md.
 */
export const ServiceErrorCode = z.enum([
  'BAD_REQUEST',
  'NOT_FOUND',
  'ALREADY_ENDED',
  'UNAVAILABLE',
  'HISTORY_BROKEN',
  'CHECKPOINT_REFUSED',
  'AUDIT_LOG_UNAVAILABLE',
  'REPLAY_FAILED',
  'SELF_APPROVAL',
  'NOT_AN_APPROVER',
  'HASH_MISMATCH',
  'NOT_AWAITING',
  'EXPIRED',
  'NOT_REQUESTED',
  'ILLEGAL_COMMAND',
  'AWAITING_APPROVAL',
  'ALREADY_RUNNING',
  'NOT_RUNNING',
  'FORBIDDEN_ORIGIN',
  'TOO_MANY_TICKETS',
  'TICKETS_UNAVAILABLE',
  'UPSTREAM_UNAVAILABLE',
  'UPSTREAM_TIMEOUT',
  'METHOD_NOT_ALLOWED',
  'PAYLOAD_TOO_LARGE',
  'UNSUPPORTED_MEDIA_TYPE',
  'TOO_MANY_REQUESTS',
]);
export type ServiceErrorCode = z.infer<typeof ServiceErrorCode>;

/** Every error code any Toolbus service answers over NATS or HTTP (socket codes: docs/notifier.md). */
export type Code = ErrorCode | RefusalCode | ServiceErrorCode;

export interface CodeEntry {
  /** The HTTP status an HTTP API answers it with. */
  status: number;
  /**
   * Whether sending the same request again (same request id) later may succeed. A recorded
   * execution's answer never changes: its retry gets the same answer, so only codes answered
   * before anything is recorded, or of a transient cause, are retryable.
   */
  retryable: boolean;
  /** When it is answered (the errors table of docs/dispatcher.md is made from these). */
  description: string;
  /** Whether an execution's events record it (`ToolFailed`), or it is only answered. */
  recorded: boolean;
}

/**
 * The one catalogue of error codes: HTTP status, retryability and meaning. The dispatcher's
 * answers and routes, the projector's and auditor's HTTP errors, and docs/dispatcher.md's table
 * (checked by contracts/errors.unit.spec.ts) all read it.
 */
export const ERROR_CATALOGUE: Readonly<Record<Code, Readonly<CodeEntry>>> = {
  VALIDATION: {
    status: 400,
    retryable: false,
    recorded: true,
    description: "bad body, or arguments that fail the tool's input schema (then after `ToolExecuting`)",
  },
  FORBIDDEN: {
    status: 403,
    retryable: false,
    recorded: true,
    description: "token for another user, or a missing role (recorded under the token's user)",
  },
  UNKNOWN_TOOL: { status: 404, retryable: false, recorded: true, description: 'no such tool or version' },
  RATE_LIMITED: {
    status: 429,
    retryable: true,
    recorded: true,
    description:
      'rate, concurrency or approval-waits limit (`details.limit`: `rate` / `concurrency` / `approvals`; for `rate` `retryAfterMs`, over HTTP also `Retry-After`); retry with a new request id',
  },
  TIMEOUT: {
    status: 504,
    retryable: false,
    recorded: true,
    description: 'the tool ran past its manifest timeout',
  },
  CANCELLED: {
    status: 409,
    retryable: false,
    recorded: true,
    description:
      'cancelled by its user, an operator or an admin (`details.cancelledBy`; `details.admin`: for another user; `details.reason`)',
  },
  TOOL_ERROR: {
    status: 502,
    retryable: false,
    recorded: true,
    description: 'the tool threw (or a worker failed)',
  },
  OUTPUT_INVALID: {
    status: 502,
    retryable: false,
    recorded: true,
    description: "output fails the tool's schema, is not JSON, or is over 512 KiB",
  },
  INTERRUPTED: {
    status: 502,
    retryable: false,
    recorded: true,
    description: 'its dispatcher died mid-run and the tool is not idempotent',
  },
  INTERNAL: {
    status: 500,
    retryable: false,
    recorded: true,
    description: 'the dispatcher failed to handle the request `DISPATCHER_MAX_FAILURES` times; given up',
  },
  APPROVAL_EXPIRED: {
    status: 410,
    retryable: false,
    recorded: true,
    description: "the approval's deadline passed before anyone approved or denied",
  },
  DENIED: { status: 403, retryable: false, recorded: true, description: 'an approver denied the call' },
  UNAUTHENTICATED: {
    status: 401,
    retryable: false,
    recorded: false,
    description: 'no, expired or forged token',
  },
  MALFORMED: {
    status: 400,
    retryable: false,
    recorded: false,
    description:
      'no request id to record it under, or refused by the client (over the size limit); over HTTP a body that is not JSON (400), is not sent as `application/json` (415), is over 1 MiB (413), or makes a request over `LIMITS.maxRequestBytes` once published with its `replyTo` (400, both sizes named); a path `/executions/:executionId` that names no execution, or a `userId` that is none (400)',
  },
  OVERLOADED: {
    status: 503,
    retryable: true,
    recorded: false,
    description:
      'the intake did not accept the request, or the request waited in it longer than `INTAKE_MAX_WAIT_MS` and was not run (`waitedMs`, `shed`), or a lookup was refused over its bound or deadline (`retryAfterMs`); retry with the same request id',
  },
  IDEMPOTENCY_CONFLICT: {
    status: 409,
    retryable: false,
    recorded: false,
    description:
      'the request id was first used with another tool or other arguments (`requestId`; over MCP, the idempotency key): nothing was run for this request, and the first one stands; send it under a new request id. Sensitive arguments are not compared',
  },
  BAD_REQUEST: {
    status: 400,
    retryable: false,
    recorded: false,
    description: 'projector and auditor: a query or body that does not parse',
  },
  NOT_FOUND: {
    status: 404,
    retryable: false,
    recorded: false,
    description: 'no such execution (of the caller)',
  },
  ALREADY_ENDED: {
    status: 409,
    retryable: false,
    recorded: false,
    description: 'cancel: the execution had ended already; nothing was changed (its answer is in the body)',
  },
  UNAVAILABLE: {
    status: 503,
    retryable: true,
    recorded: false,
    description: 'cancel: the event store could not be reached',
  },
  HISTORY_BROKEN: {
    status: 409,
    retryable: false,
    recorded: false,
    description: "auditor: the user's history fails verification",
  },
  CHECKPOINT_REFUSED: {
    status: 422,
    retryable: false,
    recorded: false,
    description: 'auditor: the checkpoint given is not one it signed for this user',
  },
  AUDIT_LOG_UNAVAILABLE: {
    status: 503,
    retryable: true,
    recorded: false,
    description: 'auditor: the access log could not be written, so nothing is read',
  },
  REPLAY_FAILED: {
    status: 500,
    retryable: true,
    recorded: false,
    description:
      'auditor: the event store failed during an NDJSON replay; sent as its last line (the answer began 200), the export is incomplete',
  },
  SELF_APPROVAL: {
    status: 403,
    retryable: false,
    recorded: false,
    description: "approve / deny: the call is the caller's own, and the tool does not allow self-approval",
  },
  NOT_AN_APPROVER: {
    status: 403,
    retryable: false,
    recorded: false,
    description: 'approve / deny: the caller holds none of the approver roles the wait asked for',
  },
  HASH_MISMATCH: {
    status: 409,
    retryable: false,
    recorded: false,
    description: 'approve / deny: `argsHash` is not that of the arguments approval was asked for',
  },
  NOT_AWAITING: {
    status: 409,
    retryable: false,
    recorded: false,
    description: 'approve / deny: the call no longer waits (decided by another approver, cancelled, ended)',
  },
  EXPIRED: {
    status: 410,
    retryable: false,
    recorded: false,
    description: "approve / deny: the approval's deadline has passed (the execution ends `APPROVAL_EXPIRED`)",
  },
  NOT_REQUESTED: {
    status: 404,
    retryable: false,
    recorded: false,
    description: 'approve / deny: the execution the wait names was never requested (a wait left behind)',
  },
  ILLEGAL_COMMAND: {
    status: 409,
    retryable: false,
    recorded: false,
    description: 'approve / deny: the decision does not apply to the execution as it stands',
  },
  AWAITING_APPROVAL: {
    status: 409,
    retryable: false,
    recorded: false,
    description: 'the execution waits for approval: only an approver, a cancel or its deadline moves it',
  },
  ALREADY_RUNNING: {
    status: 409,
    retryable: false,
    recorded: false,
    description: 'an attempt of the execution is running',
  },
  NOT_RUNNING: {
    status: 409,
    retryable: false,
    recorded: false,
    description: 'the execution is not running',
  },
  FORBIDDEN_ORIGIN: {
    status: 403,
    retryable: false,
    recorded: false,
    description: 'notifier: the `Origin` is not in `NOTIFIER_ALLOWED_ORIGINS`',
  },
  TOO_MANY_TICKETS: {
    status: 429,
    retryable: true,
    recorded: false,
    description: 'notifier: the user asked for tickets over their rate (`Retry-After`)',
  },
  TICKETS_UNAVAILABLE: {
    status: 503,
    retryable: true,
    recorded: false,
    description: 'notifier: the ticket store (Redis) is unavailable; authenticate on the socket instead',
  },
  UPSTREAM_UNAVAILABLE: {
    status: 502,
    retryable: true,
    recorded: false,
    description: 'console: the service it forwards to is not reachable',
  },
  UPSTREAM_TIMEOUT: {
    status: 504,
    retryable: true,
    recorded: false,
    description: 'console: the service it forwards to did not answer within `CONSOLE_UPSTREAM_TIMEOUT_MS`',
  },
  METHOD_NOT_ALLOWED: {
    status: 405,
    retryable: false,
    recorded: false,
    description:
      'any service: a 405 raised below the routes (none is today: a method a path does not take gets 404 `NOT_FOUND`, `no route <method> <path>`)',
  },
  PAYLOAD_TOO_LARGE: {
    status: 413,
    retryable: false,
    recorded: false,
    description:
      "any service: the body is over the service's limit (the dispatcher's routes answer `MALFORMED`)",
  },
  UNSUPPORTED_MEDIA_TYPE: {
    status: 415,
    retryable: false,
    recorded: false,
    description:
      "any service: the body is not sent as `application/json` (the dispatcher's routes answer `MALFORMED`)",
  },
  TOO_MANY_REQUESTS: {
    status: 429,
    retryable: true,
    recorded: false,
    description: 'any service: a 429 raised below the routes (a plugin)',
  },
};

/** Every code of the catalogue, in the order of the enums. */
export const ALL_CODES: readonly Code[] = [
  ...ErrorCode.options,
  ...RefusalCode.options,
  ...ServiceErrorCode.options,
];

/** The HTTP status of a code. */
export const httpStatusOfCode = (code: Code): number => ERROR_CATALOGUE[code].status;

/** Whether a later retry of what was refused with `code` may succeed. */
export const isRetryableCode = (code: Code): boolean => ERROR_CATALOGUE[code].retryable;

/** The errors table of docs/dispatcher.md, made from the catalogue (a unit test keeps them equal). */
export function errorTableMarkdown(): string {
  const rows = ALL_CODES.map((code) => {
    const e = ERROR_CATALOGUE[code];
    return [
      `\`${code}\``,
      String(e.status),
      e.retryable ? 'yes' : 'no',
      e.recorded ? 'yes' : 'no',
      e.description,
    ];
  });
  const header = ['code', 'HTTP', 'retryable', 'recorded', 'when'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
  return [line(header), `| ${widths.map((w) => '-'.repeat(w)).join(' | ')} |`, ...rows.map(line)].join('\n');
}
