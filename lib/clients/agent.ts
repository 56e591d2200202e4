import { randomUUID } from 'node:crypto';
import { jetstream, JetStreamApiError, type JetStreamClient } from '@nats-io/jetstream';
import { headers, RequestError, TimeoutError, type NatsConnection } from '@nats-io/transport-node';
import {
  AnswersReply,
  CancelResult,
  isTerminalAnswer,
  isUserId,
  looksLikeExecutionId,
  LIMITS,
  REQUEST_HEADERS,
  RequestId,
  askDigest,
  requestMsgId,
  subjects,
  type CancelRequest,
  type JsonObject,
  type TerminalAnswer,
  unrecordedFailure,
} from '../../contracts/index.ts';
import { connectionIdentity } from '../nats.ts';
import { backoffMs, sleep } from '../retry.ts';
import { answerInboxOf, type InterimAnswer, type Waiter } from './answerInbox.ts';
import { markAgent } from '../diagnostics.ts';

/**
 * The agent's side of Toolbus: publish a tool request into the JetStream intake and wait for its
 * one terminal answer on an inbox of its own.
 *
 * The user id comes from the token (read here without verifying, only to address the request; the
 * dispatcher verifies it). The connection must come from `connectNats` (lib/nats.ts): its identity
 * names the request subject (`toolbus.requests.<user>.<agent>`) and the inbox. `Nats-Msg-Id` is
 * `<userId>:<requestId>/<token and ask digests>` (`requestMsgId`), so JetStream drops a repeat
 * within its duplicate window; the answer then went to the first attempt's inbox, so the client
 * asks the dispatchers for it on `toolbus.answers.<userId>.<agentId>` until it is there. The same
 * request id with another tool or other arguments is no repeat: a dispatcher refuses it
 * (IDEMPOTENCY_CONFLICT).
 */

// The wire formats of the answers and cancel services live in contracts/services.ts.
export { CancelRequest, CancelResult, looksLikeExecutionId } from '../../contracts/services.ts';

export type { TerminalAnswer } from '../../contracts/services.ts';
export type { InterimAnswer } from './answerInbox.ts';

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
  /**
   * Asks for `requested`, `executing` and `progress` answers too, and receives them here; a call
   * that waits for an approver also says `awaiting_approval` (docs/approval.md).
   */
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
  execute(tool: string, args: JsonObject, options: ExecuteOptions): Promise<TerminalAnswer>;
  /**
   * Cancels an execution, named by its execution id or its request id (a string is taken as an
   * execution id when it looks like one, see `looksLikeExecutionId`; pass `{ requestId }` to be
   * explicit). Resolves with what happened; throws `AgentClientError` only when no dispatcher
   * answered (`NO_DISPATCHER`, `TIMEOUT`).
   */
  cancel(target: string | CancelRequest, options: CancelOptions): Promise<CancelResult>;
}

const bare = (token: string): string => token.replace(/^bearer\s+/i, '').trim();

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

/**
 * Why a token the client cannot address a request with is refused, in the dispatcher's words where
 * it has them (lib/auth.ts): none given, not a JWT, or no user in it.
 */
export function unusableTokenMessage(token: string): string {
  const raw = bare(token);
  if (raw === '') return 'no token';
  if (raw.split('.').length !== 3) return 'token rejected (not a JWT)';
  return 'the token names no user (no valid sub claim)';
}

/** How an attempt that JetStream reported as a duplicate asks the dispatchers for its answer. */
export interface LookupBackoff {
  /** The ceiling of the first wait (default 1 s); each wait is random below its ceiling. */
  minMs: number;
  /** The largest ceiling (default 15 s). */
  maxMs: number;
  /**
   * After a publish that went unacknowledged, a duplicate acknowledgement is most likely that
   * publish's own copy, whose answer comes to this attempt: it looks up only if none came within
   * this (default 5 s); the copy JetStream kept may have been an earlier attempt's, elsewhere.
   */
  ownCopyMs: number;
  /** The random source (tests). */
  random?: () => number;
}

export const DEFAULT_LOOKUP_BACKOFF: LookupBackoff = { minMs: 1_000, maxMs: 15_000, ownCopyMs: 5_000 };

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
  /** @deprecated the first lookup wait's ceiling; use `lookupBackoff`. */
  pollIntervalMs?: number;
  lookupBackoff?: Partial<LookupBackoff>;
  /** Told of each lookup before it is sent, with the wait that preceded it (tests, diagnostics). */
  onLookup?: (event: { attempt: number; waitedMs: number }) => void;
}

/** The error of an attempt whose inbox failed. */
const inboxClosed = (cause: Error, requestId: string) =>
  new AgentClientError(`the inbox failed: ${cause.message}`, 'CLOSED', requestId, { cause });

