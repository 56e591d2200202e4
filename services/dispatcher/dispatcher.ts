import {
  executionIdFor,
  isInboxOf,
  parseRequestSubject,
  parseToolRequest,
  REQUEST_HEADERS,
  republishOf,
  type Principal,
  type ToolRequest,
} from '../../contracts/index.ts';
import { AuthError } from '../../lib/auth.ts';
import type { Logger } from '../../lib/log.ts';
import { askOfExecution, askOfHandling, isConflict, type RecordedAsk } from './ask.ts';
import { conflictRefusal, reply, REUSED } from './answer.ts';
import { answerFromTerminal, refusal, type TerminalAnswer } from './answers.ts';
import {
  errorInfo,
  requestIdFromMsgId,
  type CancelOrder,
  type Delivery,
  type Disposition,
} from './delivery.ts';
import { handleDelivery, recordPendingCancel } from './handling.ts';
import type { ShedRequest } from './lookup.ts';
import { giveUp } from './recovery.ts';
import { abortForCancel, NO_TOOL, type DispatcherOptions, type Handling, type Shell } from './shell.ts';
import { terminalOf, type ExecutionRef } from './streams.ts';
import { markDispatcher } from '../../lib/diagnostics.ts';

// The intake, the lookups and the tests know these by this module.
export {
  errorInfo,
  executionIdOfDelivery,
  requestIdFromMsgId,
  type CancelOrder,
  type Delivery,
  type Disposition,
} from './delivery.ts';
export { MAX_RESULT_BYTES, scrub } from './runner.ts';
export { ToolCancelledError, type DispatcherOptions } from './shell.ts';

/** Failure counts kept per process; the oldest is forgotten beyond this. */
const MAX_TRACKED_FAILURES = 10_000;
/** The longest wait before a request that failed is delivered again. */
const MAX_RETRY_MS = 60_000;

/** A handling this instance is doing, as later deliveries and cancels of its execution find it. */
interface InFlight {
  h: Handling;
  done: Promise<Disposition>;
  /** The terminal answer this handling gave, or null when it ended without one (deferred, failed). */
  outcome: Promise<TerminalAnswer | null>;
}

/**
 * The dispatcher shell: a delivered request is authenticated and parsed here, then handled
 * (handling.ts: refuse or admit, commands to the decider, run, answer; recovery.ts: what an
 * existing execution needs). It keeps what this instance is handling, so that duplicates join the
 * handling and a cancel's wake-up reaches its runner. See docs/dispatcher.md.
 */
export class Dispatcher {
  private readonly inFlight = new Map<string, InFlight>();
  /** Per execution id: how many handlings of it failed in a row here (bounded, oldest dropped). */
  private readonly failures = new Map<string, number>();
  private readonly maxFailures: number;
  private closing = false;
  private readonly shell: Shell;
  /** Sheddings, logged as one line per interval rather than one per request (an overload is many). */
  private readonly shedLog: ShedLog;

  constructor(private readonly o: DispatcherOptions) {
    this.maxFailures = o.maxFailures ?? 6;
    this.shell = {
      o,
      slotMarginMs: o.slotMarginMs ?? 10_000,
      probeTimeoutMs: o.probeTimeoutMs ?? 1_500,
      deferMs: o.deferMs ?? 2_000,
      closing: () => this.closing,
    };
    this.shedLog = new ShedLog(o.log, o.maxQueueWaitMs ?? 0);
  }

  /** Is this instance running the execution right now (asked by other dispatchers). */
  isRunning = (executionId: string): boolean => this.inFlight.has(executionId);

  /**
   * A cancel for an execution that was not recorded when it was asked for: when this instance
   * handles it, the cancel is recorded with it (or now, when it has been recorded meanwhile).
   * Returns the handling's outcome, or null when this instance does not handle the execution.
   */
  holdCancel(userId: string, executionId: string, order: CancelOrder): Promise<TerminalAnswer | null> | null {
    const f = this.inFlight.get(executionId);
    // The execution id alone is not proof of ownership: it must be this user's.
    if (!f || f.h.ref.userId !== userId) return null;
    f.h.cancel ??= order;
    if (f.h.recorded) void this.recordCancel(f.h);
    return f.outcome;
  }

