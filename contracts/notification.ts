import { z } from 'zod';
import { ToolEvent, type ToolEventType } from './events.ts';
import { UserId } from './ids.ts';

/** `ToolExecuting` -> `tool_executing`: the names frontends switch on, one per event type. */
export const NOTIFICATION_NAMES = {
  ToolRequested: 'tool_requested',
  ToolExecuting: 'tool_executing',
  ToolCompleted: 'tool_completed',
  ToolFailed: 'tool_failed',
  ToolCancelRequested: 'tool_cancel_requested',
  ToolApprovalRequested: 'tool_approval_requested',
  ToolApproved: 'tool_approved',
  ToolDenied: 'tool_denied',
} as const satisfies Record<ToolEventType, string>;
export type NotificationName = (typeof NOTIFICATION_NAMES)[ToolEventType];
export const notificationName = (type: ToolEventType): NotificationName => NOTIFICATION_NAMES[type];
const NAMES = Object.values(NOTIFICATION_NAMES) as [NotificationName, ...NotificationName[]];

/** WebSocket close codes of the notifier (4000-4999 are the application's own). */
export const CLOSE_CODES = {
  /** No valid ticket or token, or it expired. */
  unauthenticated: 4401,
  /** Asked for what the user may not see (another user's events). */
  forbidden: 4403,
  /** A frame that is not JSON or not a known message. */
  badMessage: 4400,
  /** The client stopped reading; its outgoing buffer passed the limit. */
  slowConsumer: 4408,
  /** Too many messages from the client. */
  rateLimited: 4429,
  /** The notifier failed (the event store did not answer); reconnect and resume. */
  internalError: 1011,
  /** The notifier is shutting down; reconnect and resume. */
  goingAway: 1001,
  /** A frame over the size limit (as the WebSocket protocol says). */
  tooBig: 1009,
} as const;

/** Server to client. */
export const Notification = z.discriminatedUnion('kind', [
  z.strictObject({
    kind: z.literal('event'),
    name: z.enum(NAMES),
    userId: UserId,
    /** The event's revision in its user stream: contiguous from 0, the resume point. */
    revision: z.number().int().nonnegative(),
    event: ToolEvent,
  }),
  z.strictObject({
    kind: z.literal('progress'),
    userId: UserId,
    executionId: z.string(),
    correlationId: z.string(),
    fraction: z.number().min(0).max(1),
    message: z.string().max(500).optional(),
  }),
  z.strictObject({
    kind: z.literal('ready'),
    /** The users this socket receives events of (`*` for an admin watching all). */
    userId: z.union([UserId, z.literal('*')]),
    /** Events up to here were replayed; live events follow. */
    revision: z.number().int().min(-1).nullable(),
  }),
  z.strictObject({ kind: z.literal('error'), code: z.string(), message: z.string() }),
  /** The answer to a client's `ping`. */
  z.strictObject({ kind: z.literal('pong') }),
]);
export type Notification = z.infer<typeof Notification>;

/** Client to server. */
export const ClientMessage = z.discriminatedUnion('type', [
  /** First message when not authenticated by ticket: the user token. */
  z.strictObject({ type: z.literal('auth'), token: z.string().min(1).max(8192) }),
  /**
   * Receive the events after `afterRevision` (-1 or absent: from the start), then live ones.
   * `userId` defaults to the token's user; another user's id, or `*` for all, needs the admin role.
   */
  z.strictObject({
    type: z.literal('subscribe'),
    userId: z.union([UserId, z.literal('*')]).optional(),
    afterRevision: z.number().int().min(-1).optional(),
  }),
  z.strictObject({ type: z.literal('ping') }),
]);
export type ClientMessage = z.infer<typeof ClientMessage>;