/**
 * Publishes a request body into the intake and waits for the terminal answer; what `execute` and
 * the HTTP API share. The answer comes to the connection's one answer inbox (`AnswerInbox`), under
 * which each attempt has its own `replyTo`. When JetStream reports the publish as a duplicate, the
 * answer went to the first attempt's inbox: if that attempt is this connection's and still waits,
 * this one gets the same answer without asking; otherwise it asks `toolbus.answers` with
 * exponential backoff and full jitter, waiting at least what an OVERLOADED reply asks. So does an
 * attempt whose connection reconnected while it waited: an answer sent while the connection was
 * away reached no one (a NATS node lost; JetStream kept the request, a dispatcher answered it). Requests
 * over the size limit are refused here (MALFORMED), as the dispatcher could not read their
 * `replyTo` to answer them.
 */
export async function submitRequest(
  nc: NatsConnection,
  js: JetStreamClient,
  o: SubmitOptions,
): Promise<TerminalAnswer> {
  const { userId, requestId } = o;
  // Not a request id (a line break, say, which no NATS header can carry): refused as the dispatcher
  // refuses it (MALFORMED: no request id to record it under), not reported as a publish that failed
  // and might succeed.
  const id = RequestId.safeParse(requestId);
  if (!id.success) {
    const message = id.error.issues.map((i) => `requestId: ${i.message}`).join('; ');
    return { ...unrecordedFailure(requestId, { code: 'MALFORMED', message }), requestId: null };
  }
  // The server lets this connection publish requests only under its own identity, and read only
  // its own inbox; the dispatcher answers only to that inbox.
  const agentId = connectionIdentity(nc);
  // Of the tool and arguments as JSON carries them (NaN as null, a Date as its string...): the
  // dispatcher computes the same digest from what it reads.
  const ask = askDigest(JSON.parse(JSON.stringify({ tool: o.body['tool'], args: o.body['args'] })) as object);
  const waiter = answerInboxOf(nc, inboxClosed).wait(userId, requestId, ask, o.onProgress);
  const stop = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  try {
    const { replyTo: _r, progress: _p, ...rest } = o.body;
    const body = JSON.stringify({
      ...rest,
      replyTo: waiter.replyTo,
      ...(o.onProgress ? { progress: true } : {}),
    });
    const size = Buffer.byteLength(body);
    if (size > LIMITS.maxRequestBytes) {
      return unrecordedFailure(requestId, {
        code: 'MALFORMED',
        message: `request is ${size} bytes; limit ${LIMITS.maxRequestBytes}`,
      });
    }
    const auth = headers();
    auth.set(REQUEST_HEADERS.authorization, `Bearer ${bare(o.token)}`);
    const timeoutMs = o.timeoutMs ?? 60_000;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new AgentClientError(
              `no answer to request ${requestId} within ${timeoutMs} ms`,
              'TIMEOUT',
              requestId,
            ),
          ),
        timeoutMs,
      );
    });
    const backoff: LookupBackoff = {
      ...DEFAULT_LOOKUP_BACKOFF,
      ...(o.pollIntervalMs !== undefined ? { minMs: o.pollIntervalMs } : {}),
      ...o.lookupBackoff,
    };
    /**
     * Publishes until JetStream acknowledges, under the message id of the `republish`-th sending
     * after the intake shed the request (0: the first). Null: stopped waiting meanwhile.
     */
    const publishAcknowledged = async (republish: number) => {
      for (let attempt = 0; ; attempt++) {
        try {
          markAgent(userId, requestId, 'sent');
          const ack = await js.publish(subjects.request(userId, agentId), body, {
            msgID: requestMsgId(userId, requestId, bare(o.token), ask, republish),
            headers: auth,
          });
          markAgent(userId, requestId, 'stored');
          return { ack, attempt };
        } catch (e) {
          if (isIntakeFull(e)) throw new IntakeFullError(requestId, e, perAgent(e));
          if (!(e instanceof TimeoutError)) {
            throw new AgentClientError(
              `request ${requestId} was not accepted: ${(e as Error).message}`,
              'PUBLISH_FAILED',
              requestId,
              { cause: e },
            );
          }
          // No acknowledgement in time (a busy server): the request may be stored, and then
          // answered to this waiter, or not. The same message id again settles it, JetStream
          // keeping the first copy, until the answer or the deadline comes.
          try {
            await sleep(backoffMs(attempt, ACK_RETRY), stop.signal);
          } catch {
            return null; // answered, or timed out
          }
        }
      }
    };
    const publishing = (async (): Promise<never> => {
      const forever = new Promise<never>(() => undefined); // the answer comes to the waiter
      for (let republish = 0; ;) {
        const sent = await publishAcknowledged(republish);
        if (!sent) return forever;
        let reconnected = false;
        if (!sent.ack.duplicate) {
          waiter.own();
          // The answer comes to this connection's inbox, unless it comes while the connection is
          // away (a NATS node lost, a network blip): then it reaches nobody, and after the
          // reconnect it is asked for as a duplicate's is.
          if (!(await untilReconnect(waiter, stop.signal))) return forever;
          reconnected = true;
        }
        // A duplicate after a publish of ours went unacknowledged is most likely that copy, whose
        // answer comes to this waiter: waited for, and looked up only if it does not come soon
        // (lookups load busy dispatchers). It may be an earlier attempt's copy all the same, one
        // this client gave up on or made on another connection: its answer went there.
        const ownCopy = !reconnected && sent.attempt > 0;
        if (ownCopy) waiter.own();
        const shed = await lookUpDuplicate(nc, {
          userId,
          requestId,
          ask,
          tool: typeof o.body['tool'] === 'string' ? o.body['tool'] : undefined,
          auth,
          waiter,
          backoff,
          signal: stop.signal,
          onLookup: o.onLookup,
          ownCopy,
          reconnected,
          republished: republish,
        });
        // The copy JetStream kept was shed unrun: sent again, under the id the lookup names.
        if (shed === null) return forever;
        republish = shed;
      }
    })();
    try {
      return await Promise.race([waiter.answer, timeout, publishing]);
    } catch (e) {
      if (!(e instanceof IntakeFullError)) throw e;
      // Refused before anything was recorded: answered as such, with when to try again.
      return unrecordedFailure(requestId, {
        code: 'OVERLOADED',
        message: e.perAgent
          ? `the intake holds as many requests of user ${userId} from agent ${agentId} as it takes ` +
            '(INTAKE_MAX_PER_AGENT): nothing was recorded; retry with the same request id once some are answered'
          : 'the intake is full: nothing was recorded; retry later with the same request id',
        details: { retryAfterMs: INTAKE_FULL_RETRY_MS, ...(e.perAgent ? { limit: 'agent' } : {}) },
      });
    }
  } finally {
    clearTimeout(timer);
    stop.abort();
    waiter.release();
  }
}

