import { randomUUID } from 'node:crypto';
import { jetstream, type JetStreamClient } from '@nats-io/jetstream';
import { headers, RequestError, type NatsConnection } from '@nats-io/transport-node';
import {
  AgentAnswer,
  CancelResult,
  isUserId,
  looksLikeExecutionId,
  LIMITS,
  REQUEST_HEADERS,
  subjects,
  type CancelRequest,
  type JsonObject,
  type TerminalAnswer,
} from '../../contracts/index.ts';
import { connectionIdentity, inboxFor } from '../nats.ts';

/**
 * The agent's side of Toolbus: publish a tool request into the JetStream intake and wait for its
 * one terminal answer on an inbox of its own.
 *
 * The user id comes from the token (read here without verifying, only to address the request; the
 * dispatcher verifies it). The connection must come from `connectNats` (lib/nats.ts): its identity
 * names the request subject (`toolbus.requests.<user>.<agent>`) and the inbox. `Nats-Msg-Id` is `<userId>:<requestId>`, so JetStream drops a repeat
 * within its duplicate window; the answer then went to the first attempt's inbox, so the client
 * asks the dispatchers for it on `toolbus.answers.<userId>` until it is there.
 */

// The wire formats of the answers and cancel services live in contracts/services.ts.
export { CancelRequest, CancelResult, looksLikeExecutionId } from '../../contracts/services.ts';

export type { TerminalAnswer } from '../../contracts/services.ts';
export type InterimAnswer = Exclude<AgentAnswer, TerminalAnswer>;

export interface CancelOptions {
  /** The JWT of the execution's user, or of an admin (then give `userId`). */
  token: string;
  /** Whose execution it is; default the token's user. */
  userId?: string;
  /** How long to wait for the answer (default 30 s). */
  timeoutMs?: number;
}

export interface ExecuteOptions {
  /** The user's JWT (with or without `Bearer `). */
  token: string;
  /** Default a random UUID. Send the same id again to get the same answer, never a second run. */
  requestId?: string;
  /** Default: the newest registered version. */
  version?: string;
  correlationId?: string;
  /** Asks for `requested`, `executing` and `progress` answers too, and receives them here. */
  onProgress?: (answer: InterimAnswer) => void;
  /** How long to wait for the terminal answer (default 60 s). */
  timeoutMs?: number;
}

export class AgentClientError extends Error {
  constructor(
    message: string,
    readonly code: 'TIMEOUT' | 'PUBLISH_FAILED' | 'CLOSED' | 'NO_DISPATCHER',
    readonly requestId: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = 'AgentClientError';
  }
}

export interface AgentClient {
  execute(tool: string, args: JsonObject, options: ExecuteOptions): Promise<AgentAnswer>;
  /**
   * Cancels an execution, named by its execution id or its request id (a string is taken as an
   * execution id when it looks like one, see `looksLikeExecutionId`; pass `{ requestId }` to be
   * explicit). Resolves with what happened; throws `AgentClientError` only when no dispatcher
   * answered (`NO_DISPATCHER`, `TIMEOUT`).
   */
  cancel(target: string | CancelRequest, options: CancelOptions): Promise<CancelResult>;
}

const bare = (token: string): string => (token.startsWith('Bearer ') ? token.slice(7) : token);

/** The `sub` claim of a JWT, read without verifying it; null when there is none or it is not a user id. */
export function userIdOfToken(token: string): string | null {
  const part = bare(token).split('.')[1];
  if (!part) return null;
  try {
    const payload = JSON.parse(Buffer.from(part, 'base64url').toString('utf8')) as { sub?: unknown };
    return isUserId(payload.sub) ? payload.sub : null;
  } catch {
    return null;
  }
}

const isTerminal = (a: AgentAnswer): a is TerminalAnswer => a.status === 'completed' || a.status === 'failed';

