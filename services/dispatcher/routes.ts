import { randomUUID } from 'node:crypto';
import type { JetStreamClient } from '@nats-io/jetstream';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import {
  ALL_USERS_READERS,
  CancelReason,
  executionIdFor,
  httpStatusOfCode,
  mayCancelFor,
  looksLikeExecutionId,
  mayReadAllUsers,
  REQUEST_ID_PATTERN,
  UserId,
  withEffectiveApproval,
  type DestructiveDefault,
  type CancelResult,
  type Code,
  type Principal,
} from '../../contracts/index.ts';
import { AuthError, type TokenVerifier } from '../../lib/auth.ts';
import { AgentClientError, submitRequest } from '../../lib/clients/agent.ts';
import { answerError, authenticateBeforeBody, sendError } from '../../lib/http.ts';
import type { NatsConnection } from '../../lib/nats.ts';
import type { ToolRegistry } from '../../lib/tools/index.ts';
import {
  answerFromTerminal,
  httpStatusOf,
  refusal,
  spentRequestIdNote,
  type TerminalAnswer,
} from './answers.ts';
import type { CancelCoordinator } from './cancel.ts';
import { terminalOf, type Execution, type UserStreams } from './streams.ts';

export interface RouteDeps {
  nc: NatsConnection;
  js: JetStreamClient;
  registry: ToolRegistry;
  verifier: TokenVerifier;
  streams: UserStreams;
  cancels: CancelCoordinator;
  /** How long POST /executions waits for the terminal answer. */
  waitMs: number;
  /** The operator's approval policy for destructive tools that declare none (shown in GET /tools). */
  destructive: DestructiveDefault;
  /** Where users reach the projector (DISPATCHER_PROJECTOR_URL), named by GET /executions; unknown when unset. */
  projectorUrl?: string | undefined;
}

/**
 * `:executionId` of a path: an execution id (a version 5 UUID as `executionIdFor` makes them, in
 * either case), or else the request id the user sent the request with, as the agent client's
 * `cancel` reads its argument (`looksLikeExecutionId`): a caller blocked on `POST /executions`
 * knows its request id, not yet the execution id. Resolved once the user is known.
 */
const ExecutionIdParam = z
  .object({
    executionId: z
      .string()
      .refine((id) => looksLikeExecutionId(id.toLowerCase()) || REQUEST_ID_PATTERN.test(id)),
  })
  .transform(({ executionId: id }) => ({
    of: (userId: string) => (looksLikeExecutionId(id) ? id.toLowerCase() : executionIdFor(userId, id)),
    /** The request id the path named, when it named one (else an execution id). */
    requestId: looksLikeExecutionId(id) ? undefined : id,
  }));
const NOT_AN_EXECUTION_ID = 'the path names an execution by its id (a UUID) or by its request id';
/** An admin or operator may name the user whose execution it cancels (body or query); anyone else cancels their own. */
const CancelOwner = z.object({ userId: UserId.optional(), reason: CancelReason.optional() });
/** Whose stream GET /executions/:executionId reads: the caller's, or for a reader of all users the one named. */
const ReadOwner = z.object({ userId: UserId.optional() });

/** HTTP status of a cancel answer. */
export function cancelStatusOf(result: CancelResult): number {
  if (result.cancelled) return 200;
  if (result.error) return httpStatusOfCode(result.error.code);
  switch (result.status) {
    case 'unknown':
      return 404;
    case 'executing':
      return 202;
    default:
      // It had already ended (or ended first): nothing was changed.
      return 409;
  }
}

/**
 * The HTTP body of a cancel: its `CancelResult`, with an `error` whenever the status is not 2xx, as
 * every error answer of the HTTP APIs has (NATS callers get the `CancelResult` as it is).
 */
/** A cancel refused before anything was looked up (token, path, caller): a CancelResult as any other. */
const cancelRefusal = (
  executionId: string | null,
  code: NonNullable<CancelResult['error']>['code'],
  message: string,
): CancelResult => ({
  executionId,
  requestId: null,
  cancelled: false,
  status: 'refused',
  answer: null,
  message,
  error: { code, message },
});