/**
 * True at the connection's next reconnect (the inbox subscribed again), false when the attempt
 * stops waiting first (answered, timed out).
 */
function untilReconnect(waiter: Waiter, signal: AbortSignal): Promise<boolean> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve(false);
    const onAbort = () => {
      remove();
      resolve(false);
    };
    const remove = waiter.onReconnect(() => {
      signal.removeEventListener('abort', onAbort);
      resolve(true);
    });
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** Publishes of a request whose acknowledgement did not come: again after 0.25 s, doubling to 5 s. */
const ACK_RETRY = { minMs: 250, maxMs: 5_000 };

/** How long an agent refused by a full intake is told to wait. */
const INTAKE_FULL_RETRY_MS = 5_000;

/** JetStream refused the publish because the intake stream is at its bounds (discard new). */
function isIntakeFull(e: unknown): e is JetStreamApiError {
  // 10077: maximum messages exceeded; 10078: maximum bytes exceeded; 10047: insufficient resources.
  return e instanceof JetStreamApiError && [10077, 10078, 10047].includes(e.code);
}

/**
 * Whether the refusal is the intake's bound per subject (INTAKE_MAX_PER_AGENT: this agent's
 * requests for this user), not the whole stream's: the same error code, told apart by its text.
 */
function perAgent(e: JetStreamApiError): boolean {
  return /per subject/i.test(e.message);
}

class IntakeFullError extends Error {
  constructor(
    requestId: string,
    cause: unknown,
    /** Refused by the bound on one agent's requests for one user, not the stream's. */
    readonly perAgent: boolean,
  ) {
    super(`request ${requestId} was refused: the intake is full`, { cause });
    this.name = 'IntakeFullError';
  }
}

interface DuplicateWait {
  userId: string;
  requestId: string;
  /** What the request asks (`askDigest`), and its tool: a dispatcher refuses it if the recorded one asked otherwise. */
  ask: string;
  tool: string | undefined;
  auth: ReturnType<typeof headers>;
  waiter: Waiter;
  backoff: LookupBackoff;
  signal: AbortSignal;
  onLookup: SubmitOptions['onLookup'];
  /** This attempt owns the answer (its own copy, most likely): looks up only after `backoff.ownCopyMs`. */
  ownCopy: boolean;
  /** The connection came back after this attempt's copy was stored: its answer may be lost, look it up now. */
  reconnected: boolean;
  /** The sending after a shedding this attempt published (0: the first): a lookup that names it again is no news. */
  republished: number;
}

