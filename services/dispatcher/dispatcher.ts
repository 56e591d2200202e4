import {
  canonicalJson,
  executionIdFor,
  inboxPrefixOf,
  isInboxOf,
  parseRequestSubject,
  isUserId,
  JsonValue,
  parseToolRequest,
  REQUEST_HEADERS,
  REQUEST_ID_PATTERN,
  subjects,
  UNKNOWN_TOOL_LABEL,
  type AgentAnswer,
  type ErrorCode,
  type ExecutionCommand,
  type JsonObject,
  type Notification,
  type Principal,
  type ToolEvent,
  type ToolManifest,
  type ToolRequest,
} from '../../contracts/index.ts';
import { AuthError, type TokenVerifier } from '../../lib/auth.ts';
import type { Logger } from '../../lib/log.ts';
import type { NatsConnection } from '../../lib/nats.ts';
import {
  redact,
  ToolRunError,
  type RunnableTool,
  type ToolContext,
  type ToolRegistry,
} from '../../lib/tools/index.ts';
import { answerFromTerminal, outcomeOf, refusal, type TerminalAnswer } from './answers.ts';
import type { Guard } from './guard.ts';
import { probeRunner } from './liveness.ts';
import type { DispatcherMetrics } from './metrics.ts';
import { createProgressReporter } from './progress.ts';
import {
  lastExecutingOf,
  newExecution,
  terminalOf,
  type Execution,
  type ExecutionRef,
  type UserStreams,
} from './streams.ts';

/** One delivery of a request from the intake, whatever carried it. */
export interface Delivery {
  subject: string;
  data: Uint8Array;
  header(name: string): string | undefined;
  /** Unique per delivery (stream sequence and delivery count): names a concurrency slot. */
  id: string;
  redelivered: boolean;
  /** When the request was stored by JetStream (epoch ms): the rate limit judges it by this time. */
  sentAt?: number;
  /** Set by the intake when the request was cancelled while it waited: it is recorded cancelled, not run. */
  cancel?: CancelOrder;
}

/** Who cancelled an execution and through what; recorded in `ToolFailed.data.error.details`. */
export interface CancelOrder {
  /** The user id of the token that asked (the execution's user, or an admin). */
  by: string;
  via: 'nats' | 'http';
}

/** What the intake does with the message: ack it, or let it come back later. */
export type Disposition = { ack: true } | { ack: false; retryInMs: number };

export interface DispatcherOptions {
  dispatcherId: string;
  nc: NatsConnection;
  registry: ToolRegistry;
  verifier: TokenVerifier;
  guard: Guard;
  streams: UserStreams;
  metrics: DispatcherMetrics;
  log: Logger;
  /** How long a concurrency slot outlives a tool's timeout if its holder dies. */
  slotMarginMs?: number;
  /** How long to wait for another dispatcher to say whether it still runs an execution. */
  probeTimeoutMs?: number;
  /** When an execution is still running elsewhere, how long until the request comes back. */
  deferMs?: number;
  /** Minimum time between two progress updates of one execution. */
  progressIntervalMs?: number;
  /**
   * Handlings of one request that may fail (throw) before it is given up: recorded ToolFailed
   * INTERNAL and answered, instead of being delivered again for ever. Default 6.
   */
  maxFailures?: number;
  /**
   * Asks the dispatcher `runner` to cancel an execution it runs (a delivery cancelled here turned
   * out to run elsewhere). Fire and forget.
   */
  forwardCancel?: (runner: string, ref: ExecutionRef, order: CancelOrder, token: string | undefined) => void;
}

/** Largest result stored and answered (its canonical JSON); larger is OUTPUT_INVALID. */
export const MAX_RESULT_BYTES = 512 * 1024;
/** Failure counts kept per process; the oldest is forgotten beyond this. */
const MAX_TRACKED_FAILURES = 10_000;
/** The longest wait before a request that failed is delivered again. */
const MAX_RETRY_MS = 60_000;
const NO_TOOL = '(invalid)';

class ToolTimeoutError extends Error {
  constructor(readonly timeoutMs: number) {
    super(`the tool did not finish within ${timeoutMs} ms`);
    this.name = 'ToolTimeoutError';
  }
}

/** The signal's reason when an execution is cancelled. */
export class ToolCancelledError extends Error {
  constructor(readonly order: CancelOrder) {
    super(`cancelled by ${order.by}`);
    this.name = 'ToolCancelledError';
  }
}

class ShuttingDownError extends Error {
  constructor() {
    super('the dispatcher is shutting down');
    this.name = 'ShuttingDownError';
  }
}

/** A handling this instance is doing, as later deliveries and cancels of its execution find it. */
interface InFlight {
  h: Handling;
  done: Promise<Disposition>;
  /** The terminal answer this handling gave, or null when it ended without one (deferred, failed). */
  outcome: Promise<TerminalAnswer | null>;
}

/** The request being handled, once its user is known. */
interface Handling {
  ref: ExecutionRef;
  principal: Principal;
  request: ToolRequest | null;
  replyTos: Set<string>;
  /** The request named a reply subject outside its agent's inbox: refused, not answered there. */
  foreignReplyTo: boolean;
  /** Reply subjects that got the terminal answer. */
  answeredTo: Set<string>;
  progress: boolean;
  delivery: Delivery;
  startedAt: number;
  tool: RunnableTool | undefined;
  toolLabel: string;
  /** The concurrency slot held in Redis, until the answer's bookkeeping frees it. */
  slot?: string | undefined;
  cacheKey?: string | undefined;
  /** Set when the execution is to be cancelled; `cancelled` fires then. */
  cancel: CancelOrder | null;
  cancelled: AbortController;
  /** Resolves the in-flight outcome with the terminal answer. */
  settleOutcome: (answer: TerminalAnswer | null) => void;
}

