import { headers, type Msg } from '@nats-io/transport-node';
import { z } from 'zod';
import {
  CancelReason,
  CancelRequest,
  DISPATCHERS_QUEUE,
  executionIdFor,
  isInboxOf,
  isUserId,
  mayCancelFor,
  REQUEST_HEADERS,
  subjects,
  type CancelResult,
  type Principal,
} from '../../contracts/index.ts';
import { AuthError, type TokenVerifier } from '../../lib/auth.ts';
import type { Logger } from '../../lib/log.ts';
import type { NatsConnection } from '../../lib/nats.ts';
import { askOfExecution } from './ask.ts';
import { answerFromTerminal, type TerminalAnswer } from './answers.ts';
import { handleExecution } from './commands.ts';
import { errorInfo, executionIdOfDelivery, type CancelOrder } from './delivery.ts';
import type { Dispatcher } from './dispatcher.ts';
import type { Guard } from './guard.ts';
import type { Intake } from './intake.ts';
import { probeRunner } from './liveness.ts';
import type { DispatcherMetrics } from './metrics.ts';
import { requestCancel } from './shell.ts';
import { terminalOf, type Execution, type ExecutionRef, type UserStreams } from './streams.ts';

/**
 * Cancellation is a recorded fact. A cancel request (NATS `toolbus.cancel.<userId>`, queue group;
 * or HTTP `POST /executions/:id/cancel`) reaches one instance, which:
 *
 * 1. cancels it where it is held unrecorded: waiting in this intake, or handled here before its
 *    record; else, when the store has nothing of it, asks the other instances once
 *    (`toolbus.dispatchers.cancel.unrecorded`): the one holding it records it cancelled;
 * 2. otherwise decides `RequestCancel` through the command handler: an execution that has not
 *    started ends CANCELLED in that append (ToolCancelRequested + ToolFailed); a running one gets
 *    ToolCancelRequested, and its runner is woken (`toolbus.dispatchers.cancel`, the execution id
 *    only): it reads the store, aborts the tool and records Fail CANCELLED. A runner that is gone
 *    (no answer to the liveness probe) is recovered here: `Recover` with the cancel recorded ends
 *    it CANCELLED;
 * 3. answers with the terminal answer when it comes within `waitMs`, else `executing` (the agent
 *    still gets its terminal answer on its request's inbox).
 *
 * See docs/progress-cancellation-fairness.md and docs/decisions/0009-cancellation.md.
 */

/** The wake-up after a cancel was recorded: the body is the execution id, nothing else. */
export const CANCEL_WAKE = 'toolbus.dispatchers.cancel';
/** Asks every instance to cancel an execution not recorded yet that it may hold (request/reply). */
export const CANCEL_UNRECORDED = 'toolbus.dispatchers.cancel.unrecorded';
/** `toolbus.cancel.<user>.<asking identity>` */
const CANCEL_SUBJECT = /^toolbus\.cancel\.([A-Za-z0-9_-]{1,64})\.([A-Za-z0-9_-]{1,64})$/;

const Unrecorded = z.strictObject({
  userId: z.string().refine(isUserId),
  executionId: z.uuid(),
  via: z.enum(['nats', 'http']),
  reason: CancelReason.optional(),
});

export interface CancelTarget {
  userId: string;
  executionId: string;
  /** When the cancel named a request id. */
  requestId?: string;
  order: CancelOrder;
  /** The Authorization header of who asked: the instance holding an unrecorded request checks it again. */
  token: string | undefined;
}

export interface CancelCoordinatorOptions {
  dispatcherId: string;
  nc: NatsConnection;
  dispatcher: Dispatcher;
  intake: () => Intake | undefined;
  streams: UserStreams;
  guard: Guard;
  log: Logger;
  metrics: DispatcherMetrics;
  /** How long to wait for a cancelled execution to end before answering `executing` (default 15 s). */
  waitMs?: number;
  /** Told when a cancel ended an execution that waited for approval (its wait leaves the list). */
  onWaitEnded?: (executionId: string) => void;
  /** How long a runner has to say whether it still runs the execution (default 1.5 s). */
  probeTimeoutMs?: number;
  /** How long to wait for an instance to hold an execution not recorded yet (default 1 s). */
  broadcastWaitMs?: number;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, Math.max(0, ms)));

async function untilDeadline<T>(p: Promise<T>, deadline: number): Promise<T | null> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<null>((r) => (timer = setTimeout(() => r(null), Math.max(0, deadline - Date.now())))),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** Publishes the wake-up for an execution whose cancel was recorded. */
export function wakeRunner(nc: NatsConnection, log: Logger, executionId: string): void {
  try {
    nc.publish(CANCEL_WAKE, executionId);
  } catch (e) {
    // The cancel is recorded: a later cancel request wakes it again, a recovery reads it.
    log.warn({ err: errorInfo(e), executionId }, 'cancel wake-up publish failed');
  }
}

