import type { CancelInfo, ExecutionCommand, Principal, ToolRequest } from '../../contracts/index.ts';
import type { TokenVerifier } from '../../lib/auth.ts';
import type { Logger } from '../../lib/log.ts';
import type { NatsConnection } from '../../lib/nats.ts';
import type { RunnableTool, ToolRegistry } from '../../lib/tools/index.ts';
import type { RecordedAsk } from './ask.ts';
import type { TerminalAnswer } from './answers.ts';
import type { ApprovalSettings } from './approval.ts';
import type { CancelOrder, Delivery } from './delivery.ts';
import type { Guard } from './guard.ts';
import type { DispatcherMetrics } from './metrics.ts';
import type { ExecutionRef, UserStreams } from './streams.ts';

export interface DispatcherOptions {
  dispatcherId: string;
  nc: NatsConnection;
  registry: ToolRegistry;
  verifier: TokenVerifier;
  guard: Guard;
  streams: UserStreams;
  metrics: DispatcherMetrics;
  log: Logger;
  /** Which calls wait for an approver, and where the waiting ones are listed (approval.ts). */
  approvals: ApprovalSettings;
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
   * A first delivery that waited in the intake longer than this (JetStream's timestamp to now) is
   * shed: answered OVERLOADED unrun (see `Dispatcher.handle`). 0 or absent: never.
   */
  maxQueueWaitMs?: number;
  /** JetStream's ack wait (ACK_WAIT_MS): when an unacknowledged message would have come back. */
  ackWaitMs?: number;
  /** Wakes whichever dispatcher runs an execution after a cancel was recorded (cancel.ts). */
  wakeRunner?: (executionId: string) => void;
}

/** What every module of the shell shares: the options with their defaults, and whether it stops. */
export interface Shell {
  o: DispatcherOptions;
  slotMarginMs: number;
  probeTimeoutMs: number;
  deferMs: number;
  /** True once the dispatcher stops taking over work. */
  closing(): boolean;
}

/** The tool name recorded when a request is too broken to name one. */
export const NO_TOOL = '(invalid)';

/** The signal's reason when a running execution is cancelled: the recorded cancel. */
export class ToolCancelledError extends Error {
  constructor(readonly cancel: CancelInfo) {
    super(`cancelled by ${cancel.by.userId}`);
    this.name = 'ToolCancelledError';
  }
}

export class ShuttingDownError extends Error {
  constructor() {
    super('the dispatcher is shutting down');
    this.name = 'ShuttingDownError';
  }
}

/** The request being handled, once its user is known. */
export interface Handling {
  ref: ExecutionRef;
  principal: Principal;
  request: ToolRequest | null;
  replyTos: Set<string>;
  /** This delivery's own reply subject (`replyTos` gains those of duplicates that join it). */
  ownReplyTo: string | undefined;
  /**
   * Answered to this delivery only, with nothing recorded (a request id reused with other
   * arguments after its approval): a duplicate that joined it is handled again on its own.
   */
  attemptOnly?: boolean;
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
  /**
   * A cancel that reached this handling before anything of it was recorded (it waited in the
   * intake, or a peer found it here): it is recorded with the request (`RequestCancel`).
   */
  cancel: CancelOrder | null;
  /** What the execution's ToolRequested asked, once recorded or found (remembered with its answer). */
  recordedAsk?: RecordedAsk | undefined;
  /** Whether this handling has recorded (or found) the execution: cancels are then read from the store. */
  recorded: boolean;
  /** Fires when the store says the execution is to be cancelled: the running tool is aborted. */
  cancelled: AbortController;
  /** Resolves the in-flight outcome with the terminal answer. */
  settleOutcome: (answer: TerminalAnswer | null) => void;
}

/** The command that records a cancel asked for in memory (a cancel order). */
export const requestCancel = (order: CancelOrder, now: Date): ExecutionCommand => ({
  type: 'RequestCancel',
  data: {
    by: { userId: order.by, admin: order.admin ?? false },
    reason: order.reason ?? `asked through ${order.via}`,
    now: now.toISOString(),
  },
});

/** Aborts the running tool of a handling because the store records a cancel (once). */
export function abortForCancel(h: Handling, cancel: CancelInfo): void {
  if (!h.cancelled.signal.aborted) h.cancelled.abort(new ToolCancelledError(cancel));
}