interface RunOutcome {
  command: ExecutionCommand;
}

/**
 * The dispatcher core: a delivered request is authenticated, parsed, authorized, admitted (Redis),
 * recorded and run; every transition goes through the pure decider; the agent gets one terminal
 * answer. See docs/dispatcher.md for the flow and docs/decisions/0004-dispatcher-*.md for choices.
 */
export class Dispatcher {
  private readonly inFlight = new Map<string, InFlight>();
  /** Per execution id: how many handlings of it failed in a row here (bounded, oldest dropped). */
  private readonly failures = new Map<string, number>();
  private readonly maxFailures: number;
  private closing = false;
  private readonly slotMarginMs: number;
  private readonly probeTimeoutMs: number;
  private readonly deferMs: number;

  constructor(private readonly o: DispatcherOptions) {
    this.slotMarginMs = o.slotMarginMs ?? 10_000;
    this.probeTimeoutMs = o.probeTimeoutMs ?? 1_500;
    this.deferMs = o.deferMs ?? 2_000;
    this.maxFailures = o.maxFailures ?? 6;
  }

  /** Is this instance running the execution right now (asked by other dispatchers). */
  isRunning = (executionId: string): boolean => this.inFlight.has(executionId);

  /**
   * Cancels an execution this instance is handling: its signal fires (a running tool ends
   * CANCELLED at once), or, before it runs, it is recorded cancelled instead of being run. Returns
   * the handling's outcome, or null when this instance is not handling the execution.
   */
  cancelHeld(userId: string, executionId: string, order: CancelOrder): Promise<TerminalAnswer | null> | null {
    const f = this.inFlight.get(executionId);
    // The execution id alone is not proof of ownership: it must be this user's.
    if (!f || f.h.ref.userId !== userId) return null;
    this.requestCancel(f.h, order);
    return f.outcome;
  }

  /** The outcome of the handling of the user's execution here, or null when there is none. */
  outcomeOf(userId: string, executionId: string): Promise<TerminalAnswer | null> | null {
    const f = this.inFlight.get(executionId);
    return f && f.h.ref.userId === userId ? f.outcome : null;
  }

  get inFlightCount(): number {
    return this.inFlight.size;
  }

  /** Stops taking over work: terminal appends that keep failing give up (the request comes back). */
  shutdown(): void {
    this.closing = true;
  }

  async handle(delivery: Delivery): Promise<Disposition> {
    const startedAt = performance.now();
    const parsed = parseToolRequest(delivery.data);
    const partial: Partial<ToolRequest> = parsed.ok ? parsed.request : (parsed.partial ?? {});
    // Answers go only to an inbox of the agent that published the request (the server lets an
    // identity publish only under its own agent id, and subscribe only to its own inbox).
    const from = parseRequestSubject(delivery.subject);
    const foreignReplyTo =
      partial.replyTo !== undefined && !(from && isInboxOf(from.agentId, partial.replyTo));
    const replyTo = foreignReplyTo ? undefined : partial.replyTo;
    if (foreignReplyTo) {
      this.o.log.warn(
        { subject: delivery.subject, replyTo: partial.replyTo },
        "request names a reply subject outside its agent's inbox: it is not answered there",
      );
    }

    let principal: Principal;
    try {
      principal = await this.o.verifier.verify(delivery.header(REQUEST_HEADERS.authorization));
    } catch (e) {
      if (!(e instanceof AuthError)) throw e;
      this.o.metrics.refusedUnauthenticated.inc();
      this.o.log.warn(
        { subject: delivery.subject, requestId: partial.requestId, reason: e.reason },
        'request refused: unauthenticated',
      );
      this.reply(replyTo, refusal('UNAUTHENTICATED', `token ${e.reason}: ${e.message}`, this.idsOf(partial)));
      return { ack: true };
    }
    const userId = principal.userId;

    const requestId = partial.requestId ?? requestIdFromMsgId(delivery.header(REQUEST_HEADERS.msgId), userId);
    if (!requestId) {
      // Nothing names the request: it cannot be recorded, only answered.
      const problem = parsed.ok ? null : parsed.problem;
      this.o.log.warn(
        { userId, subject: delivery.subject, problem: problem?.message },
        'request refused: no request id',
      );
      this.reply(
        replyTo,
        refusal(problem?.code ?? 'VALIDATION', problem?.message ?? 'the request has no request id'),
      );
      return { ack: true };
    }
    const executionId = executionIdFor(userId, requestId);
    const ref: ExecutionRef = {
      userId,
      executionId,
      requestId,
      correlationId: partial.correlationId ?? executionId,
    };

    const running = this.inFlight.get(executionId);
    if (running) {
      // A duplicate of a request this instance is handling: answered by the same execution, also
      // when it joins after the answer went out (the first handling still finishing its bookkeeping).
      const first = running.h;
      if (replyTo) first.replyTos.add(replyTo);
      if (delivery.cancel) this.requestCancel(first, delivery.cancel);
      const [disposition, answer] = await Promise.all([running.done, running.outcome]);
      if (answer && replyTo && !first.answeredTo.has(replyTo)) {
        first.answeredTo.add(replyTo);
        this.reply(replyTo, answer);
      }
      return disposition;
    }
    let settle!: (d: Disposition) => void;
    const done = new Promise<Disposition>((resolve) => (settle = resolve));
    let settleOutcome!: (a: TerminalAnswer | null) => void;
    const outcome = new Promise<TerminalAnswer | null>((resolve) => (settleOutcome = resolve));

    const h: Handling = {
      ref,
      principal,
      request: parsed.ok ? parsed.request : null,
      replyTos: new Set(replyTo ? [replyTo] : []),
      foreignReplyTo,
      answeredTo: new Set(),
      progress: parsed.ok && parsed.request.progress === true,
      delivery,
      startedAt,
      tool: undefined,
      toolLabel: partial.tool ?? NO_TOOL,
      cancel: delivery.cancel ?? null,
      cancelled: new AbortController(),
      settleOutcome,
    };
    if (h.cancel) h.cancelled.abort(new ToolCancelledError(h.cancel));
    this.inFlight.set(executionId, { h, done, outcome });
    this.o.metrics.inFlight.inc();
    let disposition: Disposition = { ack: false, retryInMs: this.deferMs };
    try {
      disposition = await this.process(h, parsed.ok ? null : parsed.problem.message);
      this.failures.delete(executionId);
      return disposition;
    } catch (e) {
      disposition = await this.failed(h, e);
      return disposition;
    } finally {
      if (h.slot) void this.o.guard.release(userId, h.slot);
      this.inFlight.delete(executionId);
      this.o.metrics.inFlight.dec();
      settleOutcome(null);
      settle(disposition);
    }
  }