export class CancelCoordinator {
  private readonly waitMs: number;
  private readonly probeTimeoutMs: number;
  private readonly broadcastWaitMs: number;

  constructor(private readonly o: CancelCoordinatorOptions) {
    this.waitMs = o.waitMs ?? 15_000;
    this.probeTimeoutMs = o.probeTimeoutMs ?? 1_500;
    this.broadcastWaitMs = o.broadcastWaitMs ?? 1_000;
  }

  /**
   * Cancels the execution if this instance holds it: waiting in the intake ('queued'), or handled
   * here (its outcome). Null when it is not held here.
   */
  holdHere(
    userId: string,
    executionId: string,
    order: CancelOrder,
  ): Promise<TerminalAnswer | null> | 'queued' | null {
    const held = this.o.dispatcher.holdCancel(userId, executionId, order);
    if (held) return held;
    const intake = this.o.intake();
    if (intake?.cancelQueued(userId, (d) => executionIdOfDelivery(d, userId) === executionId, order)) {
      return 'queued';
    }
    return null;
  }

  async cancel(target: CancelTarget): Promise<CancelResult> {
    const result = await this.resolve(target).catch((e: unknown) => {
      this.o.log.warn(
        { err: errorInfo(e), userId: target.userId, executionId: target.executionId },
        'cancel could not be completed',
      );
      return this.result(target, null, false, {
        status: 'unknown',
        message: 'the cancel could not be completed (the event store did not answer); ask again',
        error: { code: 'UNAVAILABLE', message: (e as Error).message || 'unavailable' },
      });
    });
    this.o.metrics.cancellations.inc({
      result: result.cancelled ? 'cancelled' : result.error ? result.error.code.toLowerCase() : result.status,
    });
    this.o.log.info(
      {
        userId: target.userId,
        executionId: target.executionId,
        by: target.order.by,
        via: target.order.via,
        cancelled: result.cancelled,
        status: result.status,
      },
      'cancel answered',
    );
    return result;
  }

  private async resolve(target: CancelTarget): Promise<CancelResult> {
    const { userId, executionId } = target;
    // Who asks for another user's execution may (routes and serveCancels checked it): an admin or an operator.
    const order: CancelOrder = { ...target.order, admin: target.order.admin ?? target.order.by !== userId };
    const deadline = Date.now() + this.waitMs;
    const ref: ExecutionRef = { userId, executionId, requestId: '-', correlationId: executionId };
    const here = this.holdHere(userId, executionId, order);
    if (here) return this.awaitEnd(target, ref, deadline);

    const execution = await this.o.streams.load(ref);
    if (execution.state.status === 'none') {
      // Not recorded: it may wait in another instance's intake, or be starting there.
      if (!(await this.askHolders(target))) return this.unknown(target);
      return this.awaitEnd(target, ref, deadline);
    }
    const requested = execution.events.find((e) => e.type === 'ToolRequested');
    if (requested) execution.ref = { ...execution.ref, requestId: requested.metadata.requestId };
    const before = terminalOf(execution);
    if (before) return this.ended(target, answerFromTerminal(before), false);

    const waited = execution.state.status === 'awaiting_approval';
    await handleExecution(this.o.streams, execution, requestCancel(order, new Date()));
    const after = terminalOf(execution);
    if (after && waited) this.o.onWaitEnded?.(executionId);
    if (after) return this.ended(target, this.remember(execution, answerFromTerminal(after)), true);
    // Running, with the cancel recorded: its runner is woken, or recovered when it is gone.
    wakeRunner(this.o.nc, this.o.log, executionId);
    const recovered = await this.recoverIfRunnerGone(execution);
    if (recovered) return this.ended(target, recovered, true);
    return this.awaitEnd(target, execution.ref, deadline);
  }

  /**
   * When the runner of the cancelled execution is gone, the decider ends it (`Recover` with the
   * cancel recorded: CANCELLED). Null when the runner lives, or the record moved meanwhile.
   */
  private async recoverIfRunnerGone(execution: Execution): Promise<TerminalAnswer | null> {
    const state = execution.state;
    if (state.status !== 'executing') return null;
    const alive =
      state.runner === this.o.dispatcherId
        ? this.o.dispatcher.isRunning(execution.ref.executionId)
        : (await probeRunner(this.o.nc, state.runner, execution.ref.executionId, this.probeTimeoutMs)) ===
          'running';
    if (alive) return null;
    const { appended } = await handleExecution(
      this.o.streams,
      execution,
      {
        type: 'Recover',
        data: {
          liveness: 'dead',
          idempotent: false,
          maxAttempts: state.attempts,
          runner: this.o.dispatcherId,
          timeoutMs: state.timeoutMs,
          now: new Date().toISOString(),
        },
      },
      { attempt: state.attempt },
    );
    const last = appended.at(-1);
    if (!last) return null;
    this.o.log.warn(
      { userId: execution.ref.userId, executionId: execution.ref.executionId, runner: state.runner },
      'cancelled an execution whose runner is gone',
    );
    return this.remember(execution, answerFromTerminal(last));
  }

