import { z } from 'zod';
import { ExecutionError } from './errors.ts';
import { RequestId, UserId } from './ids.ts';
import { JsonObject, JsonValue } from './json.ts';

/**
 * The four events of an execution, each in a versioned envelope. They are stored in the user's
 * stream `user-<userId>`; `metadata.prevHash` and `metadata.hash` chain them (see chain.ts).
 */
export const EVENT_TYPES = ['ToolRequested', 'ToolExecuting', 'ToolCompleted', 'ToolFailed'] as const;
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

export const ToolRequestedData = z.strictObject({
  /** The tool named by the request, as it was named (also when no such tool exists). */
  tool: z.string().min(1).max(64),
  /** The registered tool's version; null when the registry had no tool by that name and version. */
  version: z.string().max(32).nullable(),
  /** Arguments with sensitive fields replaced by `"[REDACTED]"`. */
  args: JsonObject,
  /** Names of the top-level fields that were redacted (as listed in the manifest). */
  redacted: z.array(z.string()).default([]),
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
export const ToolEvent = z.discriminatedUnion('type', [
  ToolRequested,
  ToolExecuting,
  ToolCompleted,
  ToolFailed,
]);

export type ToolRequested = z.infer<typeof ToolRequested>;
export type ToolExecuting = z.infer<typeof ToolExecuting>;
export type ToolCompleted = z.infer<typeof ToolCompleted>;
export type ToolFailed = z.infer<typeof ToolFailed>;
export type ToolEvent = z.infer<typeof ToolEvent>;

/** An event's type and data without its envelope: what the life-cycle decider speaks. */
export type ToolEventBody = {
  [E in ToolEvent as E['type']]: { type: E['type']; data: E['data'] };
}[ToolEventType];

export const isTerminal = (type: string): type is 'ToolCompleted' | 'ToolFailed' =>
  type === 'ToolCompleted' || type === 'ToolFailed';