export interface SubmitOptions {
  /** The user's JWT (with or without `Bearer `). */
  token: string;
  /** The user the token names (see `userIdOfToken`): the subject and the message id use it. */
  userId: string;
  requestId: string;
  /** The request without `replyTo` and `progress`, which are set here. Sent as it is otherwise. */
  body: Record<string, unknown>;
  onProgress?: (answer: InterimAnswer) => void;
  timeoutMs?: number;
  pollIntervalMs?: number;
}

/**
 * Publishes a request body into the intake (with its own inbox as `replyTo`) and waits for the
 * terminal answer; what `execute` and the HTTP API share. Requests over the size limit are refused
 * here (MALFORMED), as the dispatcher could not read their `replyTo` to answer them.
 */
export async function submitRequest(
  nc: NatsConnection,
  js: JetStreamClient,
  o: SubmitOptions,
): Promise<AgentAnswer> {
  const { userId, requestId } = o;
  const pollMs = o.pollIntervalMs ?? 250;
  // The server lets this connection publish requests only under its own identity, and read only
  // its own inbox; the dispatcher answers only to that inbox.
  const agentId = connectionIdentity(nc);
  const inbox = inboxFor(nc);
  const { replyTo: _r, progress: _p, ...rest } = o.body;
  const body = JSON.stringify({ ...rest, replyTo: inbox, ...(o.onProgress ? { progress: true } : {}) });
  const size = Buffer.byteLength(body);
  if (size > LIMITS.maxRequestBytes) {
    return {
      status: 'failed',
      requestId,
      executionId: null,
      correlationId: null,
      error: { code: 'MALFORMED', message: `request is ${size} bytes; limit ${LIMITS.maxRequestBytes}` },
    };
  }
  const auth = headers();
  auth.set(REQUEST_HEADERS.authorization, `Bearer ${bare(o.token)}`);

  const timeoutMs = o.timeoutMs ?? 60_000;
  const sub = nc.subscribe(inbox);
  let settled = false;
  let timer: NodeJS.Timeout | undefined;
  try {
    return await new Promise<AgentAnswer>((resolve, reject) => {
      const finish = (answer: AgentAnswer) => {
        if (settled) return;
        settled = true;
        resolve(answer);
      };
      const fail = (e: Error) => {
        if (settled) return;
        settled = true;
        reject(e);
      };
      timer = setTimeout(
        () =>
          fail(
            new AgentClientError(
              `no answer to request ${requestId} within ${timeoutMs} ms`,
              'TIMEOUT',
              requestId,
            ),
          ),
        timeoutMs,
      );

      void (async () => {
        try {
          for await (const m of sub) {
            let parsed;
            try {
              parsed = AgentAnswer.safeParse(m.json());
            } catch {
              continue;
            }
            if (!parsed.success || (parsed.data.requestId !== requestId && parsed.data.requestId !== null))
              continue;
            if (isTerminal(parsed.data)) return finish(parsed.data);
            try {
              o.onProgress?.(parsed.data);
            } catch {
              // the caller's callback failing must not lose the answer
            }
          }
        } catch (e) {
          return fail(
            new AgentClientError(`the inbox failed: ${(e as Error).message}`, 'CLOSED', requestId, {
              cause: e,
            }),
          );
        }
        fail(new AgentClientError('the subscription closed before the answer came', 'CLOSED', requestId));
      })();

      void (async () => {
        let ack;
        try {
          ack = await js.publish(subjects.request(userId, agentId), body, {
            msgID: `${userId}:${requestId}`,
            headers: auth,
          });
        } catch (e) {
          return fail(
            new AgentClientError(
              `request ${requestId} was not accepted: ${(e as Error).message}`,
              'PUBLISH_FAILED',
              requestId,
              {
                cause: e,
              },
            ),
          );
        }
        if (!ack.duplicate) return;
        // JetStream already has this request: its answer goes (or went) to the first inbox.
        for (let wait = pollMs; !settled; wait = Math.min(wait * 2, 2_000)) {
          const answer = await lookup(nc, userId, requestId, auth);
          if (answer) return finish(answer);
          await new Promise((r) => setTimeout(r, wait));
        }
      })();
    });
  } finally {
    settled = true;
    clearTimeout(timer);
    sub.unsubscribe();
  }
}