  private remember(execution: Execution, answer: TerminalAnswer): TerminalAnswer {
    void this.o.guard.remember(
      execution.ref.userId,
      execution.ref.requestId,
      answer,
      askOfExecution(execution) ?? undefined,
    );
    return answer;
  }

  /** Asks the other instances, once, to cancel the unrecorded execution if they hold it. */
  private async askHolders(target: CancelTarget): Promise<boolean> {
    const h = headers();
    if (target.token) h.set(REQUEST_HEADERS.authorization, target.token);
    const body: z.infer<typeof Unrecorded> = {
      userId: target.userId,
      executionId: target.executionId,
      via: target.order.via,
      ...(target.order.reason ? { reason: target.order.reason } : {}),
    };
    try {
      const reply = await this.o.nc.request(CANCEL_UNRECORDED, JSON.stringify(body), {
        timeout: this.broadcastWaitMs,
        headers: h,
      });
      return reply.json<{ held?: unknown }>().held === true;
    } catch {
      // no responders, or nobody holds it: nothing of it exists yet
      return false;
    }
  }

  /**
   * Waits for the execution's terminal answer until the deadline: from this instance's handling
   * when it has it, else from the record (read by the index, with a growing pause).
   */
  private async awaitEnd(target: CancelTarget, ref: ExecutionRef, deadline: number): Promise<CancelResult> {
    for (let wait = 20; Date.now() < deadline; wait = Math.min(wait * 2, 500)) {
      const local = this.o.dispatcher.outcomeOf(ref.userId, ref.executionId);
      const answer = local ? await untilDeadline(local, deadline) : null;
      if (answer) return this.ended(target, answer, true);
      const terminal = terminalOf(await this.o.streams.load(ref));
      if (terminal) return this.ended(target, answerFromTerminal(terminal), true);
      await sleep(Math.min(wait, deadline - Date.now()));
    }
    return this.result(target, null, false, {
      status: 'executing',
      message: `the cancel is recorded but the execution has not ended within ${this.waitMs} ms; its agent gets the answer`,
    });
  }

  private ended(target: CancelTarget, answer: TerminalAnswer, delivered: boolean): CancelResult {
    const cancelled = delivered && answer.status === 'failed' && answer.error.code === 'CANCELLED';
    const message = cancelled
      ? 'cancelled'
      : answer.status === 'completed'
        ? delivered
          ? 'it completed before the cancel took effect; nothing was changed'
          : 'it had already completed; nothing was changed'
        : answer.error.code === 'CANCELLED'
          ? 'it had already been cancelled; nothing was changed'
          : `it had already failed (${answer.error.code}); nothing was changed`;
    return this.result(target, answer, cancelled, { status: answer.status, message });
  }

  private unknown(target: CancelTarget): CancelResult {
    return this.result(target, null, false, {
      status: 'unknown',
      message: `user ${target.userId} has no execution ${target.executionId}${target.requestId ? ` (request ${target.requestId})` : ''} that started; nothing was changed`,
    });
  }

  private result(
    target: CancelTarget,
    answer: TerminalAnswer | null,
    cancelled: boolean,
    rest: Pick<CancelResult, 'status' | 'message'> & { error?: CancelResult['error'] },
  ): CancelResult {
    return {
      executionId: target.executionId,
      requestId: answer?.requestId ?? target.requestId ?? null,
      cancelled,
      answer,
      ...rest,
    };
  }
}

async function principalOf(
  verifier: TokenVerifier,
  token: string | undefined,
): Promise<Principal | AuthError> {
  try {
    return await verifier.verify(token);
  } catch (e) {
    if (e instanceof AuthError) return e;
    throw e;
  }
}

const orderOf = (
  p: Principal,
  userId: string,
  via: CancelOrder['via'],
  reason: string | undefined,
): CancelOrder => ({
  by: p.userId,
  via,
  admin: p.userId !== userId,
  ...(reason ? { reason } : {}),
});

/**
 * Serves the dispatcher side of cancellation on NATS: `toolbus.cancel.<userId>` for agents (queue
 * group: one instance handles each request); the wake-up `toolbus.dispatchers.cancel` (every
 * instance: the one running the execution reads the store); and
 * `toolbus.dispatchers.cancel.unrecorded` (answered only by an instance holding the request).
 */
