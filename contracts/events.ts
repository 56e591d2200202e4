import { z } from 'zod';
import { ExecutionError } from './errors.ts';
import { RequestId, UserId } from './ids.ts';
import { JsonObject, JsonValue } from './json.ts';

/**
 * The events of an execution, each in a versioned envelope. They are stored in the user's stream
 * `user-<userId>`; `metadata.prevHash` and `metadata.hash` chain them (see chain.ts). The four of
 * the life cycle come first; the facts that change an execution's course (a cancel asked for, an
 * approval asked for, given or refused) follow, in the same stream, versioned the same way. Which
 * event may follow which is decided in execution.ts.
 */
export const EVENT_TYPES = [
  'ToolRequested',
  'ToolExecuting',
  'ToolCompleted',
  'ToolFailed',
  'ToolCancelRequested',
  'ToolApprovalRequested',
  'ToolApproved',
  'ToolDenied',
] as const;
export type ToolEventType = (typeof EVENT_TYPES)[number];
export const SCHEMA_VERSION = 1;

export const Hash = z.string().regex(/^[0-9a-f]{64}$/, 'must be a hex SHA-256');
/** The `prevHash` of the first event of a stream. */
export const GENESIS_HASH = '0'.repeat(64);

export const EventMetadata = z.strictObject({
  userId: UserId,
  executionId: z.uuid(),
  requestId: RequestId,
  correlationId: z.string().min(1).max(128),
  /** The id of the event (or request) that caused this one; null for a request. */
  causationId: z.string().max(128).nullable(),
  occurredAt: z.iso.datetime({ offset: true }),
  prevHash: Hash,
  hash: Hash,
});
export type EventMetadata = z.infer<typeof EventMetadata>;

/**
 * What a ToolRequested holds in place of arguments it does not store (a refusal: the request never
 * ran, see docs/dispatcher.md). They describe the `args` the event would otherwise hold (redacted
 * as such: by the manifest of `tool@version`, every top-level value when `version` is null):
 * `bytes` is the UTF-8 length of their canonical JSON, `sha256` its SHA-256 (`argsHash`). Whoever
 * holds a copy of the arguments can check it against them; nobody can grow the store with them.
 */
export const OmittedArgs = z.strictObject({
  bytes: z.number().int().nonnegative(),
  sha256: Hash,
});
export type OmittedArgs = z.infer<typeof OmittedArgs>;

export const ToolRequestedData = z.strictObject({
  /** The tool named by the request, as it was named (also when no such tool exists). */
  tool: z.string().min(1).max(64),
  /** The registered tool's version; null when the registry had no tool by that name and version. */
  version: z.string().max(32).nullable(),
  /** Arguments with sensitive fields replaced by `"[REDACTED]"`; `{}` when `argsOmitted` is set. */
  args: JsonObject,
  /** Names of the top-level fields that were redacted (as listed in the manifest); `[]` when `argsOmitted` is set. */
  redacted: z.array(z.string()).default([]),
  /**
   * Set when the arguments were not stored (a refusal): their size and hash. Absent on every
   * request that was admitted, and on events written before it existed.
   */
  argsOmitted: OmittedArgs.optional(),
});
/**
 * What metrics labels and per-tool read models call a tool the registry did not know (an execution
 * whose ToolRequested has `version: null`). Agents choose tool names: a label or a row per name
 * would let anyone grow them without bound. The event keeps the name as it was asked.
 */
export const UNKNOWN_TOOL_LABEL = '(unknown)';

export const ToolExecutingData = z.strictObject({
  attempt: z.number().int().min(1),
  /** The dispatcher instance or tool worker that runs it. */
  runner: z.string().min(1).max(128),
  timeoutMs: z.number().int().positive(),
});
export const ToolCompletedData = z.strictObject({
  result: JsonValue,
  redacted: z.array(z.string()).default([]),
  durationMs: z.number().nonnegative(),
  cached: z.boolean(),
});
export const ToolFailedData = z.strictObject({
  error: ExecutionError,
  durationMs: z.number().nonnegative().nullable(),
});