function cancelBody(result: CancelResult, status: number): CancelResult {
  if (status < 400 || result.error) return result;
  const code = status === 404 ? 'NOT_FOUND' : 'ALREADY_ENDED';
  return { ...result, error: { code, message: result.message } };
}

/**
 * What a body Fastify could not read is answered, as every other refusal (an AgentAnswer, MALFORMED),
 * keeping Fastify's status (415, 413, 400) and saying what to send instead.
 */
function unreadableBody(error: FastifyError): TerminalAnswer | null {
  switch (error.code) {
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return refusal(
        'MALFORMED',
        `send the body as JSON, with 'content-type: application/json' (${error.message})`,
      );
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return refusal('MALFORMED', error.message); // says what is wrong (lib/http.ts)
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return refusal('MALFORMED', `the body is too large: ${error.message}`);
    default:
      return null;
  }
}

/** What a client of POST /executions is told to wait before retrying when the intake refused. */
const INTAKE_RETRY_AFTER_MS = 1_000;

/** Sends a refusal with the status the catalogue gives its code (contracts/errors.ts). */
function refuse(
  reply: FastifyReply,
  answer: TerminalAnswer,
  details?: Record<string, unknown>,
): FastifyReply {
  const body =
    answer.status === 'failed' && details ? { ...answer, error: { ...answer.error, details } } : answer;
  return reply.code(httpStatusOf(answer)).send(body);
}

/**
 * The HTTP API: GET /tools, POST /executions (through the same JetStream intake as agents on NATS,
 * waiting for the terminal answer), GET /executions/:executionId (from the caller's own stream).
 */
