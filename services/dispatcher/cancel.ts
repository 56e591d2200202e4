import { headers, type Msg } from '@nats-io/transport-node';
import { z } from 'zod';
import {
  CancelRequest,
  DISPATCHERS_QUEUE,
  executionIdFor,
  isUserId,
  REQUEST_HEADERS,
  subjects,
  type CancelResult,
  type Principal,
} from '../../contracts/index.ts';
import { AuthError, type TokenVerifier } from '../../lib/auth.ts';
import type { Logger } from '../../lib/log.ts';
import type { NatsConnection } from '../../lib/nats.ts';
import { answerFromTerminal, type TerminalAnswer } from './answers.ts';
import {
  cancelledError,
  errorInfo,
  executionIdOfDelivery,
  type CancelOrder,
  type Dispatcher,
} from './dispatcher.ts';
import type { Guard } from './guard.ts';
import type { Intake } from './intake.ts';
import type { DispatcherMetrics } from './metrics.ts';
import {
  lastExecutingOf,
  terminalOf,
  type Execution,
  type ExecutionRef,
  type UserStreams,
} from './streams.ts';

/**
 * Cancellation across dispatcher instances. A cancel request (NATS `toolbus.cancel.<userId>`,
 * queue group; or HTTP `POST /executions/:id/cancel`) reaches one instance, the coordinator:
 *
 * 1. held here (waiting in this intake, or in flight in this dispatcher): cancelled here;
 * 2. otherwise the record decides: ended: answered with what happened; running on dispatcher R:
 *    R is asked on `toolbus.dispatchers.<R>.cancel` and cancels it; not recorded: every instance
 *    is asked on `toolbus.dispatchers.cancel` (it may wait in another intake); recorded as running
 *    but nobody runs it (its dispatcher died, the request has not come back yet): the coordinator
 *    appends ToolFailed CANCELLED itself, with the exact expected revision, so it can never be a
 *    second terminal event;
 * 3. the answer is built from the terminal event (waited for, up to `waitMs`).
 *
 * Peers are asked with the token of whoever asked, and check it again. See
 * docs/progress-cancellation-fairness.md.
 */

export const CANCEL_PEERS = 'toolbus.dispatchers.cancel';
export const cancelPeerSubject = (dispatcherId: string): string =>
  `toolbus.dispatchers.${dispatcherId}.cancel`;
const RUNNER_ID = /^[A-Za-z0-9_-]{1,100}$/;
const CANCEL_PREFIX = 'toolbus.cancel.';

const PeerCancel = z.strictObject({
  userId: z.string().refine(isUserId),
  executionId: z.uuid(),
  via: z.enum(['nats', 'http']),
});
type PeerCancel = z.infer<typeof PeerCancel>;
type PeerReply = { held: boolean } | { refused: string };

export interface CancelTarget {
  userId: string;
  executionId: string;
  /** When the cancel named a request id. */
  requestId?: string;
  order: CancelOrder;
  /** The Authorization header of who asked, passed on to the peer that runs the execution. */
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
  /** How long the runner has to say whether it holds the execution (default 2 s). */
  peerTimeoutMs?: number;
  /** How long to wait for any instance to claim an execution not recorded yet (default 1 s). */
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

export class CancelCoordinator {
  private readonly waitMs: number;
  private readonly peerTimeoutMs: number;
  private readonly broadcastWaitMs: number;

  constructor(private readonly o: CancelCoordinatorOptions) {
    this.waitMs = o.waitMs ?? 15_000;
    this.peerTimeoutMs = o.peerTimeoutMs ?? 2_000;
    this.broadcastWaitMs = o.broadcastWaitMs ?? 1_000;
  }