  /**
   * The wake-up after a cancel was recorded: when this instance runs the execution, it reads the
   * store and, finding ToolCancelRequested, aborts the tool (the run then records Fail CANCELLED).
   */
  wake(executionId: string): boolean {
    const f = this.inFlight.get(executionId);
    if (!f?.h.recorded) return false;
    const h = f.h;
    this.o.streams
      .load(h.ref)
      .then((execution) => {
        const state = execution.state;
        if (state.status !== 'none' && state.cancel) abortForCancel(h, state.cancel);
      })
      .catch((e: unknown) =>
        this.o.log.warn({ err: errorInfo(e), executionId }, 'cancel wake-up: the store did not answer'),
      );
    return true;
  }

  private async recordCancel(h: Handling): Promise<void> {
    try {
      await recordPendingCancel(this.shell, h, await this.o.streams.load(h.ref));
      // It may run on another instance (this handling was deferred to it).
      this.o.wakeRunner?.(h.ref.executionId);
    } catch (e) {
      this.o.log.warn({ err: errorInfo(e), executionId: h.ref.executionId }, 'cancel could not be recorded');
    }
  }

  /** The outcome of the handling of the user's execution here, or null when there is none. */
  outcomeOf(userId: string, executionId: string): Promise<TerminalAnswer | null> | null {
    const f = this.inFlight.get(executionId);
    return f && f.h.ref.userId === userId ? f.outcome : null;
  }

  get inFlightCount(): number {
    return this.inFlight.size;
  }

  /** Stops taking over work: outcome appends that keep failing give up (the request comes back). */
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
    const principal = await this.authenticate(delivery, partial, replyTo);
    if (!principal) return { ack: true };
    const userId = principal.userId;

    const requestId = partial.requestId ?? requestIdFromMsgId(delivery.header(REQUEST_HEADERS.msgId), userId);
    if (!requestId) {
      // Nothing names the request: it cannot be recorded, only answered (MALFORMED, whatever else
      // is wrong with it: VALIDATION is for what is recorded).
      const problem = parsed.ok ? null : parsed.problem;
      this.o.log.warn(
        { userId, subject: delivery.subject, problem: problem?.message },
        'request refused: no request id',
      );
      reply(this.shell, replyTo, refusal('MALFORMED', problem?.message ?? 'the request has no request id'));
      return { ack: true };
    }
    const executionId = executionIdFor(userId, requestId);
    const ref: ExecutionRef = {
      userId,
      executionId,
      requestId,
      correlationId: partial.correlationId ?? executionId,
    };
    markDispatcher(ref, 'received', startedAt);

    // A sending after a shedding (`~n`) is never shed: each shed request is queued once more and
    // keeps that place. Shed again, its agent (which gave up waiting meanwhile, its timeout
    // shorter than the bound) would send yet another copy: under a backlog, retries would keep
    // the queue above the bound for ever.
    const republished = republishOf(delivery.header(REQUEST_HEADERS.msgId)) > 0;
    const waitedMs = this.inFlight.has(executionId) || republished ? null : this.overdue(delivery, replyTo);
    if (waitedMs !== null && !(delivery.redelivered && (await this.started(ref)))) {
      const shed = await this.o.guard.markShed(userId, requestId);
      if (shed !== null) return this.shed(ref, replyTo!, waitedMs, shed);
      // Redis knows the request (a late copy: answered, or running elsewhere) or is away: it is
      // handled as any request, a repeat answered as one.
    }
    // After the awaits above: another delivery of the execution may have started here meanwhile.
    const running = this.inFlight.get(executionId);
    if (running) return this.join(running, replyTo, delivery, parsed.ok ? parsed.request : null);