/**
 * Who asked for a cancel: the execution's user (`admin: false`), or someone acting for them
 * (`admin: true`: a holder of the `admin` or the `operator` role; the name is kept, events being
 * immutable, though it means "for another user"). `userId` is who asked.
 */
export const CancelRequester = z.strictObject({
  userId: UserId,
  admin: z.boolean(),
});
export const ToolCancelRequestedData = z.strictObject({
  by: CancelRequester,
  reason: z.string().max(500),
  /** When the cancel was asked for (the request's time, which may precede the append). */
  requestedAt: z.iso.datetime({ offset: true }),
});

/**
 * The hash an approval is bound to: SHA-256 of the canonical JSON of the arguments exactly as the
 * agent sent them, before redaction (see `argsHash` in execution.ts for why).
 */
export const ArgsHash = Hash;
/** A role an approver must hold (a claim of the approver's token). */
export const ApproverRole = z.string().min(1).max(64);

export const ToolApprovalRequestedData = z.strictObject({
  argsHash: ArgsHash,
  /** Holders of any one of these roles may approve or deny. */
  approverRoles: z.array(ApproverRole).min(1).max(16),
  /** After this instant the execution ends `APPROVAL_EXPIRED`; kept here so a restart enforces it. */
  deadline: z.iso.datetime({ offset: true }),
  /** The user who asked for the call (the stream's user). */
  requesterId: UserId,
  /** Whether the requester may approve their own call. */
  allowSelfApproval: z.boolean(),
});
export const ToolApprovedData = z.strictObject({
  approverId: UserId,
  /** The approver's role that allowed it (one of the requested approver roles). */
  approverRole: ApproverRole,
  /** The hash the approver saw: equal to the one requested, or the approval is refused. */
  argsHash: ArgsHash,
  reason: z.string().max(500).optional(),
});
export const ToolDeniedData = z.strictObject({
  approverId: UserId,
  approverRole: ApproverRole,
  argsHash: ArgsHash,
  reason: z.string().max(500),
});

function envelope<T extends ToolEventType, D extends z.ZodType>(type: T, data: D) {
  return z.strictObject({
    id: z.uuid(),
    type: z.literal(type),
    schemaVersion: z.literal(SCHEMA_VERSION),
    data,
    metadata: EventMetadata,
  });
}

export const ToolRequested = envelope('ToolRequested', ToolRequestedData);
export const ToolExecuting = envelope('ToolExecuting', ToolExecutingData);
export const ToolCompleted = envelope('ToolCompleted', ToolCompletedData);
export const ToolFailed = envelope('ToolFailed', ToolFailedData);
export const ToolCancelRequested = envelope('ToolCancelRequested', ToolCancelRequestedData);
export const ToolApprovalRequested = envelope('ToolApprovalRequested', ToolApprovalRequestedData);
export const ToolApproved = envelope('ToolApproved', ToolApprovedData);
export const ToolDenied = envelope('ToolDenied', ToolDeniedData);
export const ToolEvent = z.discriminatedUnion('type', [
  ToolRequested,
  ToolExecuting,
  ToolCompleted,
  ToolFailed,
  ToolCancelRequested,
  ToolApprovalRequested,
  ToolApproved,
  ToolDenied,
]);

export type ToolRequested = z.infer<typeof ToolRequested>;
export type ToolExecuting = z.infer<typeof ToolExecuting>;
export type ToolCompleted = z.infer<typeof ToolCompleted>;
export type ToolFailed = z.infer<typeof ToolFailed>;
export type ToolCancelRequested = z.infer<typeof ToolCancelRequested>;
export type ToolApprovalRequested = z.infer<typeof ToolApprovalRequested>;
export type ToolApproved = z.infer<typeof ToolApproved>;
export type ToolDenied = z.infer<typeof ToolDenied>;
export type ToolEvent = z.infer<typeof ToolEvent>;

/** An event's type and data without its envelope: what the life-cycle decider speaks. */
export type ToolEventBody = {
  [E in ToolEvent as E['type']]: { type: E['type']; data: E['data'] };
}[ToolEventType];

export const isTerminal = (type: string): type is 'ToolCompleted' | 'ToolFailed' =>
  type === 'ToolCompleted' || type === 'ToolFailed';
