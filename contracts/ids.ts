import { hash } from 'node:crypto';
import { z } from 'zod';

/**
 * Names that carry a user id: event streams and NATS subjects. Every function here refuses an id
 * outside `[A-Za-z0-9_-]{1,64}`, so no id can spell a wildcard (`*`, `>`), a token separator (`.`)
 * or another user's name.
 */
export const USER_ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

export const UserId = z.string().regex(USER_ID_PATTERN, 'user id must match [A-Za-z0-9_-]{1,64}');
export type UserId = z.infer<typeof UserId>;

export class InvalidUserIdError extends Error {
  readonly code = 'INVALID_USER_ID';
  constructor(value: unknown) {
    super(`invalid user id ${JSON.stringify(String(value).slice(0, 80))}: must match [A-Za-z0-9_-]{1,64}`);
    this.name = 'InvalidUserIdError';
  }
}

export function assertUserId(value: unknown): string {
  if (typeof value !== 'string' || !USER_ID_PATTERN.test(value)) throw new InvalidUserIdError(value);
  return value;
}

export const isUserId = (value: unknown): value is string =>
  typeof value === 'string' && USER_ID_PATTERN.test(value);

/** Event store streams. */
export const USER_STREAM_PREFIX = 'user-';
export const userStream = (userId: string): string => `${USER_STREAM_PREFIX}${assertUserId(userId)}`;
export function userIdOfStream(stream: string): string | undefined {
  if (!stream.startsWith(USER_STREAM_PREFIX)) return undefined;
  const id = stream.slice(USER_STREAM_PREFIX.length);
  return isUserId(id) ? id : undefined;
}

/**
 * The id of a NATS identity (an agent, a dispatcher, a worker...): an nkey's public key or a user
 * name. It names the identity's inbox and, for an agent, the last token of its request subjects,
 * so the server's permissions can tie both to the identity (`permissionsOf` in scripts/nats-auth.ts).
 */
export const IDENTITY_ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
export const isIdentityId = (value: unknown): value is string =>
  typeof value === 'string' && IDENTITY_ID_PATTERN.test(value);
function assertIdentityId(value: string): string {
  if (!isIdentityId(value))
    throw new Error(`invalid NATS identity id ${JSON.stringify(String(value).slice(0, 80))}`);
  return value;
}
/** Where an identity's replies arrive: it may subscribe under this prefix and nowhere else. */
export const inboxPrefixOf = (identity: string): string => `_INBOX.${assertIdentityId(identity)}`;

/** NATS subjects and JetStream names. */
export const subjects = {
  /**
   * Agent `agentId` publishes tool requests of user `userId` here; the token's subject must equal
   * `userId`, and answers go only to an inbox under `inboxPrefixOf(agentId)`.
   */
  request: (userId: string, agentId: string): string =>
    `toolbus.requests.${assertUserId(userId)}.${assertIdentityId(agentId)}`,
  requestsAll: 'toolbus.requests.>',
  /** Every appended event of a user, for the notifier. */
  events: (userId: string): string => `events.user.${assertUserId(userId)}`,
  eventsAll: 'events.user.*',
  /** Progress of a running execution (not a stored event). */
  progress: (userId: string): string => `toolbus.progress.${assertUserId(userId)}`,
  progressAll: 'toolbus.progress.*',
  /** Cancellation requests for a user's executions. */
  cancel: (userId: string, agentId: string): string =>
    `toolbus.cancel.${assertUserId(userId)}.${assertIdentityId(agentId)}`,
  cancelAll: 'toolbus.cancel.*.*',
  /**
   * An agent whose retry JetStream dropped as a duplicate asks here for the stored answer
   * (`{requestId}` -> `{answer: AgentAnswer | null}`); every dispatcher serves it.
   */
  answers: (userId: string, agentId: string): string =>
    `toolbus.answers.${assertUserId(userId)}.${assertIdentityId(agentId)}`,
  answersAll: 'toolbus.answers.*.*',
  /**
   * A tool worker announces the versions of one tool it serves here (one message per tool). A
   * namespaced tool (`everything.echo`) spans two subject tokens, so every tool subject below has
   * one token more for it, and a wildcard over all tools ends in `>`.
   */
  toolAnnounce: (name: string): string => `toolbus.tools.announce.${assertToolName(name)}`,
  toolAnnounceAll: 'toolbus.tools.announce.>',
  /** A worker publishes the progress of one invocation of tool `name` here. */
  toolProgress: (name: string, invocationId: string): string =>
    `toolbus.tools.progress.${assertToolName(name)}.${assertIdentityId(invocationId)}`,
  /** A dispatcher tells the workers of tool `name` to stop an invocation. */
  toolCancel: (name: string): string => `toolbus.tools.cancel.${assertToolName(name)}`,
  toolCancelAll: 'toolbus.tools.cancel.>',
  /**
   * A dispatcher tells the workers of tool `name` that it refused one's announcement (an
   * `AnnouncementRefusal` naming the worker and why), so a worker is not left believing it serves.
   */
  toolRefused: (name: string): string => `toolbus.tools.refused.${assertToolName(name)}`,
  toolRefusedAll: 'toolbus.tools.refused.>',
  /** Dispatchers ask workers to announce again (on start). */
  toolDiscover: 'toolbus.tools.discover',
  /** A worker serves one tool version here, in queue group `toolbus-workers`. */
  toolRun: (name: string, version: string): string =>
    `toolbus.tools.run.${assertToolName(name)}.${assertVersion(version).replaceAll('.', '_')}`,
} as const;