    let settle!: (d: Disposition) => void;
    const done = new Promise<Disposition>((resolve) => (settle = resolve));
    let settleOutcome!: (a: TerminalAnswer | null) => void;
    const outcome = new Promise<TerminalAnswer | null>((resolve) => (settleOutcome = resolve));
    const h: Handling = {
      ref,
      principal,
      request: parsed.ok ? parsed.request : null,
      replyTos: new Set(replyTo ? [replyTo] : []),
      ownReplyTo: replyTo,
      foreignReplyTo,
      answeredTo: new Set(),
      progress: parsed.ok && parsed.request.progress === true,
      delivery,
      startedAt,
      tool: undefined,
      toolLabel: partial.tool ?? NO_TOOL,
      cancel: delivery.cancel ?? null,
      recorded: false,
      cancelled: new AbortController(),
      settleOutcome,
    };
    this.inFlight.set(executionId, { h, done, outcome });
    this.o.metrics.inFlight.inc();
    let disposition: Disposition = { ack: false, retryInMs: this.shell.deferMs };
    try {
      disposition = await handleDelivery(this.shell, h, parsed.ok ? null : parsed.problem.message);
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
   * How long a delivery waited in the intake (JetStream's timestamp to now), when that is longer
   * than `maxQueueWaitMs` and it may be shed; else null. The load is then above what the
   * instances run, and what waits is older than its agent should wait for: running it would only
   * make every later request wait as long (a FIFO behind a standing queue). A cancel, and a
   * request without a reply subject (nobody would be told: its publisher counts on it running),
   * are never shed; a delivery that came back only when nothing of it is stored (`started`).
   */
  private overdue(delivery: Delivery, replyTo: string | undefined): number | null {
    const max = this.o.maxQueueWaitMs ?? 0;
    if (max <= 0 || delivery.cancel || !replyTo || delivery.sentAt === undefined) return null;
    // Only while a queue stands behind it: the last of a backlog is not shed, and a dispatcher
    // whose clock runs ahead of the NATS servers' does not shed lone requests that did not wait.
    if (delivery.behind === 0) return null;
    const waitedMs = Math.round(Date.now() - delivery.sentAt);
    return waitedMs > max ? waitedMs : null;
  }

  /**
   * Whether anything of the execution is stored: a delivery that came back (handed back by an
   * instance that stopped, or left by one that died) may have started there, and then recovery
   * must finish it, not shedding. Redis says so too once it was admitted, but not when Redis was
   * away then. A store that does not answer counts as yes.
   */
  private async started(ref: ExecutionRef): Promise<boolean> {
    try {
      return (await this.o.streams.recorded(ref)).events.length > 0;
    } catch {
      return true;
    }
  }

  /**
   * Sheds an overdue request that Redis counted (`Guard.markShed`: nothing of it is known, so a
   * lookup of a retry JetStream drops as a repeat of this message says to publish under another
   * message id; decision 0035): nothing is recorded, and its agent is told OVERLOADED with a retry
   * hint. Costs a Redis script, an ack and a publish, against two commits and the tool for a run:
   * the standing queue drains.
   */
  private shed(ref: ExecutionRef, replyTo: string, waitedMs: number, shed: number): Disposition {
    this.o.metrics.shed.inc();
    this.shedLog.count(waitedMs);
    const message =
      `the request waited ${(waitedMs / 1000).toFixed(1)} s in the intake, longer than ` +
      `${this.o.maxQueueWaitMs} ms (more requests than the dispatchers run): it was not run and ` +
      'nothing of it was recorded; send it again with the same request id';
    // Told only once JetStream has confirmed the ack: a message whose ack was lost comes back and
    // may run, and its agent must not have been told it did not. Naming no execution, the answer
    // goes to this attempt only.
    const told = () =>
      reply(this.shell, replyTo, {
        status: 'failed',
        requestId: ref.requestId,
        executionId: null,
        correlationId: ref.correlationId,
        error: {
          code: 'OVERLOADED',
          message,
          details: { retryAfterMs: SHED_RETRY_AFTER_MS, waitedMs, shed },
        },
      });
    const afterAck = (confirmed: boolean) => {
      if (confirmed) return told();
      // Not confirmed (NATS away longer than the API timeout): the ack may have reached JetStream
      // all the same, and then nothing comes back and nothing else would tell the agent. Once
      // the message would have come back and been admitted, the agent is told, unless it was.
      this.shedLog.unconfirmed();
      setTimeout(
        () =>
          void this.o.guard.peek(ref.userId, ref.requestId).then((known) => {
            if (known.kind === 'none') told();
          }),
        (this.o.ackWaitMs ?? 30_000) + UNCONFIRMED_MARGIN_MS,
      ).unref();
    };
    return { ack: true, afterAck };
  }

  /** The principal of the delivery's token, or null when it was refused (and answered so). */
  private async authenticate(
    delivery: Delivery,
    partial: Partial<ToolRequest>,
    replyTo: string | undefined,
  ): Promise<Principal | null> {
    try {
      return await this.o.verifier.verify(delivery.header(REQUEST_HEADERS.authorization));
    } catch (e) {
      if (!(e instanceof AuthError)) throw e;
      const waiting = e.reason === 'expired' ? await this.waitingPrincipal(delivery, partial) : null;
      if (waiting) return waiting;
      this.o.metrics.refusedUnauthenticated.inc();
      this.o.log.warn(
        { subject: delivery.subject, requestId: partial.requestId, reason: e.reason },
        'request refused: unauthenticated',
      );
      const ids = {
        ...(partial.requestId ? { requestId: partial.requestId } : {}),
        ...(partial.correlationId ? { correlationId: partial.correlationId } : {}),
      };
      reply(this.shell, replyTo, refusal('UNAUTHENTICATED', e.message, ids));
      return null;
    }
  }

  /**
   * The principal of a request whose token expired while its call waited for approval: the same
   * message, delivered again, of an execution recorded waiting (or approved), with a token that
   * was valid when issued. Its message must live on until the wait ends; nothing new is admitted
   * with it (docs/approval.md). Null otherwise: the token is refused as expired.
   */
  private async waitingPrincipal(
    delivery: Delivery,
    partial: Partial<ToolRequest>,
  ): Promise<Principal | null> {
    const { verifier } = this.o;
    const token = delivery.header(REQUEST_HEADERS.authorization);
    if (!delivery.redelivered || !verifier.verifyAsIssued || !token) return null;
    let principal: Principal;
    try {
      principal = await verifier.verifyAsIssued(token);
    } catch {
      return null;
    }
    const { userId } = principal;
    const requestId = partial.requestId ?? requestIdFromMsgId(delivery.header(REQUEST_HEADERS.msgId), userId);
    if (!requestId) return null;
    const executionId = executionIdFor(userId, requestId);
    const execution = await this.o.streams.load({
      userId,
      executionId,
      requestId,
      correlationId: executionId,
    });
    const status = execution.state.status;
    return status === 'awaiting_approval' || status === 'approved' ? principal : null;
  }

  /**
   * A duplicate of a request this instance is handling: answered by the same execution, also when
   * it joins after the answer went out (the first handling still finishing its bookkeeping).
   */
  private async join(
    running: InFlight,
    replyTo: string | undefined,
    delivery: Delivery,
    request: ToolRequest | null,
  ): Promise<Disposition> {
    const first = running.h;
    // A cancel that reached this delivery names the execution, whichever request owns it.
    if (delivery.cancel) void this.holdCancel(first.ref.userId, first.ref.executionId, delivery.cancel);
    // The request id of what is recorded, reused for another: refused to this delivery only.
    if (isConflict(first.recordedAsk, request)) {
      this.o.log.info(
        { userId: first.ref.userId, requestId: first.ref.requestId, code: 'IDEMPOTENCY_CONFLICT' },
        'request refused: its request id is another request’s',
      );
      reply(this.shell, replyTo, conflictRefusal(first.ref.requestId, REUSED));
      return { ack: true };
    }
    // Not recorded yet, and the two ask different things: which one owns the id is not known
    // until one is recorded. This one comes back and is handled on its own then.
    if (!first.recordedAsk && (isConflict(askOfHandling(first), request) || (!first.request && request)))
      return { ack: false, retryInMs: this.shell.deferMs };
    if (replyTo) first.replyTos.add(replyTo);
    const [disposition, answer] = await Promise.all([running.done, running.outcome]);
    // That handling answered its own attempt only (nothing recorded): this delivery, maybe the
    // execution's own, comes back and is handled by itself.
    if (first.attemptOnly) return { ack: false, retryInMs: this.shell.deferMs };
    if (answer && replyTo && !first.answeredTo.has(replyTo)) {
      first.answeredTo.add(replyTo);
      reply(this.shell, replyTo, answer);
    }
    return disposition;
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
    const retryInMs = Math.min(this.shell.deferMs * 2 ** (count - 1), MAX_RETRY_MS);
    const context = { err: errorInfo(e), userId, requestId, executionId, tool: h.toolLabel, failures: count };
    if (count < this.maxFailures || this.closing) {
      this.o.log.error({ ...context, retryInMs }, 'request not finished; it will be delivered again');
      return { ack: false, retryInMs };
    }
    this.o.log.error(context, `request failed ${count} times; giving it up`);
    try {
      const disposition = await giveUp(this.shell, h, count);
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
   * What a lookup can learn without the store: running here (null), the answer Redis remembers, or
   * a shedding Redis counted with nothing admitted since (`{shed}`: the asker sends the request
   * again). `undefined`: only the store can say (`lookup`). Answering a shedding without reading
   * the store is safe: were the request recorded after all (a copy run while Redis was away), the
   * copy sent again is a repeat, answered from the store.
   */
  async lookupKnown(
    userId: string,
    requestId: string,
    asked: { tool?: string | undefined; ask?: string | undefined } = {},
  ): Promise<TerminalAnswer | ShedRequest | null | undefined> {
    if (this.inFlight.has(executionIdFor(userId, requestId))) return null;
    const remembered = await this.o.guard.peek(userId, requestId);
    if (remembered.kind === 'answer')
      return asksOtherThan(remembered.ask, asked) ? conflictRefusal(requestId, REUSED) : remembered.answer;
    if (remembered.kind === 'none' && remembered.shed > 0) return { shed: remembered.shed };
    return undefined;
  }

  /**
   * What became of (user, request id): the remembered answer (Redis), else the stored terminal
   * event (found through the store's index by execution id); else, when nothing of it is recorded
   * and the intake shed it (`Guard.markShed`), how many times. Null while it has none yet.
   */
  async lookup(
    userId: string,
    requestId: string,
    asked: { tool?: string | undefined; ask?: string | undefined } = {},
  ): Promise<TerminalAnswer | ShedRequest | null> {
    const executionId = executionIdFor(userId, requestId);
    if (this.inFlight.has(executionId)) return null;
    const conflict = (recorded: RecordedAsk | null | undefined) => asksOtherThan(recorded, asked);
    const remembered = await this.o.guard.peek(userId, requestId);
    if (remembered.kind === 'answer')
      return conflict(remembered.ask) ? conflictRefusal(requestId, REUSED) : remembered.answer;
    const execution = await this.o.streams.recorded({
      userId,
      executionId,
      requestId,
      correlationId: executionId,
    });
    const recorded = askOfExecution(execution);
    if (conflict(recorded)) return conflictRefusal(requestId, REUSED);
    const terminal = terminalOf(execution);
    if (!terminal) {
      // Nothing recorded, and the intake shed a message of it: the asker sends it again.
      const shed = remembered.kind === 'none' && execution.events.length === 0 ? remembered.shed : 0;
      return shed > 0 ? { shed } : null;
    }
    const answer = answerFromTerminal(terminal);
    void this.o.guard.remember(userId, requestId, answer, recorded ?? undefined);
    return answer;
  }
}

/**
 * The asker's request asks something else than the recorded one: another tool, or (where what the
 * recorded request asked is known whole, `digest`) other arguments. Refused, as the request itself is.
 */
function asksOtherThan(
  recorded: RecordedAsk | null | undefined,
  asked: { tool?: string | undefined; ask?: string | undefined },
): boolean {
  return (
    recorded !== null &&
    recorded !== undefined &&
    ((asked.tool !== undefined && asked.tool !== recorded.tool) ||
      (asked.ask !== undefined && recorded.digest !== undefined && recorded.digest !== asked.ask))
  );
}

/** How long an agent whose request was shed is told to wait before sending it again. */
const SHED_RETRY_AFTER_MS = 5_000;

/** After an unconfirmed ack of a shed request: beyond the ack wait, the time a redelivery takes to be admitted. */
const UNCONFIRMED_MARGIN_MS = 5_000;

/** At most one log line per this while requests are shed. */
const SHED_LOG_INTERVAL_MS = 10_000;

/** Counts sheddings and logs them at most once per `SHED_LOG_INTERVAL_MS`: how many, the longest wait. */
class ShedLog {
  private n = 0;
  private notConfirmed = 0;
  private longestMs = 0;
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly log: Logger,
    private readonly maxWaitMs: number,
  ) {}

  count(waitedMs: number): void {
    this.n++;
    this.longestMs = Math.max(this.longestMs, waitedMs);
    if (!this.timer) this.flush();
  }

  /** A shedding whose ack JetStream did not confirm (logged with the next line). */
  unconfirmed(): void {
    this.notConfirmed++;
  }

  /** Logs what was counted, then waits an interval: what comes meanwhile is logged at its end. */
  private flush(): void {
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.n > 0 || this.notConfirmed > 0) this.flush();
    }, SHED_LOG_INTERVAL_MS);
    this.timer.unref();
    this.log.warn(
      {
        shed: this.n,
        longestWaitMs: this.longestMs,
        maxWaitMs: this.maxWaitMs,
        ...(this.notConfirmed > 0 ? { ackNotConfirmed: this.notConfirmed } : {}),
      },
      'overloaded: requests that waited longer than INTAKE_MAX_WAIT_MS in the intake were answered OVERLOADED unrun',
    );
    this.n = 0;
    this.notConfirmed = 0;
    this.longestMs = 0;
  }
}