export function serveCancels(
  nc: NatsConnection,
  o: { verifier: TokenVerifier; coordinator: CancelCoordinator; dispatcher: Dispatcher; log: Logger },
): { stop(): Promise<void> } {
  const respond = (msg: Msg, body: unknown) => {
    try {
      msg.respond(JSON.stringify(body));
    } catch (e) {
      o.log.debug({ err: errorInfo(e), subject: msg.subject }, 'cancel reply not sent (the asker is gone)');
    }
  };
  const refuse = (
    msg: Msg,
    code: NonNullable<CancelResult['error']>['code'],
    message: string,
    ids: { executionId?: string | null; requestId?: string | null } = {},
  ) => {
    const result: CancelResult = {
      executionId: ids.executionId ?? null,
      requestId: ids.requestId ?? null,
      cancelled: false,
      status: 'refused',
      answer: null,
      message,
      error: { code, message },
    };
    respond(msg, result);
  };

  const onCancel = async (msg: Msg) => {
    // The reply goes only to an inbox of the identity the subject names (the server lets only that
    // identity publish there): no one can make a dispatcher answer into another's inbox.
    const asker = CANCEL_SUBJECT.exec(msg.subject);
    if (!asker || !msg.reply || !isInboxOf(asker[2]!, msg.reply)) {
      o.log.warn(
        { subject: msg.subject, reply: msg.reply },
        "cancel with a reply subject outside its asker's inbox: ignored",
      );
      return;
    }
    const token = msg.headers?.get(REQUEST_HEADERS.authorization) || undefined;
    const principal = await principalOf(o.verifier, token);
    if (principal instanceof AuthError) {
      return refuse(msg, 'UNAUTHENTICATED', principal.message);
    }
    const userId = asker[1]!;
    const parsed = CancelRequest.safeParse(jsonOf(msg));
    if (!parsed.success) {
      return refuse(
        msg,
        'MALFORMED',
        'expected {"executionId": "<uuid>"} or {"requestId": "<request id>"}, with an optional "reason" (1 to 500 characters)',
      );
    }
    const requestId = 'requestId' in parsed.data ? parsed.data.requestId : undefined;
    const executionId =
      'executionId' in parsed.data
        ? parsed.data.executionId.toLowerCase() // an id in upper case names the same execution
        : executionIdFor(userId, parsed.data.requestId);
    if (!mayCancelFor(principal, userId)) {
      return refuse(
        msg,
        'FORBIDDEN',
        `the token is for user ${principal.userId}; only ${userId}, an admin or an operator may cancel ${userId}'s executions`,
        { executionId, requestId: requestId ?? null },
      );
    }
    respond(
      msg,
      await o.coordinator.cancel({
        userId,
        executionId,
        ...(requestId ? { requestId } : {}),
        order: orderOf(principal, userId, 'nats', parsed.data.reason),
        token,
      }),
    );
  };

  const onUnrecorded = async (msg: Msg) => {
    const body = Unrecorded.safeParse(jsonOf(msg));
    if (!body.success) return;
    const principal = await principalOf(
      o.verifier,
      msg.headers?.get(REQUEST_HEADERS.authorization) || undefined,
    );
    // Checked again here: the asker's token is the authority, not the bus.
    if (principal instanceof AuthError || !mayCancelFor(principal, body.data.userId)) return;
    const { userId, executionId, via, reason } = body.data;
    if (o.coordinator.holdHere(userId, executionId, orderOf(principal, userId, via, reason)))
      respond(msg, { held: true });
  };

  const subscribe = (subject: string, handle: (msg: Msg) => Promise<void> | void, queue?: string) =>
    nc.subscribe(subject, {
      ...(queue ? { queue } : {}),
      callback: (err, msg) => {
        if (err) return;
        Promise.resolve()
          .then(() => handle(msg))
          .catch((e: unknown) => {
            o.log.warn({ err: errorInfo(e), subject: msg.subject }, 'cancel handling failed');
            if (subject === subjects.cancelAll)
              refuse(msg, 'UNAVAILABLE', 'the cancel could not be handled; ask again');
          });
      },
    });
  const subs = [
    subscribe(subjects.cancelAll, onCancel, DISPATCHERS_QUEUE),
    subscribe(CANCEL_WAKE, (m) => void o.dispatcher.wake(m.string())),
    subscribe(CANCEL_UNRECORDED, onUnrecorded),
  ];
  return {
    async stop() {
      if (!nc.isClosed()) await Promise.all(subs.map((s) => s.drain().catch(() => undefined)));
    },
  };
}

function jsonOf(msg: Msg): unknown {
  try {
    return msg.json();
  } catch {
    // not JSON: the schema check refuses it
    return undefined;
  }
}