  /**
   * A handling threw (the store away, a bug). The request comes back later, each time a little
   * later; after `maxFailures` failures it is given up: ended INTERNAL, recorded and answered.
   */
  private async failed(h: Handling, e: unknown): Promise<Disposition> {
    const { userId, requestId, executionId } = h.ref;
    const count = (this.failures.get(executionId) ?? 0) + 1;
    this.failures.delete(executionId);
    this.failures.set(executionId, count);
    if (this.failures.size > MAX_TRACKED_FAILURES) this.failures.delete(this.failures.keys().next().value!);
    const retryInMs = Math.min(this.deferMs * 2 ** (count - 1), MAX_RETRY_MS);
    const context = { err: errorInfo(e), userId, requestId, executionId, tool: h.toolLabel, failures: count };
    if (count < this.maxFailures || this.closing) {
      this.o.log.error({ ...context, retryInMs }, 'request not finished; it will be delivered again');
      return { ack: false, retryInMs };
    }
    this.o.log.error(context, `request failed ${count} times; giving it up`);
    try {
      const disposition = await this.giveUp(h, count);
      if (disposition.ack) this.failures.delete(executionId);
      return disposition;
    } catch (again) {
      this.o.log.error(
        { ...context, err: errorInfo(again), retryInMs },
        'could not give the request up either',
      );
      return { ack: false, retryInMs };
    }
  }

  /**
   * Ends a request that keeps failing: ToolFailed INTERNAL (after a minimal ToolRequested, its
   * arguments all redacted, when nothing is recorded), answered. An execution that has ended is
   * answered as it ended; one that runs on a live dispatcher is left to it.
   */
  private async giveUp(h: Handling, failures: number): Promise<Disposition> {
    const execution = await this.o.streams.load(h.ref);
    const state = execution.state;
    if (state.status === 'completed' || state.status === 'failed')
      return this.existing(h, execution, undefined);
    if (await this.liveRunnerElsewhere(execution)) return { ack: false, retryInMs: this.deferMs };
    const fail: ExecutionCommand = {
      type: 'Fail',
      data: {
        error: {
          code: 'INTERNAL',
          message: `the dispatcher failed to handle this request ${failures} times and gave it up`,
          details: { failures },
        },
        durationMs: null,
      },
    };
    const args = h.request?.args ?? {};
    const { value, redacted } = redact(args, Object.keys(args));
    const tool = h.tool?.manifest;
    const { appended } = await this.o.streams.step(execution, (s) => {
      switch (s.status) {
        case 'none':
          return [
            {
              type: 'Request',
              data: { tool: tool?.name ?? NO_TOOL, version: tool?.version ?? null, args: value, redacted },
            },
            fail,
          ];
        case 'requested':
        case 'executing':
          return [fail];
        default:
          return [];
      }
    });
    if (appended.length === 0) return this.existing(h, execution, undefined);
    this.o.metrics.redeliveries.inc({ action: 'given_up' });
    return this.answered(h, answerFromTerminal(appended.at(-1)!), true);
  }

  private requestCancel(h: Handling, order: CancelOrder): void {
    h.cancel ??= order;
    if (!h.cancelled.signal.aborted) h.cancelled.abort(new ToolCancelledError(h.cancel));
  }

  private idsOf(partial: Partial<ToolRequest>) {
    return {
      ...(partial.requestId ? { requestId: partial.requestId } : {}),
      ...(partial.correlationId ? { correlationId: partial.correlationId } : {}),
    };
  }