export function registerRoutes(app: FastifyInstance, deps: RouteDeps): void {
  /** The caller, or null once `unauthenticated` has answered why not. */
  const verifyWith =
    (unauthenticated: (reply: FastifyReply, message: string) => FastifyReply) =>
    async (req: FastifyRequest, reply: FastifyReply): Promise<Principal | null> => {
      try {
        return await deps.verifier.verify(req.headers.authorization);
      } catch (e) {
        if (!(e instanceof AuthError)) throw e;
        await unauthenticated(reply, e.message);
        return null;
      }
    };
  // The POST routes check the token before their body is read (onRequest: authenticateFirst).
  const { onRequest: authenticateFirst, authenticate } = authenticateBeforeBody(
    verifyWith((reply, message) => refuse(reply, refusal('UNAUTHENTICATED', message))),
  );
  // A cancel answers a CancelResult, whoever asks: so does its 401.
  const cancelAuth = authenticateBeforeBody(
    verifyWith((reply, message) =>
      reply.code(httpStatusOfCode('UNAUTHENTICATED')).send(cancelRefusal(null, 'UNAUTHENTICATED', message)),
    ),
  );
  // A read is no agent's request: its refusals have the error shape of the HTTP APIs.
  const authenticateReader = verifyWith((reply, message) => sendError(reply, 'UNAUTHENTICATED', message));

  app.setErrorHandler((error: FastifyError, req, reply) => {
    // Only POST /executions answers in AgentAnswers; anything else is Fastify's (or the route's) to answer.
    const answer =
      req.method === 'POST' && req.routeOptions.url === '/executions' ? unreadableBody(error) : null;
    if (!answer) return answerError(error, req, reply);
    return reply.code(error.statusCode ?? 400).send(answer);
  });

  app.get('/tools', async () => ({
    tools: deps.registry.list().map((m) => withEffectiveApproval(m, deps.destructive)),
  }));

  app.post('/executions', { onRequest: authenticateFirst }, async (req, reply) => {
    const principal = await authenticate(req, reply);
    if (!principal) return reply;
    const body = req.body;
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
      return refuse(
        reply,
        refusal(
          'MALFORMED',
          'the body must be a JSON object: { requestId?, tool, version?, args, correlationId? }',
        ),
      );
    }
    const fields = body as Record<string, unknown>;
    const given = fields['requestId'];
    const requestId =
      given === undefined ? randomUUID() : typeof given === 'string' ? given : JSON.stringify(given);
    let answer;
    try {
      // Everything else goes to the dispatcher as it is: it validates and records (or refuses) it
      // exactly as a request arriving on NATS.
      answer = await submitRequest(deps.nc, deps.js, {
        token: req.headers.authorization ?? '',
        userId: principal.userId,
        requestId,
        body: { ...fields, requestId: given ?? requestId },
        timeoutMs: deps.waitMs,
      });
    } catch (e) {
      if (e instanceof AgentClientError && e.code === 'TIMEOUT') {
        const executionId = executionIdFor(principal.userId, requestId);
        return reply
          .code(504)
          .header('location', `/executions/${executionId}`)
          .send({
            status: 'pending',
            requestId,
            executionId,
            message:
              `no terminal answer within ${deps.waitMs} ms: the request is waiting for a dispatcher or running. ` +
              `GET /executions/${executionId} shows it once it is recorded (404 until then); send it again ` +
              `with requestId ${requestId} to wait for this same request (it is not run twice). ` +
              'Under overload a request that waited too long may still end OVERLOADED, unrun',
          });
      }
      if (e instanceof RangeError) {
        // Nested deeper than a request can be written out (JSON.stringify's stack): it would fail
        // the same way on every retry.
        return refuse(reply, refusal('VALIDATION', 'the request is nested too deeply', { requestId }));
      }
      req.log.error({ err: e, requestId }, 'request not accepted by the intake');
      return refuse(
        reply.header('retry-after', String(Math.ceil(INTAKE_RETRY_AFTER_MS / 1000))),
        refusal(
          'OVERLOADED',
          'the request could not be handed to a dispatcher; retry with the same requestId',
          {
            requestId,
          },
        ),
        { retryAfterMs: INTAKE_RETRY_AFTER_MS },
      );
    }
    if (answer.status !== 'completed' && answer.status !== 'failed') {
      return refuse(reply, refusal('INTERNAL', 'unexpected interim answer', { requestId }));
    }
    // A request id this route made is not the caller's to spend: a corrected request sent as the
    // first was (without one) gets a new id anyway, so the note that the id is spent is left out.
    const note = spentRequestIdNote(requestId);
    if (given === undefined && answer.status === 'failed' && answer.error.message.endsWith(note)) {
      answer = {
        ...answer,
        error: { ...answer.error, message: answer.error.message.slice(0, -note.length) },
      };
    }
    // A refusal that says when to try again (RATE_LIMITED, OVERLOADED) says it in HTTP's way too.
    const retryAfterMs = answer.status === 'failed' ? answer.error.details?.['retryAfterMs'] : undefined;
    if (typeof retryAfterMs === 'number' && retryAfterMs > 0)
      void reply.header('retry-after', String(Math.ceil(retryAfterMs / 1000)));
    return reply.code(httpStatusOf(answer)).send(answer);
  });

  app.post('/executions/:executionId/cancel', { onRequest: cancelAuth.onRequest }, async (req, reply) => {
    const principal = await cancelAuth.authenticate(req, reply);
    if (!principal) return reply;
    const params = ExecutionIdParam.safeParse(req.params);
    const owner = CancelOwner.safeParse({
      ...(req.query && typeof req.query === 'object' ? req.query : {}),
      ...(req.body && typeof req.body === 'object' && !Array.isArray(req.body) ? req.body : {}),
    });
    const refused = (code: NonNullable<CancelResult['error']>['code'], message: string) =>
      reply
        .code(httpStatusOfCode(code))
        .send(
          cancelRefusal(
            params.success && owner.success ? params.data.of(owner.data.userId ?? principal.userId) : null,
            code,
            message,
          ),
        );
    if (!params.success) return refused('MALFORMED', NOT_AN_EXECUTION_ID);
    if (!owner.success) {
      return refused(
        'MALFORMED',
        owner.error.issues.some((i) => i.path[0] === 'reason')
          ? 'reason must be a text of 1 to 500 characters'
          : 'userId must be a user id',
      );
    }
    const userId = owner.data.userId ?? principal.userId;
    if (!mayCancelFor(principal, userId)) {
      return refused(
        'FORBIDDEN',
        `only ${userId}, an admin or an operator may cancel ${userId}'s executions`,
      );
    }
    const result = await deps.cancels.cancel({
      userId,
      executionId: params.data.of(userId),
      ...(params.data.requestId ? { requestId: params.data.requestId } : {}),
      order: {
        by: principal.userId,
        via: 'http',
        ...(owner.data.reason ? { reason: owner.data.reason } : {}),
      },
      token: req.headers.authorization,
    });
    const status = cancelStatusOf(result);
    return reply.code(status).send(cancelBody(result, status));
  });

  // Lists are the projector's read model; a user who asks the dispatcher is told where they are
  // rather than shown the framework's "Route not found": at the projector's URL when it is known.
  const projectorLists = deps.projectorUrl
    ? `GET ${deps.projectorUrl.replace(/\/$/, '')}/executions`
    : 'GET /executions on the projector';
  app.get('/executions', async (_req, reply) =>
    sendError(
      reply,
      'NOT_FOUND',
      'the dispatcher runs executions (POST /executions) and shows one by id (GET /executions/:executionId); ' +
        `lists of executions, with filters and pages, are the projector's: ${projectorLists} (docs/projector.md)`,
    ),
  );

  app.get('/executions/:executionId', async (req, reply) => {
    const principal = await authenticateReader(req, reply);
    if (!principal) return reply;
    // Refused as the cancel route refuses the same path and query (MALFORMED), in the error shape.
    const fail = (code: Code, message: string) => sendError(reply, code, message);
    const params = ExecutionIdParam.safeParse(req.params);
    if (!params.success) return fail('MALFORMED', NOT_AN_EXECUTION_ID);
    // The caller's own stream is read, or (for the operator console's readers) the one `?userId=`
    // names: another user's execution is simply not there (404).
    const owner = ReadOwner.safeParse(req.query ?? {});
    if (!owner.success) return fail('MALFORMED', 'userId must be a user id');
    const userId = owner.data.userId ?? principal.userId;
    const executionId = params.data.of(userId);
    if (userId !== principal.userId && !mayReadAllUsers(principal)) {
      return fail(
        'FORBIDDEN',
        `only ${userId} or a holder of ${ALL_USERS_READERS.join(', ')} may read ${userId}'s executions`,
      );
    }
    const execution = await deps.streams.load({
      userId,
      executionId,
      requestId: '-',
      correlationId: executionId,
    });
    const view = executionView(execution);
    if (!view) return fail('NOT_FOUND', `no execution ${executionId} of user ${userId}`);
    return view;
  });
}

/**
 * An execution as GET /executions/:executionId shows it: ids, tool, status, the approval asked for
 * and its decision (null when the call needed none), the terminal answer once there is one, and
 * its events. Null when nothing of it is recorded.
 */
export function executionView(execution: Execution) {
  const requested = execution.events.find((e) => e.type === 'ToolRequested');
  if (!requested || requested.type !== 'ToolRequested' || execution.state.status === 'none') return null;
  const terminal = terminalOf(execution);
  const answer: TerminalAnswer | null = terminal ? answerFromTerminal(terminal) : null;
  return {
    executionId: execution.ref.executionId,
    requestId: requested.metadata.requestId,
    correlationId: requested.metadata.correlationId,
    tool: requested.data.tool,
    version: requested.data.version,
    status: execution.state.status,
    approval: execution.state.approval,
    answer,
    events: execution.events,
  };
}
