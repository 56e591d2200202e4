import { hash } from 'node:crypto';
import { z } from 'zod';
import { ErrorCode, RefusalCode } from './errors.ts';
import { RequestId, ToolName, ToolVersion, UserId } from './ids.ts';
import { canonicalJson } from './chain.ts';
import { checkJsonShape, JsonObject, JsonValue, LIMITS } from './json.ts';

/** NATS headers of a tool request. The token travels in a header, never in the body or a subject. */
export const REQUEST_HEADERS = {
  authorization: 'Authorization',
  msgId: 'Nats-Msg-Id',
} as const;

/**
 * The `Nats-Msg-Id` of a request: `<userId>:<requestId>/<16 hex of the token's SHA-256><16 hex of
 * what it asks>`. JetStream drops a repeat of an id within its duplicate window, whoever publishes
 * it: with only `<userId>:<requestId>`, any agent could publish first under another user's id and
 * have that user's request dropped unseen. Bound to the token, the id is one only that token's
 * holder can make; a retry with a new token of the same user is not dropped there but answered
 * from the store, as any repeat (one execution per user and request id). Bound to the tool and
 * arguments (`ask`, their `askDigest`), a request id reused for something else is not dropped either: it
 * reaches a dispatcher, which refuses it (IDEMPOTENCY_CONFLICT) instead of its agent getting the
 * first request's answer. The dispatcher reads the request id back from the part before `/`
 * (`requestIdFromMsgId`), so no request id may hold a `/`.
 *
 * `republish` n > 0 appends `~n`: the sending after the intake shed a message of the request
 * unrun n times (it waited longer than INTAKE_MAX_WAIT_MS; decision 0035). JetStream would drop
 * the shed message's id as a repeat within its window, and nothing would answer; every agent told
 * by a lookup that the request was shed n times publishes under the same `~n`, so it is queued
 * once, and a dispatcher never sheds it.
 */
export function requestMsgId(
  userId: string,
  requestId: string,
  bareToken: string,
  ask: string,
  republish = 0,
): string {
  const id = `${userId}:${requestId}/${hash('sha256', bareToken).slice(0, 16)}${ask}`;
  return republish > 0 ? `${id}~${republish}` : id;
}

/** The `~n` of a message id (`requestMsgId`'s `republish`), 0 when it has none. */
export function republishOf(msgId: string | undefined): number {
  const n = msgId ? /~(\d{1,6})$/.exec(msgId)?.[1] : undefined;
  return n ? Number(n) : 0;
}

/**
 * 16 hex of the SHA-256 of a request's tool and arguments (canonical JSON, key order aside): what
 * it asks. Arguments no JSON can carry (the dispatcher refuses them) are digested as written.
 */
export function askDigest({ tool, args }: { tool?: unknown; args?: unknown }): string {
  const ask = { tool: tool ?? null, args: args ?? null };
  let text: string;
  try {
    text = canonicalJson(ask);
  } catch {
    text = String(JSON.stringify(ask));
  }
  return hash('sha256', text).slice(0, 16);
}

const NatsSubject = z.string().regex(/^[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$-]+)*$/, 'must be a plain NATS subject');

/** What an agent publishes on `toolbus.requests.<userId>.<agentId>` (`subjects.request`). */
export const ToolRequest = z.strictObject({
  requestId: RequestId,
  tool: ToolName,
  /** Omit to run the newest registered version. */
  version: ToolVersion.optional(),
  args: JsonObject,
  /** Optional; if present it must equal the token's subject. The token decides the user. */
  userId: UserId.optional(),
  correlationId: z.string().min(1).max(128).optional(),
  /** Where answers go. The agent client sets an inbox of its own. */
  replyTo: NatsSubject.max(256).optional(),
  /** Also send `requested`, `executing` and progress answers, not only the terminal one. */
  progress: z.boolean().optional(),
});
export type ToolRequest = z.infer<typeof ToolRequest>;

const UTF8 = new TextDecoder('utf-8', { fatal: true });

export type ParseProblem = { code: 'MALFORMED' | 'VALIDATION'; message: string };