  private async process(h: Handling, parseProblem: string | null): Promise<Disposition> {
    const { ref, request } = h;
    const refused = this.refusalOf(h, parseProblem);
    if (refused) {
      const prior = await this.o.guard.peek(ref.userId, ref.requestId);
      if (prior.kind === 'answer') return this.answered(h, prior.answer, false);
      if (prior.kind !== 'none' || h.delivery.redelivered) {
        const found = await this.recorded(h);
        if (found) return this.existing(h, found, undefined);
      }
      return this.refuse(
        h,
        refused.code,
        refused.message,
        request?.args ?? {},
        h.tool?.manifest,
        refused.details,
      );
    }
    const tool = h.tool!;
    // Cancelled while it waited in the intake: recorded cancelled, never run.
    if (h.cancel) return this.cancelUnstarted(h, tool);
    const manifest = tool.manifest;
    const cacheKey = manifest.cacheable
      ? this.o.guard.cacheKey(ref.userId, manifest.name, manifest.version, request!.args)
      : undefined;
    const slot = `${this.o.dispatcherId}:${h.delivery.id}`;
    const admission = await this.o.guard.admit({
      userId: ref.userId,
      requestId: ref.requestId,
      slot,
      slotTtlMs: manifest.timeoutMs + this.slotMarginMs,
      ...(cacheKey ? { cacheKey } : {}),
      ...(h.delivery.sentAt !== undefined ? { sentAt: h.delivery.sentAt } : {}),
    });
    if (admission.kind === 'go' || admission.kind === 'cached') h.slot = slot;
    h.cacheKey = cacheKey;
    if (admission.kind === 'answer') {
      // Seen before: the first execution's answer, no second run.
      return this.answered(h, admission.answer, false);
    }
    // Redis cannot vouch that this request is new (admitted before, Redis away, or JetStream
    // delivers it again): the event store decides, before anything is appended.
    if (admission.kind === 'seen' || admission.kind === 'unavailable' || h.delivery.redelivered) {
      const found = await this.recorded(h);
      if (found) return this.existing(h, found, tool);
    }
    switch (admission.kind) {
      case 'rate_limited':
        this.o.metrics.rateLimited.inc({ limit: 'rate' });
        return this.refuse(
          h,
          'RATE_LIMITED',
          `rate limit exceeded; retry in ${admission.retryAfterMs} ms`,
          request!.args,
          manifest,
          {
            limit: 'rate',
            retryAfterMs: admission.retryAfterMs,
          },
        );
      case 'busy':
        this.o.metrics.rateLimited.inc({ limit: 'concurrency' });
        return this.refuse(
          h,
          'RATE_LIMITED',
          'too many executions of this user are running; retry when one has finished',
          request!.args,
          manifest,
          {
            limit: 'concurrency',
          },
        );
      case 'cached':
        return this.fromCache(h, tool, admission.result);
      case 'go':
      case 'seen':
      case 'unavailable':
        return this.execute(h, tool);
      default: {
        const unknown: never = admission;
        throw new Error(`unknown admission ${JSON.stringify(unknown)}`);
      }
    }
  }

  /** Why the request is refused before it is admitted (no I/O), or null. Resolves the tool. */
  private refusalOf(
    h: Handling,
    parseProblem: string | null,
  ): { code: ErrorCode; message: string; details?: Record<string, unknown> } | null {
    const { ref, request, principal } = h;
    if (!request) return { code: 'VALIDATION', message: parseProblem ?? 'invalid request' };
    const subjectUser = parseRequestSubject(h.delivery.subject)?.userId ?? '';
    const tool = this.o.registry.resolve(request.tool, request.version);
    h.tool = tool;
    h.toolLabel = request.tool;
    if (subjectUser !== ref.userId || (request.userId !== undefined && request.userId !== ref.userId)) {
      const claimed = subjectUser !== ref.userId ? subjectUser : request.userId;
      return {
        code: 'FORBIDDEN',
        message: `the token is for user ${ref.userId}; it may not act for ${JSON.stringify(claimed)}`,
      };
    }
    if (h.foreignReplyTo) {
      return {
        code: 'VALIDATION',
        message: `replyTo must be an inbox of the publishing agent (${inboxPrefixOf(
          parseRequestSubject(h.delivery.subject)?.agentId ?? 'anonymous',
        )}.*)`,
      };
    }
    if (!tool) {
      const known = this.o.registry.resolve(request.tool);
      return {
        code: 'UNKNOWN_TOOL',
        message: known
          ? `tool ${request.tool} has no version ${request.version}`
          : `no tool named ${request.tool}`,
      };
    }
    const missing = tool.manifest.roles.filter((r) => !principal.roles.includes(r));
    if (missing.length > 0) {
      return {
        code: 'FORBIDDEN',
        message: `${tool.manifest.name}@${tool.manifest.version} needs the role(s) ${missing.join(', ')}`,
      };
    }
    return null;
  }

  /** The execution as the store has it, or null when nothing of it is recorded. */
  private async recorded(h: Handling): Promise<Execution | null> {
    const execution = await this.o.streams.load(h.ref);
    return execution.state.status === 'none' ? null : execution;
  }

  /** Records a refusal (ToolRequested + ToolFailed in one append) and answers it. */
  private async refuse(
    h: Handling,
    code: ErrorCode,
    message: string,
    args: JsonObject,
    manifest: ToolManifest | undefined,
    details?: Record<string, unknown>,
  ): Promise<Disposition> {
    const execution = newExecution(h.ref);
    // Before the tool is known, every argument is treated as sensitive.
    const { value, redacted } = redact(args, manifest ? manifest.sensitive.input : Object.keys(args));
    // Null when the tool was not resolved: the projector keeps such names out of per-tool models.
    const version = manifest?.version ?? null;
    const { appended } = await this.o.streams.step(execution, (s) =>
      s.status === 'none'
        ? [
            {
              type: 'Request',
              data: { tool: manifest?.name ?? h.toolLabel, version, args: value, redacted },
            },
            {
              type: 'Fail',
              data: { error: details ? { code, message, details } : { code, message }, durationMs: null },
            },
          ]
        : [],
    );
    // Already recorded: a rate-limited duplicate may still finish what a dead dispatcher left.
    if (appended.length === 0)
      return this.existing(h, execution, code === 'RATE_LIMITED' ? h.tool : undefined);
    this.o.log.info(
      {
        userId: h.ref.userId,
        requestId: h.ref.requestId,
        executionId: h.ref.executionId,
        tool: h.toolLabel,
        code,
      },
      'request refused',
    );
    return this.answered(h, answerFromTerminal(appended.at(-1)!), true);
  }

