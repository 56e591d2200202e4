import { createHash, randomUUID } from 'node:crypto';
import type { JetStreamClient } from '@nats-io/jetstream';
import { ProtocolError, ProtocolErrorCode } from '@modelcontextprotocol/server';
import {
  canonicalJson,
  executionIdFor,
  type Code,
  type Principal,
  type TerminalAnswer,
  type ToolManifest,
  unrecordedFailure,
} from '../../contracts/index.ts';
import {
  AgentClientError,
  cancelExecution,
  submitRequest,
  type InterimAnswer,
} from '../../lib/clients/agent.ts';
import type { Logger } from '../../lib/log.ts';
import type { NatsConnection } from '../../lib/nats.ts';

/**
 * The `_meta` key of a `tools/call` that makes it idempotent (docs/mcp.md): a string of 1 to 256
 * characters chosen by the client. The same key from the same user gets the first call's answer,
 * never a second run; the same key with another tool or other arguments is refused.
 */
export const IDEMPOTENCY_META_KEY = 'io.toolbus/idempotencyKey';

/** The data of the JSON-RPC error that refuses a reused key (code -32602, invalid params). */
export const IDEMPOTENCY_CONFLICT = 'IDEMPOTENCY_CONFLICT' satisfies Code;

/** The request id of a keyed call: the same for the same user and key, whoever's process asks. */
export function requestIdOf(userId: string, key: string): string {
  return `mcp-${createHash('sha256').update(`${userId}\n${key}`).digest('hex').slice(0, 40)}`;
}

/**
 * What a keyed call asked for, carried as its correlation id: the answer to a request id always
 * carries the correlation id of the request that was recorded, so a retry with other arguments
 * sees a fingerprint not its own and is refused (docs/decisions/0019).
 */
export function fingerprintOf(tool: string, args: Record<string, unknown>): string {
  return `mcp-${createHash('sha256').update(canonicalJson({ tool, args })).digest('hex').slice(0, 40)}`;
}

/** The request id and (for a keyed call) the fingerprint a call is sent with. */
export function requestOf(call: Pick<Call, 'principal' | 'tool' | 'args' | 'idempotencyKey'>): {
  requestId: string;
  fingerprint: string | undefined;
} {
  const key = call.idempotencyKey;
  return key
    ? {
        requestId: requestIdOf(call.principal.userId, key),
        fingerprint: fingerprintOf(call.tool.name, call.args),
      }
    : { requestId: randomUUID(), fingerprint: undefined };
}

/**
 * Refuses a keyed call whose key was first used for something else: the answer carries another
 * fingerprint (see `fingerprintOf`), or the dispatcher refused it as such (the request's message
 * id binds its tool and arguments, so JetStream does not take it for a repeat of the first).
 */
export function checkFingerprint(
  fingerprint: string | undefined,
  recorded: { correlationId: string | null; executionId: string | null; error?: { code: string } },
  /** The execution the key names (the refusal names none: nothing was recorded for it). */
  executionId: string,
): void {
  const refused = recorded.error?.code === IDEMPOTENCY_CONFLICT;
  if (
    !refused &&
    (fingerprint === undefined || recorded.correlationId === null || recorded.correlationId === fingerprint)
  )
    return;
  throw new ProtocolError(
    ProtocolErrorCode.InvalidParams,
    `the idempotency key was first used with another tool or other arguments (execution ${executionId}); use a new key`,
    { code: IDEMPOTENCY_CONFLICT, executionId },
  );
}

export function idempotencyKeyOf(meta: Record<string, unknown> | undefined): string | undefined {
  const key = meta?.[IDEMPOTENCY_META_KEY];
  if (key === undefined) return undefined;
  if (typeof key !== 'string' || key.length < 1 || key.length > 256) {
    throw new ProtocolError(
      ProtocolErrorCode.InvalidParams,
      `_meta["${IDEMPOTENCY_META_KEY}"] must be a string of 1 to 256 characters`,
    );
  }
  return key;
}

export interface CallDeps {
  nc: NatsConnection;
  js: JetStreamClient;
  log: Logger;
  timeoutMs: number;
  /**
   * True once the gateway stops: a call whose stream the stop ends is not the client giving it
   * up, and is not cancelled (it runs on in Toolbus; a retry with its key gets its answer).
   */
  stopping?: () => boolean;
  /** The cancels sent and not yet answered: a stopping gateway waits for them before NATS closes. */
  cancels?: Set<Promise<unknown>>;
}

export interface Call {
  principal: Principal;
  /** The user's bearer token: the dispatcher verifies and records under it, as for any agent. */
  token: string;
  tool: ToolManifest;
  args: Record<string, unknown>;
  idempotencyKey: string | undefined;
  /** Fires when the client gives the call up (notifications/cancelled, or its stream closed). */
  signal: AbortSignal;
  onProgress?: (p: { fraction: number; message?: string }) => void;
}

/** Beyond the tool's timeout (and its approval's), what a call's wait allows for the intake and the answer. */
const WAIT_MARGIN_MS = 30_000;

/**
 * How long the gateway waits for a call's terminal answer: `GATEWAY_CALL_TIMEOUT_MS`, or longer
 * for a tool that may wait for an approver (its approval's deadline, then its run: the default
 * deadline of 15 minutes is past the 10.5 minutes of the default wait).
 */
export function callWaitMs(
  gatewayTimeoutMs: number,
  tool: Pick<ToolManifest, 'timeoutMs' | 'approval'>,
): number {
  const approval = tool.approval?.timeoutMs ?? 0;
  return Math.max(gatewayTimeoutMs, approval + tool.timeoutMs + WAIT_MARGIN_MS);
}