export function createAgentClient(
  nc: NatsConnection,
  options: { js?: JetStreamClient; pollIntervalMs?: number } = {},
): AgentClient {
  const js = options.js ?? jetstream(nc);
  return {
    async execute(tool, args, opts) {
      const requestId = opts.requestId ?? randomUUID();
      const userId = userIdOfToken(opts.token);
      if (!userId) {
        return {
          status: 'failed',
          requestId,
          executionId: null,
          correlationId: opts.correlationId ?? null,
          error: { code: 'UNAUTHENTICATED', message: 'the token names no user (no valid sub claim)' },
        };
      }
      return submitRequest(nc, js, {
        token: opts.token,
        userId,
        requestId,
        body: {
          requestId,
          tool,
          ...(opts.version ? { version: opts.version } : {}),
          args,
          ...(opts.correlationId ? { correlationId: opts.correlationId } : {}),
        },
        ...(opts.onProgress ? { onProgress: opts.onProgress } : {}),
        ...(opts.timeoutMs ? { timeoutMs: opts.timeoutMs } : {}),
        ...(options.pollIntervalMs ? { pollIntervalMs: options.pollIntervalMs } : {}),
      });
    },
    cancel: (target, opts) => cancelExecution(nc, target, opts),
  };
}

/** Sends one cancel request (see `AgentClient.cancel`). */
export async function cancelExecution(
  nc: NatsConnection,
  target: string | CancelRequest,
  o: CancelOptions,
): Promise<CancelResult> {
  const body: CancelRequest =
    typeof target === 'string'
      ? looksLikeExecutionId(target)
        ? { executionId: target }
        : { requestId: target }
      : target;
  const named = {
    executionId: 'executionId' in body ? body.executionId : null,
    requestId: 'requestId' in body ? body.requestId : null,
  };
  const userId = o.userId ?? userIdOfToken(o.token);
  if (!userId || !isUserId(userId)) {
    return {
      ...named,
      cancelled: false,
      status: 'refused',
      answer: null,
      message: 'the token names no user (no valid sub claim)',
      error: { code: 'UNAUTHENTICATED', message: 'the token names no user (no valid sub claim)' },
    };
  }
  const auth = headers();
  auth.set(REQUEST_HEADERS.authorization, `Bearer ${bare(o.token)}`);
  const what = named.executionId ?? named.requestId ?? '?';
  let reply;
  try {
    reply = await nc.request(subjects.cancel(userId), JSON.stringify(body), {
      timeout: o.timeoutMs ?? 30_000,
      headers: auth,
    });
  } catch (e) {
    if (e instanceof RequestError && e.isNoResponders()) {
      throw new AgentClientError('no dispatcher is serving cancellations', 'NO_DISPATCHER', what, {
        cause: e,
      });
    }
    throw new AgentClientError(
      `no answer to the cancel of ${what}: ${(e as Error).message}`,
      'TIMEOUT',
      what,
      {
        cause: e,
      },
    );
  }
  let value: unknown;
  try {
    value = reply.json();
  } catch {
    value = undefined;
  }
  const parsed = CancelResult.safeParse(value);
  if (!parsed.success) {
    throw new AgentClientError(
      `malformed cancel answer: ${parsed.error.issues[0]?.message ?? ''}`,
      'CLOSED',
      what,
    );
  }
  return parsed.data;
}

async function lookup(
  nc: NatsConnection,
  userId: string,
  requestId: string,
  auth: ReturnType<typeof headers>,
): Promise<TerminalAnswer | null> {
  try {
    const reply = await nc.request(subjects.answers(userId), JSON.stringify({ requestId }), {
      timeout: 5_000,
      headers: auth,
    });
    const answer = AgentAnswer.safeParse(reply.json<{ answer?: unknown }>().answer);
    return answer.success && isTerminal(answer.data) ? answer.data : null;
  } catch {
    return null;
  }
}