  /**
   * Cancelled before it ran (while it waited in the intake, or while it was admitted):
   * ToolRequested + ToolFailed CANCELLED in one append, no ToolExecuting. An execution already
   * recorded is left to `existing`, which honours the cancel too.
   */
  private async cancelUnstarted(h: Handling, tool: RunnableTool): Promise<Disposition> {
    const order = h.cancel!;
    const manifest = tool.manifest;
    const execution = newExecution(h.ref);
    const { value, redacted } = redact(h.request!.args, manifest.sensitive.input);
    const { appended } = await this.o.streams.step(execution, (s) =>
      s.status === 'none'
        ? [
            {
              type: 'Request',
              data: { tool: manifest.name, version: manifest.version, args: value, redacted },
            },
            {
              type: 'Fail',
              data: {
                error: cancelledError(order, 'before it started'),
                durationMs: null,
              },
            },
          ]
        : [],
    );
    if (appended.length === 0) return this.existing(h, execution, tool);
    this.o.log.info(
      { userId: h.ref.userId, requestId: h.ref.requestId, executionId: h.ref.executionId, by: order.by },
      'request cancelled before it ran',
    );
    return this.answered(h, answerFromTerminal(appended.at(-1)!), true);
  }

  /** A cache hit: Requested, Executing, Completed{cached} in one append. */
  private async fromCache(h: Handling, tool: RunnableTool, result: JsonValue): Promise<Disposition> {
    const manifest = tool.manifest;
    const execution = newExecution(h.ref);
    const { value, redacted } = redact(h.request!.args, manifest.sensitive.input);
    const started = performance.now();
    const { appended } = await this.o.streams.step(execution, (s) =>
      s.status === 'none'
        ? [
            {
              type: 'Request',
              data: { tool: manifest.name, version: manifest.version, args: value, redacted },
            },
            { type: 'StartAttempt', data: { runner: this.o.dispatcherId, timeoutMs: manifest.timeoutMs } },
            {
              type: 'Complete',
              data: {
                result,
                redacted: manifest.sensitive.output.filter((f) => isRedactedField(result, f)),
                durationMs: performance.now() - started,
                cached: true,
              },
            },
          ]
        : [],
    );
    if (appended.length === 0) return this.existing(h, execution, tool);
    this.sendInterim(h, 'requested');
    this.sendInterim(h, 'executing');
    return this.answered(h, answerFromTerminal(appended.at(-1)!), true);
  }

  /** The normal path: Requested + Executing (one append), run, terminal (one append). */
  private async execute(h: Handling, tool: RunnableTool): Promise<Disposition> {
    // Cancelled while it was admitted: nothing ran yet.
    if (h.cancel) return this.cancelUnstarted(h, tool);
    const manifest = tool.manifest;
    const execution = newExecution(h.ref);
    const { value, redacted } = redact(h.request!.args, manifest.sensitive.input);
    const { appended } = await this.o.streams.step(execution, (s) =>
      s.status === 'none'
        ? [
            {
              type: 'Request',
              data: { tool: manifest.name, version: manifest.version, args: value, redacted },
            },
            { type: 'StartAttempt', data: { runner: this.o.dispatcherId, timeoutMs: manifest.timeoutMs } },
          ]
        : [],
    );
    if (appended.length === 0) return this.existing(h, execution, tool);
    this.sendInterim(h, 'requested');
    this.sendInterim(h, 'executing');
    return this.runAndFinish(h, execution, tool);
  }