  /**
   * Cancels the execution if this instance holds it. Returns its outcome (null when it ended
   * without an answer here), 'queued' when it was waiting in the intake (its outcome comes from
   * the record), or null when it is not held here.
   */
  holdHere(
    userId: string,
    executionId: string,
    order: CancelOrder,
  ): Promise<TerminalAnswer | null> | 'queued' | null {
    const held = this.o.dispatcher.cancelHeld(userId, executionId, order);
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
    const { userId, executionId, order } = target;
    const deadline = Date.now() + this.waitMs;
    const ref: ExecutionRef = { userId, executionId, requestId: '-', correlationId: executionId };
    let delivered = false;
    let askedEveryone = false;
    for (let round = 0; round < 10 && Date.now() < deadline; round++) {
      // 1. Held here.
      const here = this.holdHere(userId, executionId, order);
      if (here) {
        delivered = true;
        const answer =
          here === 'queued' ? await this.awaitTerminal(ref, deadline) : await untilDeadline(here, deadline);
        if (answer) return this.ended(target, answer, true);
        // It ended here without an answer (it runs elsewhere, or this instance is stopping).
        continue;
      }
      // 2. The record decides.
      const execution = await this.o.streams.load(ref);
      const terminal = terminalOf(execution);
      if (terminal) return this.ended(target, answerFromTerminal(terminal), delivered);
      if (execution.state.status === 'none') {
        if (delivered) {
          const answer = await this.awaitTerminal(ref, deadline);
          if (answer) return this.ended(target, answer, true);
          break;
        }
        if (askedEveryone) return this.unknown(target);
        askedEveryone = true;
        // Not recorded: it may wait in another instance's intake, or be starting there.
        if ((await this.askPeer(CANCEL_PEERS, target, this.broadcastWaitMs)) === 'held') delivered = true;
        continue;
      }
      const runner = lastExecutingOf(execution)?.data.runner;
      if (runner !== undefined && runner !== this.o.dispatcherId && RUNNER_ID.test(runner)) {
        const reply = await this.askPeer(cancelPeerSubject(runner), target, this.peerTimeoutMs);
        if (reply === 'held') {
          delivered = true;
          const answer = await this.awaitTerminal(ref, deadline);
          if (answer) return this.ended(target, answer, true);
          break;
        }
        if (reply === 'refused') {
          return this.result(target, null, false, {
            status: 'executing',
            message: `its runner ${runner} refused the cancel`,
            error: { code: 'FORBIDDEN', message: `its runner ${runner} refused the cancel` },
          });
        }
      }
      // 3. Recorded as running, but nobody runs it: end it here.
      const stuck = await this.cancelStuck(execution, order);
      if (stuck) return this.ended(target, stuck, true);
      // The record moved meanwhile (another instance took it over or ended it): look again.
    }
    if (!delivered) return this.unknown(target);
    return this.result(target, null, false, {
      status: 'executing',
      message: `the cancel was delivered but the execution has not ended within ${this.waitMs} ms; ask again`,
    });
  }

  /** Waits for the execution's terminal answer: from this instance when it handles it, else from the record. */
  private async awaitTerminal(ref: ExecutionRef, deadline: number): Promise<TerminalAnswer | null> {
    for (let wait = 20; ; wait = Math.min(wait * 2, 500)) {
      const local = this.o.dispatcher.outcomeOf(ref.userId, ref.executionId);
      if (local) {
        const answer = await untilDeadline(local, deadline);
        if (answer) return answer;
      }
      const terminal = terminalOf(await this.o.streams.load(ref));
      if (terminal) return answerFromTerminal(terminal);
      if (Date.now() >= deadline) return null;
      await sleep(Math.min(wait, deadline - Date.now()));
    }
  }

  /** Appends ToolFailed CANCELLED to an execution nobody runs; null when the record moved first. */
  private async cancelStuck(execution: Execution, order: CancelOrder): Promise<TerminalAnswer | null> {
    const requested = execution.events.find((e) => e.type === 'ToolRequested');
    if (!requested) return null;
    execution.ref = {
      ...execution.ref,
      requestId: requested.metadata.requestId,
      correlationId: requested.metadata.correlationId,
    };
    const state = execution.state;
    const attempt = state.status === 'executing' ? state.attempt : 0;
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
    const last = appended.at(-1);
    if (!last) return null;
    const answer = answerFromTerminal(last);
    void this.o.guard.remember(execution.ref.userId, execution.ref.requestId, answer);
    this.o.log.warn(
      { userId: execution.ref.userId, executionId: execution.ref.executionId, by: order.by },
      'cancelled an execution nobody was running',
    );
    return answer;
  }