/**
 * JetStream already had this request: its answer goes (or went) to the first attempt's inbox.
 * While an attempt of this connection that owns it waits, so does this one (the answer reaches
 * both); then it asks the dispatchers, backing off, until there is an answer or it stops waiting.
 * When a dispatcher says the intake shed the request unrun (`AnswersReply.shed`) more times than
 * this attempt knows of, resolves to that count: the request must be published again, under a
 * message id JetStream has not seen (nothing else will answer it). Else resolves to null.
 */
async function lookUpDuplicate(nc: NatsConnection, d: DuplicateWait): Promise<number | null> {
  const aborted = new Promise<void>((resolve) =>
    d.signal.addEventListener('abort', () => resolve(), { once: true }),
  );
  if (d.reconnected) {
    // Asked at once (the first lookup's backoff aside): nothing else will bring the answer.
  } else if (d.ownCopy) {
    try {
      await sleep(d.backoff.ownCopyMs, d.signal);
    } catch {
      return null; // answered (the usual case), or timed out
    }
  } else await Promise.race([d.waiter.ownersGone(), aborted]);
  let hintMs = 0;
  for (let attempt = 0; !d.signal.aborted; attempt++) {
    const waitMs = Math.max(backoffMs(attempt, d.backoff), hintMs);
    try {
      await sleep(waitMs, d.signal);
    } catch {
      return null; // the attempt stopped waiting (answered, timed out)
    }
    d.onLookup?.({ attempt, waitedMs: waitMs });
    const reply = await askForAnswer(nc, d.userId, d.requestId, { ask: d.ask, tool: d.tool }, d.auth);
    if (reply.answer) {
      d.waiter.settle(reply.answer);
      return null;
    }
    if (reply.shed !== undefined && reply.shed > d.republished) return reply.shed;
    hintMs = reply.overloaded?.retryAfterMs ?? 0;
  }
  return null;
}

export function createAgentClient(
  nc: NatsConnection,
  options: {
    js?: JetStreamClient;
    /** @deprecated the first lookup wait's ceiling; use `lookupBackoff`. */
    pollIntervalMs?: number;
    /** How a duplicate asks for its answer (default 1 s doubling to 15 s, full jitter). */
    lookupBackoff?: Partial<LookupBackoff>;
    onLookup?: SubmitOptions['onLookup'];
  } = {},
): AgentClient {
  const js = options.js ?? jetstream(nc);
  return {
    async execute(tool, args, opts) {
      const requestId = opts.requestId ?? randomUUID();
      const userId = userIdOfToken(opts.token);
      if (!userId) {
        return unrecordedFailure(
          requestId,
          { code: 'UNAUTHENTICATED', message: unusableTokenMessage(opts.token) },
          opts.correlationId ?? null,
        );
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
        ...(options.lookupBackoff ? { lookupBackoff: options.lookupBackoff } : {}),
        ...(options.onLookup ? { onLookup: options.onLookup } : {}),
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
    const message = o.userId === undefined ? unusableTokenMessage(o.token) : `not a user id: ${o.userId}`;
    return {
      ...named,
      cancelled: false,
      status: 'refused',
      answer: null,
      message,
      error: { code: 'UNAUTHENTICATED', message },
    };
  }
  const auth = headers();
  auth.set(REQUEST_HEADERS.authorization, `Bearer ${bare(o.token)}`);
  const what = named.executionId ?? named.requestId ?? '?';
  let reply;
  try {
    reply = await nc.request(subjects.cancel(userId, connectionIdentity(nc)), JSON.stringify(body), {
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

/** Asks `toolbus.answers` once; a failed ask (no dispatcher, a timeout) reads as "no answer yet". */
async function askForAnswer(
  nc: NatsConnection,
  userId: string,
  requestId: string,
  asked: { ask: string; tool: string | undefined },
  auth: ReturnType<typeof headers>,
): Promise<{ answer: TerminalAnswer | null; overloaded?: { retryAfterMs: number }; shed?: number }> {
  let reply;
  try {
    reply = await nc.request(
      subjects.answers(userId, connectionIdentity(nc)),
      JSON.stringify({ requestId, ...asked }),
      {
        timeout: 5_000,
        headers: auth,
      },
    );
  } catch {
    return { answer: null }; // no dispatcher answered in time: ask again after the next wait
  }
  let value: unknown;
  try {
    value = reply.json();
  } catch {
    return { answer: null }; // not JSON: nothing a dispatcher sends
  }
  const parsed = AnswersReply.safeParse(value);
  if (!parsed.success) return { answer: null };
  const { answer, overloaded, shed } = parsed.data;
  return {
    answer: answer && isTerminalAnswer(answer) ? (answer as TerminalAnswer) : null,
    ...(overloaded ? { overloaded } : {}),
    ...(shed !== undefined ? { shed } : {}),
  };
}