/** What a cancel by an MCP client records: who gave the call up, and the client's reason if it gave one. */
export function mcpCancelReason(signal: AbortSignal): string {
  // A bare abort() (the stream closed) gives a DOMException "This operation was aborted": no reason.
  const bare = signal.reason instanceof Error && signal.reason.name === 'AbortError';
  const said: unknown = bare
    ? undefined
    : signal.reason instanceof Error
      ? signal.reason.message
      : signal.reason;
  const why = typeof said === 'string' && said.trim() ? said.trim() : 'it gave the call up';
  return `the MCP client: ${why}`.slice(0, 500);
}

/**
 * Runs one `tools/call` as one Toolbus execution: a request into the dispatchers' intake under
 * the gateway's NATS identity with the user's token, answered exactly as an agent's. A call the
 * client gives up is cancelled in Toolbus (and ends CANCELLED unless it had ended already).
 */
export async function execute(deps: CallDeps, call: Call): Promise<TerminalAnswer> {
  const { principal, tool } = call;
  const { requestId, fingerprint } = requestOf(call);
  const log = deps.log.child({ userId: principal.userId, requestId, tool: tool.name });

  const cancel = (reason: string) => {
    const sent = cancelExecution(deps.nc, { requestId, reason }, { token: call.token }).then(
      (r) => log.info({ status: r.status, cancelled: r.cancelled }, 'cancel answered'),
      (e: unknown) => log.warn({ err: e }, 'cancel not delivered'),
    );
    deps.cancels?.add(sent);
    void sent.finally(() => deps.cancels?.delete(sent));
  };
  const onAbort = () => {
    if (deps.stopping?.()) {
      // Its client can ask for it again only by its key: without one, a retry would run it twice.
      if (call.idempotencyKey) {
        log.info('the gateway stops: the call runs on (a retry with its idempotency key gets its answer)');
        return;
      }
      log.info('the gateway stops: cancelling the call (no idempotency key to ask for it again by)');
      cancel(
        'the MCP gateway stopped during the call, which had no idempotency key to be asked for again by',
      );
      return;
    }
    log.info('the client gave the call up: cancelling the execution');
    cancel(mcpCancelReason(call.signal));
  };
  if (call.signal.aborted)
    throw new ProtocolError(ProtocolErrorCode.InvalidRequest, 'the call was cancelled');
  call.signal.addEventListener('abort', onAbort, { once: true });
  let answer;
  try {
    answer = await submitRequest(deps.nc, deps.js, {
      token: call.token,
      userId: principal.userId,
      requestId,
      body: bodyOf(call, requestId, fingerprint),
      ...(call.onProgress ? { onProgress: progressOf(call.onProgress) } : {}),
      timeoutMs: callWaitMs(deps.timeoutMs, tool),
    });
  } catch (e) {
    if (!(e instanceof AgentClientError)) throw e;
    // The gateway's own stop closed the inbox: expected, and said above (runs on, or cancelled).
    if (deps.stopping?.()) log.info({ code: e.code }, 'no answer: the gateway stopped first');
    else log.warn({ err: e }, 'no answer from the dispatchers');
    return unanswered(requestId, e, call.idempotencyKey !== undefined);
  } finally {
    call.signal.removeEventListener('abort', onAbort);
  }
  checkFingerprint(fingerprint, answer, executionIdFor(principal.userId, requestId));
  return answer;
}

/** The Toolbus request of a call: the manifest's version pinned, the fingerprint as correlation id. */
export const bodyOf = (
  call: Pick<Call, 'tool' | 'args'>,
  requestId: string,
  fingerprint: string | undefined,
): Record<string, unknown> => ({
  requestId,
  tool: call.tool.name,
  version: call.tool.version,
  args: call.args,
  ...(fingerprint ? { correlationId: fingerprint } : {}),
});

/**
 * Progress answers as MCP wants them: only forward, never the same fraction twice. A wait for an
 * approver is progress 0 with what it waits for: a client that resets its timeout on progress
 * keeps waiting, and a person sees why nothing happens.
 */
function progressOf(send: (p: { fraction: number; message?: string }) => void): (a: InterimAnswer) => void {
  let last = -1;
  return (a) => {
    if (a.status === 'awaiting_approval' && last < 0) {
      last = 0;
      send({
        fraction: 0,
        message: `awaits approval by ${a.approverRoles.join(' or ')} until ${a.deadline}`,
      });
      return;
    }
    if (a.status !== 'progress' || a.fraction <= last) return;
    last = a.fraction;
    send({ fraction: a.fraction, ...(a.message !== undefined ? { message: a.message } : {}) });
  };
}

/** The answer of a call the dispatchers did not answer in time (or could not be handed to them). */
function unanswered(requestId: string, e: AgentClientError, keyed: boolean): TerminalAnswer {
  const timedOut = e.code === 'TIMEOUT';
  const retry = keyed
    ? 'retry with the same idempotency key to get its answer'
    : `this call had no idempotency key (_meta["${IDEMPOTENCY_META_KEY}"]), so a retry would run it again`;
  return unrecordedFailure(requestId, {
    code: timedOut ? 'TIMEOUT' : 'OVERLOADED',
    message: timedOut
      ? `no answer within the gateway's wait; the execution may go on (request ${requestId}): ${retry}`
      : `the request could not be handed to a dispatcher (${e.message}); ${keyed ? 'retry with the same idempotency key' : 'retry'}`,
  });
}
