import { httpStatusOfCode } from '../../contracts/index.ts';

/** The auditor's coded errors; their HTTP statuses are the catalogue's (contracts/errors.ts). The CLI's exit codes are `EXIT`. */
const AUDIT_ERROR_CODES = [
  'UNAUTHENTICATED',
  'FORBIDDEN',
  'BAD_REQUEST',
  'NOT_FOUND',
  'HISTORY_BROKEN',
  'CHECKPOINT_REFUSED',
  'AUDIT_LOG_UNAVAILABLE',
] as const;
export const AUDIT_ERRORS = Object.fromEntries(
  AUDIT_ERROR_CODES.map((c) => [c, { status: httpStatusOfCode(c) }]),
) as Record<(typeof AUDIT_ERROR_CODES)[number], { status: number }>;
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