  /**
   * The execution is already in the stream (a retry, a redelivery, a duplicate): answer from its
   * terminal event, or finish what a dead dispatcher left: re-run an idempotent tool (a new
   * ToolExecuting attempt), fail any other with INTERRUPTED. A live runner is left alone.
   */
  private async existing(
    h: Handling,
    execution: Execution,
    tool: RunnableTool | undefined,
  ): Promise<Disposition> {
    const state = execution.state;
    switch (state.status) {
      case 'completed':
      case 'failed': {
        const answer = answerFromTerminal(terminalOf(execution)!);
        void this.o.guard.remember(h.ref.userId, h.ref.requestId, answer);
        return this.answered(h, answer, false);
      }
      case 'none':
        // Nothing recorded after all (cannot happen with a store that keeps event ids unique).
        throw new Error(`execution ${h.ref.executionId} is neither new nor recorded`);
      case 'requested':
      case 'executing': {
        const attempt = state.status === 'executing' ? state.attempt : 0;
        const runner = await this.liveRunnerElsewhere(execution);
        if (runner) {
          if (h.cancel) {
            // Cancelled here, but it runs elsewhere: the cancel goes to its runner.
            this.o.forwardCancel?.(
              runner,
              execution.ref,
              h.cancel,
              h.delivery.header(REQUEST_HEADERS.authorization),
            );
          }
          this.o.metrics.redeliveries.inc({ action: 'deferred' });
          this.o.log.info(
            { userId: h.ref.userId, executionId: h.ref.executionId, runner },
            'execution still running elsewhere; request deferred',
          );
          return { ack: false, retryInMs: this.deferMs };
        }
        const requested = execution.events.find((e) => e.type === 'ToolRequested');
        const sameRequest =
          tool !== undefined &&
          h.request !== null &&
          requested?.type === 'ToolRequested' &&
          requested.data.tool === tool.manifest.name &&
          requested.data.version === tool.manifest.version &&
          canonicalJson(requested.data.args) ===
            canonicalJson(redact(h.request.args, tool.manifest.sensitive.input).value);
        if (h.cancel) {
          // Nobody runs it, and it is to be cancelled: end it so, rather than run it again.
          const order = h.cancel;
          const { appended } = await this.o.streams.step(execution, (s) =>
            (s.status === 'executing' && s.attempt === attempt) || (s.status === 'requested' && attempt === 0)
              ? [
                  {
                    type: 'Fail',
                    data: { error: cancelledError(order, 'after its dispatcher stopped'), durationMs: null },
                  },
                ]
              : [],
          );
          if (appended.length === 0) return this.existing(h, execution, tool);
          return this.answered(h, answerFromTerminal(appended.at(-1)!), true);
        }
        if (tool && sameRequest && (tool.manifest.idempotent || state.status === 'requested')) {
          const { appended } = await this.o.streams.step(execution, (s) =>
            (s.status === 'executing' && s.attempt === attempt) || (s.status === 'requested' && attempt === 0)
              ? [
                  {
                    // Nobody runs it (checked above), and it is idempotent or never started.
                    type: 'Recover',
                    data: {
                      liveness: 'dead',
                      idempotent: tool.manifest.idempotent,
                      maxAttempts: Number.MAX_SAFE_INTEGER,
                      runner: this.o.dispatcherId,
                      timeoutMs: tool.manifest.timeoutMs,
                      now: new Date().toISOString(),
                    },
                  },
                ]
              : [],
          );
          if (appended.length === 0) return this.existing(h, execution, tool);
          this.o.metrics.redeliveries.inc({ action: 'rerun' });
          this.o.log.warn(
            {
              userId: h.ref.userId,
              executionId: h.ref.executionId,
              attempt: attempt + 1,
              tool: tool.manifest.name,
            },
            'unfinished execution found: running it again (idempotent)',
          );
          this.sendInterim(h, 'executing');
          return this.runAndFinish(h, execution, tool);
        }
        const why = !tool
          ? 'its tool is no longer available'
          : !sameRequest
            ? 'the request id was reused with other arguments'
            : `${tool.manifest.name} is not idempotent, so it is not run again`;
        const { appended } = await this.o.streams.step(execution, (s) =>
          (s.status === 'executing' && s.attempt === attempt) || (s.status === 'requested' && attempt === 0)
            ? [
                {
                  type: 'Fail',
                  data: {
                    error: {
                      code: 'INTERRUPTED',
                      message: `the dispatcher running this execution stopped; ${why}`,
                    },
                    durationMs: null,
                  },
                },
              ]
            : [],
        );
        if (appended.length === 0) return this.existing(h, execution, tool);
        this.o.metrics.redeliveries.inc({ action: 'interrupted' });
        this.o.log.warn(
          { userId: h.ref.userId, executionId: h.ref.executionId, tool: h.toolLabel },
          'unfinished execution found: INTERRUPTED',
        );
        return this.answered(h, answerFromTerminal(appended.at(-1)!), true);
      }
      case 'awaiting_approval':
      case 'approved':
        // This dispatcher asks for no approval; one that does will handle these (issue 18).
        throw new Error(
          `execution ${h.ref.executionId} is ${state.status}: approvals are not handled here yet`,
        );
      default: {
        const unknown: never = state;
        throw new Error(`unknown state ${JSON.stringify(unknown)}`);
      }
    }
  }

  private async runAndFinish(h: Handling, execution: Execution, tool: RunnableTool): Promise<Disposition> {
    const attempt = execution.state.status === 'executing' ? execution.state.attempt : 1;
    const { command } = await this.run(h, tool);
    // The terminal append must happen: the tool's result is only in memory. Retry while the
    // store is away; give up only when shutting down (the request then comes back: re-run or
    // INTERRUPTED).
    let appended: ToolEvent[];
    for (let wait = 200; ; wait = Math.min(wait * 2, 5_000)) {
      try {
        ({ appended } = await this.o.streams.step(execution, (s) =>
          s.status === 'executing' && s.attempt === attempt ? [command] : [],
        ));
        break;
      } catch (e) {
        if (this.closing) throw new ShuttingDownError();
        this.o.log.error(
          { err: errorInfo(e), userId: h.ref.userId, executionId: h.ref.executionId },
          'terminal append failed; retrying',
        );
        await new Promise((r) => setTimeout(r, wait));
      }
    }
    // Someone else ended it (a dispatcher that took it for dead): theirs is the answer.
    if (appended.length === 0) return this.existing(h, execution, tool);
    return this.answered(h, answerFromTerminal(appended.at(-1)!), true);
  }