const REQUEST_SUBJECT = /^toolbus\.requests\.([A-Za-z0-9_-]{1,64})\.([A-Za-z0-9_-]{1,64})$/;

/** The user and the publishing agent a request subject names, or null for any other subject. */
export function parseRequestSubject(subject: string): { userId: string; agentId: string } | null {
  const m = REQUEST_SUBJECT.exec(subject);
  return m ? { userId: m[1]!, agentId: m[2]! } : null;
}

/** True when `replyTo` is an inbox of identity `agentId`: the only place its answers may go. */
export const isInboxOf = (agentId: string, replyTo: string): boolean =>
  isIdentityId(agentId) && replyTo.startsWith(`${inboxPrefixOf(agentId)}.`);

export const jetstream = {
  requestsStream: 'TOOLBUS_REQUESTS',
  dispatcherConsumer: 'toolbus-dispatcher',
} as const;

export const USER_ID_HEADER = 'Toolbus-User';

/**
 * Tool names and versions. A name is either plain (`word_count`: `[a-z][a-z0-9_]{1,63}`) or
 * namespaced (`everything.get-sum`: a namespace `[a-z][a-z0-9_-]{0,31}`, a dot, and a name
 * `[A-Za-z0-9_-]{1,64}`, the form MCP servers' tools take behind the MCP tool provider). Either way
 * it is one or two NATS subject tokens with no wildcard and no empty token, and a plain name never
 * equals a namespaced one. A namespaced name has exactly one dot: a name part with a dot would make
 * two different tools share subjects.
 */
export const TOOL_NAMESPACE_PATTERN = /^[a-z][a-z0-9_-]{0,31}$/;
export const TOOL_NAME_PATTERN = /^(?:[a-z][a-z0-9_]{1,63}|[a-z][a-z0-9_-]{0,31}\.[A-Za-z0-9_-]{1,64})$/;
export const VERSION_PATTERN = /^(0|[1-9]\d{0,5})\.(0|[1-9]\d{0,5})\.(0|[1-9]\d{0,5})$/;
const TOOL_NAME_RULE =
  '[a-z][a-z0-9_]{1,63}, or <namespace>.<name> with a namespace [a-z][a-z0-9_-]{0,31} and a name [A-Za-z0-9_-]{1,64}';
export const ToolName = z.string().regex(TOOL_NAME_PATTERN, `tool name must match ${TOOL_NAME_RULE}`);
export const ToolVersion = z.string().regex(VERSION_PATTERN, 'version must be MAJOR.MINOR.PATCH');
export const ToolNamespace = z
  .string()
  .regex(TOOL_NAMESPACE_PATTERN, 'tool namespace must match [a-z][a-z0-9_-]{0,31}');

export function assertToolNamespace(namespace: string): string {
  if (typeof namespace !== 'string' || !TOOL_NAMESPACE_PATTERN.test(namespace))
    throw new Error(
      `invalid tool namespace ${JSON.stringify(String(namespace).slice(0, 80))}: must match [a-z][a-z0-9_-]{0,31}`,
    );
  return namespace;
}

/** The namespace of a namespaced tool name (`everything` of `everything.echo`), else undefined. */
export const toolNamespaceOf = (name: string): string | undefined =>
  TOOL_NAME_PATTERN.test(name) && name.includes('.') ? name.slice(0, name.indexOf('.')) : undefined;

function assertToolName(name: string): string {
  if (typeof name !== 'string' || !TOOL_NAME_PATTERN.test(name))
    throw new Error(
      `invalid tool name ${JSON.stringify(String(name).slice(0, 80))}: must match ${TOOL_NAME_RULE}`,
    );
  return name;
}
function assertVersion(version: string): string {
  if (!VERSION_PATTERN.test(version)) throw new Error(`invalid tool version ${JSON.stringify(version)}`);
  return version;
}

/** Request ids are chosen by agents; they are the JetStream dedup key (`Nats-Msg-Id`). */
export const REQUEST_ID_PATTERN = /^[A-Za-z0-9_.:-]{1,128}$/;
export const RequestId = z.string().regex(REQUEST_ID_PATTERN, 'request id must match [A-Za-z0-9_.:-]{1,128}');

/** A UUID (v5 layout) derived from a name, so ids are the same each time the same step is taken. */
export function deterministicUuid(...parts: string[]): string {
  const h = hash('sha256', parts.join('\u0000'), 'buffer');
  h[6] = (h[6]! & 0x0f) | 0x50;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const hex = h.subarray(0, 16).toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** One execution per (user, request id). */
export const executionIdFor = (userId: string, requestId: string): string =>
  deterministicUuid('execution', assertUserId(userId), requestId);

/** One event id per step of an execution; a terminal step has a single id, so at most one is ever stored. */
/**
 * The steps of an execution that name its events' deterministic ids. Each happens at most once
 * (a second cancel or a second approval decides no event), so a retried append is a no-op.
 */
export type ExecutionStep =
  | 'requested'
  | `executing:${number}`
  | 'terminal'
  | 'cancel-requested'
  | 'approval-requested'
  | 'approval-decided';
export const eventIdFor = (executionId: string, step: ExecutionStep): string =>
  deterministicUuid('event', executionId, step);