/**
 * Bytes to a request, or the first reason it is refused: too large or not JSON (`MALFORMED`),
 * too deep, a prototype key, or a schema mismatch (`VALIDATION`).
 */
export function parseToolRequest(
  bytes: Uint8Array,
): { ok: true; request: ToolRequest } | { ok: false; problem: ParseProblem; partial?: Partial<ToolRequest> } {
  if (bytes.byteLength > LIMITS.maxRequestBytes) {
    return {
      ok: false,
      problem: {
        code: 'MALFORMED',
        message: `request is ${bytes.byteLength} bytes; limit ${LIMITS.maxRequestBytes}`,
      },
    };
  }
  let value: unknown;
  try {
    value = JSON.parse(UTF8.decode(bytes));
  } catch (e) {
    return {
      ok: false,
      problem: { code: 'MALFORMED', message: `request is not UTF-8 JSON: ${(e as Error).message}` },
    };
  }
  const shape = checkJsonShape(value);
  if (shape)
    return {
      ok: false,
      problem: { code: 'VALIDATION', message: `${shape.path}: ${shape.problem}` },
      partial: pickPartial(value),
    };
  const parsed = ToolRequest.safeParse(value);
  if (!parsed.success) {
    return {
      ok: false,
      problem: { code: 'VALIDATION', message: z.prettifyError(parsed.error) },
      partial: pickPartial(value),
    };
  }
  return { ok: true, request: parsed.data };
}

/** The fields of a refused request that are still worth recording, when they are well formed. */
function pickPartial(value: unknown): Partial<ToolRequest> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return {};
  const v = value as Record<string, unknown>;
  const out: Partial<ToolRequest> = {};
  const requestId = RequestId.safeParse(v['requestId']);
  if (requestId.success) out.requestId = requestId.data;
  const tool = ToolName.safeParse(v['tool']);
  if (tool.success) out.tool = tool.data;
  const replyTo = NatsSubject.max(256).safeParse(v['replyTo']);
  if (replyTo.success) out.replyTo = replyTo.data;
  if (
    typeof v['correlationId'] === 'string' &&
    v['correlationId'].length >= 1 &&
    v['correlationId'].length <= 128
  )
    out.correlationId = v['correlationId'];
  return out;
}

/** What the dispatcher sends to a request's `replyTo`: one terminal answer, progress before it if asked. */
export const AgentAnswer = z.discriminatedUnion('status', [
  z.strictObject({
    status: z.enum(['requested', 'executing']),
    requestId: z.string(),
    executionId: z.string(),
    correlationId: z.string(),
  }),
  /** The call waits for an approver (docs/approval.md); the terminal answer follows the decision. */
  z.strictObject({
    status: z.literal('awaiting_approval'),
    requestId: z.string(),
    executionId: z.string(),
    correlationId: z.string(),
    /** The hash an approver must confirm: SHA-256 of the exact arguments (execution.ts `argsHash`). */
    argsHash: z.string(),
    approverRoles: z.array(z.string()),
    deadline: z.iso.datetime({ offset: true }),
  }),
  z.strictObject({
    status: z.literal('progress'),
    requestId: z.string(),
    executionId: z.string(),
    correlationId: z.string(),
    fraction: z.number().min(0).max(1),
    message: z.string().max(500).optional(),
  }),
  z.strictObject({
    status: z.literal('completed'),
    requestId: z.string(),
    executionId: z.string(),
    correlationId: z.string(),
    result: JsonValue,
    durationMs: z.number().nonnegative(),
    cached: z.boolean(),
  }),
  z.strictObject({
    status: z.literal('failed'),
    requestId: z.string().nullable(),
    executionId: z.string().nullable(),
    correlationId: z.string().nullable(),
    error: z.strictObject({
      code: z.union([ErrorCode, RefusalCode]),
      message: z.string(),
      details: z.record(z.string(), z.unknown()).optional(),
    }),
  }),
]);
export type AgentAnswer = z.infer<typeof AgentAnswer>;
export const isTerminalAnswer = (a: AgentAnswer): boolean =>
  a.status === 'completed' || a.status === 'failed';