  /** Runs the tool with its timeout; never throws: the outcome is a Complete or Fail command. */
  private async run(h: Handling, tool: RunnableTool): Promise<RunOutcome> {
    const manifest = tool.manifest;
    const controller = new AbortController();
    const reporter = createProgressReporter((p) => this.sendProgress(h, p), this.o.progressIntervalMs ?? 100);
    const ctx: ToolContext = {
      signal: controller.signal,
      userId: h.ref.userId,
      roles: h.principal.roles,
      executionId: h.ref.executionId,
      requestId: h.ref.requestId,
      correlationId: h.ref.correlationId,
      progress: (p) => reporter.report(p),
    };
    const started = performance.now();
    let timer: NodeJS.Timeout | undefined;
    let onCancel: (() => void) | undefined;
    try {
      const result = await new Promise<unknown>((resolve, reject) => {
        timer = setTimeout(() => {
          const e = new ToolTimeoutError(manifest.timeoutMs);
          controller.abort(e);
          reject(e);
        }, manifest.timeoutMs);
        // A cancel fires the tool's signal and ends the run at once, whatever the tool does.
        onCancel = () => {
          const e = h.cancelled.signal.reason as Error;
          controller.abort(e);
          reject(e);
        };
        if (h.cancelled.signal.aborted) onCancel();
        else h.cancelled.signal.addEventListener('abort', onCancel, { once: true });
        Promise.resolve()
          .then(() => tool.run(h.request!.args, ctx))
          .then(resolve, reject);
      });
      const durationMs = performance.now() - started;
      if (durationMs > manifest.timeoutMs) {
        // It finished, but late: a tool that blocked the event loop past its deadline (the timer
        // could not fire). The deadline is what counts.
        return fail('TIMEOUT', `the tool did not finish within ${manifest.timeoutMs} ms`, durationMs, {
          timeoutMs: manifest.timeoutMs,
        });
      }
      const json = JsonValue.safeParse(result);
      if (!json.success)
        return fail('OUTPUT_INVALID', `${manifest.name} returned a value that is not JSON`, durationMs);
      const size = Buffer.byteLength(canonicalJson(json.data));
      if (size > MAX_RESULT_BYTES) {
        return fail(
          'OUTPUT_INVALID',
          `${manifest.name} returned ${size} bytes; the limit is ${MAX_RESULT_BYTES}`,
          durationMs,
        );
      }
      const { value, redacted } = redact(json.data, manifest.sensitive.output);
      // The last progress held back by the rate limit goes out before the answer.
      reporter.stop(true);
      return { command: { type: 'Complete', data: { result: value, redacted, durationMs, cached: false } } };
    } catch (e) {
      const durationMs = performance.now() - started;
      if (e instanceof ToolTimeoutError)
        return fail('TIMEOUT', e.message, durationMs, { timeoutMs: e.timeoutMs });
      if (e instanceof ToolCancelledError) {
        const error = cancelledError(e.order, 'while it ran');
        return fail(error.code, error.message, durationMs, error.details);
      }
      // An error message may quote an argument: sensitive values are cut out of it.
      const secrets = sensitiveValues(h.request!.args, manifest.sensitive.input);
      if (e instanceof ToolRunError) {
        return fail(
          e.code,
          scrub(e.message, secrets),
          durationMs,
          e.details && scrubJson(e.details, secrets),
        );
      }
      return fail('TOOL_ERROR', scrub(e instanceof Error ? e.message : String(e), secrets), durationMs);
    } finally {
      clearTimeout(timer);
      if (onCancel) h.cancelled.signal.removeEventListener('abort', onCancel);
      reporter.stop();
      if (!controller.signal.aborted) controller.abort(new Error('execution ended'));
    }
  }

  private sendInterim(h: Handling, status: 'requested' | 'executing'): void {
    if (!h.progress) return;
    const { requestId, executionId, correlationId } = h.ref;
    this.reply(h.replyTos, { status, requestId, executionId, correlationId });
  }

  private sendProgress(h: Handling, p: { fraction: number; message?: string }): void {
    const { userId, requestId, executionId, correlationId } = h.ref;
    const message = p.message === undefined ? {} : { message: p.message };
    const n: Notification = {
      kind: 'progress',
      userId,
      executionId,
      correlationId,
      fraction: p.fraction,
      ...message,
    };
    this.o.nc.publish(subjects.progress(userId), JSON.stringify(n));
    if (h.progress) {
      this.reply(h.replyTos, {
        status: 'progress',
        requestId,
        executionId,
        correlationId,
        fraction: p.fraction,
        ...message,
      });
    }
  }

  /** Sends the terminal answer, remembers it (Redis), counts it; the request can be acked. */
  private async answered(h: Handling, answer: TerminalAnswer, fresh: boolean): Promise<Disposition> {
    // Each reply subject gets the terminal answer once; a delivery that joins later answers its own.
    const to = [...h.replyTos].filter((s) => !h.answeredTo.has(s));
    for (const s of to) h.answeredTo.add(s);
    this.reply(to, answer);
    h.settleOutcome(answer);
    if (fresh) {
      const slot = h.slot;
      h.slot = undefined;
      await this.o.guard.finish({
        userId: h.ref.userId,
        requestId: h.ref.requestId,
        answer,
        ...(slot ? { slot } : {}),
        ...(h.cacheKey ? { cacheKey: h.cacheKey } : {}),
      });
    }
    const outcome = outcomeOf(answer);
    // Only names the registry knows become labels (see UNKNOWN_TOOL_LABEL).
    const tool = h.tool ? h.tool.manifest.name : UNKNOWN_TOOL_LABEL;
    this.o.metrics.executions.inc({ tool, outcome });
    this.o.metrics.duration.observe({ tool, outcome }, (performance.now() - h.startedAt) / 1000);
    this.o.log.info(
      {
        userId: h.ref.userId,
        requestId: h.ref.requestId,
        executionId: h.ref.executionId,
        tool: h.toolLabel,
        outcome,
        replay: !fresh,
        ms: Math.round(performance.now() - h.startedAt),
      },
      'request answered',
    );
    return { ack: true };
  }