  private async askPeer(subject: string, target: CancelTarget, timeoutMs: number): Promise<PeerAnswer> {
    return askPeer(this.o.nc, subject, target, timeoutMs);
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

type PeerAnswer = 'held' | 'not_held' | 'gone' | 'refused';

async function askPeer(
  nc: NatsConnection,
  subject: string,
  target: CancelTarget,
  timeoutMs: number,
): Promise<PeerAnswer> {
  const h = headers();
  if (target.token) h.set(REQUEST_HEADERS.authorization, target.token);
  const body: PeerCancel = { userId: target.userId, executionId: target.executionId, via: target.order.via };
  try {
    const reply = await nc.request(subject, JSON.stringify(body), { timeout: timeoutMs, headers: h });
    const r = reply.json<Partial<{ held: unknown; refused: unknown }>>();
    if (typeof r.refused === 'string') return 'refused';
    return r.held === true ? 'held' : 'not_held';
  } catch {
    // no responders (the runner is gone), or no answer in time
    return 'gone';
  }
}

/** Asks the dispatcher `runner` to cancel an execution it runs; nothing is waited for. */
export function forwardCancel(
  nc: NatsConnection,
  log: Logger,
  runner: string,
  ref: ExecutionRef,
  order: CancelOrder,
  token: string | undefined,
): void {
  if (!RUNNER_ID.test(runner)) return;
  void askPeer(nc, cancelPeerSubject(runner), { ...ref, order, token }, 5_000).then((a) => {
    if (a !== 'held')
      log.warn({ runner, executionId: ref.executionId, answer: a }, 'forwarded cancel was not taken');
  });
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

const mayCancel = (p: Principal, userId: string): boolean => p.userId === userId || p.roles.includes('admin');

/**
 * Serves the dispatcher side of cancellation on NATS: `toolbus.cancel.<userId>` for agents (queue
 * group: one instance coordinates each request), and the peer subjects other instances use to
 * reach the one that holds an execution (`toolbus.dispatchers.<id>.cancel` always answers;
 * `toolbus.dispatchers.cancel`, sent to all, is answered only by an instance that holds it).
 */
export function serveCancels(
  nc: NatsConnection,
  o: { dispatcherId: string; verifier: TokenVerifier; coordinator: CancelCoordinator; log: Logger },
): { stop(): Promise<void> } {
  const respond = (msg: Msg, body: unknown) => {
    try {
      msg.respond(JSON.stringify(body));
    } catch {
      // the asker is gone
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
    const token = msg.headers?.get(REQUEST_HEADERS.authorization) || undefined;
    const principal = await principalOf(o.verifier, token);
    if (principal instanceof AuthError) {
      return refuse(msg, 'UNAUTHENTICATED', `token ${principal.reason}: ${principal.message}`);
    }
    const userId = msg.subject.slice(CANCEL_PREFIX.length);
    if (!isUserId(userId)) return refuse(msg, 'MALFORMED', 'the subject names no user');
    let body: unknown;
    try {
      body = msg.json();
    } catch {
      body = undefined;
    }
    const parsed = CancelRequest.safeParse(body);
    if (!parsed.success) {
      return refuse(msg, 'MALFORMED', 'expected {"executionId": "<uuid>"} or {"requestId": "<request id>"}');
    }
    const requestId = 'requestId' in parsed.data ? parsed.data.requestId : undefined;
    const executionId =
      'executionId' in parsed.data ? parsed.data.executionId : executionIdFor(userId, parsed.data.requestId);
    if (!mayCancel(principal, userId)) {
      return refuse(
        msg,
        'FORBIDDEN',
        `the token is for user ${principal.userId}; only ${userId} or an admin may cancel ${userId}'s executions`,
        { executionId, requestId: requestId ?? null },
      );
    }
    respond(
      msg,
      await o.coordinator.cancel({
        userId,
        executionId,
        ...(requestId ? { requestId } : {}),
        order: { by: principal.userId, via: 'nats' },
        token,
      }),
    );
  };

  const onPeer = async (msg: Msg, all: boolean) => {
    let body: PeerCancel;
    try {
      const parsed = PeerCancel.safeParse(msg.json());
      if (!parsed.success)
        return all ? undefined : respond(msg, { refused: 'malformed' } satisfies PeerReply);
      body = parsed.data;
    } catch {
      return all ? undefined : respond(msg, { refused: 'malformed' } satisfies PeerReply);
    }
    const principal = await principalOf(
      o.verifier,
      msg.headers?.get(REQUEST_HEADERS.authorization) || undefined,
    );
    if (principal instanceof AuthError || !mayCancel(principal, body.userId)) {
      if (!all)
        respond(msg, {
          refused: principal instanceof AuthError ? principal.reason : 'forbidden',
        } satisfies PeerReply);
      return;
    }
    const held = o.coordinator.holdHere(body.userId, body.executionId, {
      by: principal.userId,
      via: body.via,
    });
    if (held !== null || !all) respond(msg, { held: held !== null } satisfies PeerReply);
  };

  const subscribe = (subject: string, handle: (msg: Msg) => Promise<void>, queue?: string) =>
    nc.subscribe(subject, {
      ...(queue ? { queue } : {}),
      callback: (err, msg) => {
        if (err) return;
        handle(msg).catch((e: unknown) => {
          o.log.warn({ err: errorInfo(e), subject: msg.subject }, 'cancel handling failed');
          if (subject === subjects.cancelAll)
            refuse(msg, 'UNAVAILABLE', 'the cancel could not be handled; ask again');
        });
      },
    });
  const subs = [
    subscribe(subjects.cancelAll, onCancel, DISPATCHERS_QUEUE),
    subscribe(cancelPeerSubject(o.dispatcherId), (m) => onPeer(m, false)),
    subscribe(CANCEL_PEERS, (m) => onPeer(m, true)),
  ];
  return {
    async stop() {
      if (!nc.isClosed()) await Promise.all(subs.map((s) => s.drain().catch(() => undefined)));
    },
  };
}
