/** The auditor's coded errors, each with its HTTP status (the CLI's exit codes are `EXIT`). */
export const AUDIT_ERRORS = {
  UNAUTHENTICATED: { status: 401 },
  FORBIDDEN: { status: 403 },
  BAD_REQUEST: { status: 400 },
  NOT_FOUND: { status: 404 },
  HISTORY_BROKEN: { status: 409 },
  CHECKPOINT_REFUSED: { status: 422 },
  AUDIT_LOG_UNAVAILABLE: { status: 503 },
} as const;
export type AuditErrorCode = keyof typeof AUDIT_ERRORS;

/** CLI exit codes. */
export const EXIT = {
  ok: 0,
  /** The history is broken (or does not reach a checkpoint). */
  broken: 1,
  /** Bad arguments, unreadable file, nothing to do. */
  usage: 2,
  /** The checkpoint given is not one we signed for this user (forged, altered, other key or user). */
  checkpointRefused: 3,
  /** The store or the audit log could not be reached. */
  failure: 4,
} as const;

export class AuditError extends Error {
  constructor(
    readonly code: AuditErrorCode,
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
    this.name = 'AuditError';
  }
  get status(): number {
    return AUDIT_ERRORS[this.code].status;
  }
}