  /** The dispatcher running the execution's last attempt, when it is another one and says it still runs it. */
  private async liveRunnerElsewhere(execution: Execution): Promise<string | null> {
    const runner = lastExecutingOf(execution)?.data.runner;
    if (!runner || runner === this.o.dispatcherId) return null;
    const answer = await probeRunner(this.o.nc, runner, execution.ref.executionId, this.probeTimeoutMs);
    return answer === 'running' ? runner : null;
  }

  private reply(to: string | undefined | Iterable<string>, answer: AgentAnswer): void {
    const targets = to === undefined ? [] : typeof to === 'string' ? [to] : [...to];
    if (targets.length === 0) return;
    const body = JSON.stringify(answer);
    for (const subject of targets) {
      try {
        this.o.nc.publish(subject, body);
      } catch (e) {
        this.o.log.warn({ err: errorInfo(e), subject }, 'answer publish failed');
      }
    }
  }

  /**
   * What became of (user, request id): the remembered answer (Redis), else the stored terminal
   * event (found through the store's index by execution id). Null while it has none yet.
   */
  async lookup(userId: string, requestId: string): Promise<TerminalAnswer | null> {
    const executionId = executionIdFor(userId, requestId);
    if (this.inFlight.has(executionId)) return null;
    const remembered = await this.o.guard.peek(userId, requestId);
    if (remembered.kind === 'answer') return remembered.answer;
    const execution = await this.o.streams.load({
      userId,
      executionId,
      requestId,
      correlationId: executionId,
    });
    const terminal = terminalOf(execution);
    if (!terminal) return null;
    const answer = answerFromTerminal(terminal);
    void this.o.guard.remember(userId, requestId, answer);
    return answer;
  }
}

/** The error a cancelled execution is recorded with. */
export function cancelledError(
  order: CancelOrder,
  when: string,
): { code: 'CANCELLED'; message: string; details: Record<string, unknown> } {
  return {
    code: 'CANCELLED',
    message: `cancelled by ${order.by} ${when}`,
    details: { cancelledBy: order.by, via: order.via },
  };
}

function fail(
  code: ErrorCode,
  message: string,
  durationMs: number,
  details?: Record<string, unknown>,
): RunOutcome {
  const error = {
    code,
    message: message.length > 2000 ? `${message.slice(0, 1999)}…` : message,
    ...(details ? { details } : {}),
  };
  return { command: { type: 'Fail', data: { error, durationMs } } };
}

/** The string values of an object's sensitive fields (short ones are too common to cut out). */
function sensitiveValues(args: JsonObject, fields: readonly string[]): string[] {
  return fields.flatMap((f) => {
    const v = Object.prototype.hasOwnProperty.call(args, f) ? args[f] : undefined;
    if (v === undefined || v === null) return [];
    const text = typeof v === 'string' ? v : JSON.stringify(v);
    return text.length >= 4 ? [text] : [];
  });
}

export function scrub(text: string, secrets: readonly string[]): string {
  let out = text;
  for (const s of secrets) out = out.split(s).join('[REDACTED]');
  return out;
}

function scrubJson(value: Record<string, unknown>, secrets: readonly string[]): Record<string, unknown> {
  if (secrets.length === 0) return value;
  try {
    const text = JSON.stringify(value);
    const cleaned = scrub(
      text,
      secrets.map((s) => JSON.stringify(s).slice(1, -1)),
    );
    return cleaned === text ? value : (JSON.parse(cleaned) as Record<string, unknown>);
  } catch {
    return {};
  }
}

const isRedactedField = (value: unknown, field: string): boolean =>
  value !== null &&
  typeof value === 'object' &&
  !Array.isArray(value) &&
  (value as Record<string, unknown>)[field] === '[REDACTED]';

/**
 * The execution a delivery would be, for the user of its subject: its body's request id, or the
 * one in `Nats-Msg-Id`. Null when neither names a request. Used to find a waiting request to cancel.
 */
export function executionIdOfDelivery(d: Delivery, userId: string): string | null {
  let requestId: unknown;
  try {
    requestId = (JSON.parse(Buffer.from(d.data).toString('utf8')) as { requestId?: unknown } | null)
      ?.requestId;
  } catch {
    requestId = undefined;
  }
  if (typeof requestId !== 'string' || !REQUEST_ID_PATTERN.test(requestId)) {
    requestId = requestIdFromMsgId(d.header(REQUEST_HEADERS.msgId), userId);
  }
  return typeof requestId === 'string' && isUserId(userId) ? executionIdFor(userId, requestId) : null;
}

/** `<userId>:<requestId>` -> requestId, when the prefix is the token's user and the rest a request id. */
export function requestIdFromMsgId(msgId: string | undefined, userId: string): string | undefined {
  if (!msgId || !isUserId(userId) || !msgId.startsWith(`${userId}:`)) return undefined;
  const rest = msgId.slice(userId.length + 1);
  return REQUEST_ID_PATTERN.test(rest) ? rest : undefined;
}

/** An error as it may be logged: name, message and code, never a request or its token. */
export function errorInfo(e: unknown): { name: string; message: string; code?: unknown } {
  if (e instanceof Error) {
    const code = (e as { code?: unknown }).code;
    return { name: e.name, message: e.message, ...(code !== undefined ? { code } : {}) };
  }
  return { name: 'Error', message: String(e) };
}
