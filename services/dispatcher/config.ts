import { hostname } from 'node:os';
import { z } from 'zod';
import {
  CommonEnv,
  intVar,
  refuseTestHooksInProduction,
  requireTokenKey,
  SecretKey,
  UserTokenEnv,
} from '../../lib/config.ts';
import {
  DEFAULT_APPROVAL_TIMEOUT_MS,
  MAX_APPROVAL_TIMEOUT_MS,
  Role,
  type DestructiveDefault,
} from '../../contracts/index.ts';
import { EVENT_PUBLISH_MODES } from './relay.ts';

const optionalInt = (min: number, max: number) =>
  z
    .string()
    .regex(/^\d{1,9}$/, 'must be a whole number')
    .transform(Number)
    .pipe(z.number().int().min(min, `must be at least ${min}`).max(max, `must be at most ${max}`))
    .optional();

const flag = z
  .enum(['0', '1', 'false', 'true'], 'must be 0, 1, false or true')
  .transform((v) => v === '1' || v === 'true')
  .default(false);

/** The id a dispatcher records as `runner`; also a NATS subject token, so only safe characters. */
export const defaultDispatcherId = (): string =>
  `${hostname()}-${process.pid}`.replace(/[^A-Za-z0-9_-]/g, '_').slice(0, 100);

/**
 * The dispatcher's environment: the common variables, the user-token ones and its own. Every limit
 * has a default that suits a single machine; see docs/dispatcher.md. Keys have none.
 */
const DispatcherVariables = CommonEnv.extend({
  ...UserTokenEnv.shape,
  /** Shared secret that tool workers sign their announcements with. */
  WORKER_SECRET: SecretKey,
  /** How long JetStream waits for an ack (or a `working()` heartbeat) before redelivering. */
  ACK_WAIT_MS: intVar(30_000, 1_000, 3_600_000),
  /** Requests this instance runs at the same time. */
  DISPATCH_CONCURRENCY: intVar(64, 1, 10_000),
  /**
   * Unacknowledged requests across all instances (the consumer's max_ack_pending): what they run
   * and what waits in their intakes. Keep it at least instances × (DISPATCH_CONCURRENCY + INTAKE_BUFFER).
   */
  MAX_ACK_PENDING: intVar(20_000, 1, 1_000_000),
  /**
   * Requests the intake stream holds at most, waiting or running (and their bytes): beyond, a new
   * request is refused at once (the agent gets OVERLOADED with a retry hint) instead of queueing
   * without end.
   */
  INTAKE_MAX_MESSAGES: intVar(100_000, 1, 100_000_000),
  /**
   * Requests one agent may have in the intake for one user, waiting or running (the stream's limit
   * per subject, `toolbus.requests.<user>.<agent>`): beyond, that agent's next request for that
   * user is refused at once (OVERLOADED, nothing recorded), so that one agent's flood cannot queue
   * ahead of everyone else's requests. 0: no such bound. Keep it above what a user may send in
   * INTAKE_MAX_WAIT_MS (RATE_LIMIT_BURST + RATE_LIMIT_PER_SEC × the wait in seconds). Not set on a
   * replicated intake (NATS_STREAM_REPLICAS > 1; decision 0036), nor over a subject holding more.
   */
  INTAKE_MAX_PER_AGENT: intVar(1_000, 0, 100_000_000),
  /**
   * A request that waited in the intake longer than this before an instance could start it (the
   * load is above what the instances can run) is not run: its agent gets OVERLOADED at once, with a
   * retry hint, and nothing is recorded (decision 0035). 0: never. Requests delivered again, and
   * requests without a reply subject (nobody to tell), always run.
   */
  INTAKE_MAX_WAIT_MS: intVar(10_000, 0, 3_600_000),
  INTAKE_MAX_BYTES: intVar(1024 * 1024 * 1024, 1024 * 1024, 1024 * 1024 * 1024 * 1024),
  /**
   * Copies of the intake stream on a JetStream cluster (3 on a 3-node cluster: a request is
   * acknowledged once a majority stored it). An instance starting with another count changes the
   * stream's (and its consumer's).
   */
  NATS_STREAM_REPLICAS: intVar(1, 1, 5),
  /**
   * Slots of this instance one user may hold at once; the rest of the user's requests wait here
   * while others are served. Default: DISPATCH_CONCURRENCY minus an eighth (at least 1).
   */
  USER_DISPATCH_SLOTS: optionalInt(1, 10_000),
  /** Requests one instance pulls ahead of its slots to reach other users behind a flood (count). */
  INTAKE_BUFFER: intVar(4_096, 0, 1_000_000),
  /** The same, in bytes of request bodies (at least 1 MiB). */
  INTAKE_BUFFER_BYTES: intVar(64 * 1024 * 1024, 1024 * 1024, 999_999_999),
  /** Largest single pull when looking ahead. */
  INTAKE_PULL_BATCH: intVar(256, 1, 10_000),
  /** Executions of one user running at the same time, across all instances (Redis). */
  USER_CONCURRENCY: intVar(8, 1, 10_000),
  /** How long a dead dispatcher's slots stay taken at most (ms): slots are leases, renewed while calls run. */
  SLOT_LEASE_MS: intVar(15_000, 1_000, 600_000),
  /** Sustained requests per second per user (token bucket in Redis). */
  RATE_LIMIT_PER_SEC: intVar(20, 1, 1_000_000),
  /** Bucket size: requests a user may send at once after being idle. */
  RATE_LIMIT_BURST: intVar(40, 1, 1_000_000),
  /** How long a cacheable tool's result is reused for the same user and arguments. */
  CACHE_TTL_SEC: intVar(300, 1, 30 * 86_400),
  /** How long Redis remembers a terminal answer per (user, request id); the event store after that. */
  IDEMPOTENCY_TTL_SEC: intVar(86_400, 1, 30 * 86_400),
  /** How long a cancel waits for the cancelled execution to end before answering `executing`. */
  CANCEL_WAIT_MS: intVar(15_000, 100, 600_000),
  /** How long POST /executions waits for the terminal answer before 504 (the execution continues). */
  HTTP_WAIT_MS: intVar(120_000, 100, 3_600_000),
  /**
   * Where users reach the projector's HTTP API: the dispatcher's GET /executions (no lists here)
   * names it as the place of the lists. Unset: the answer names no address.
   */
  DISPATCHER_PROJECTOR_URL: z.url({ protocol: /^https?$/, error: 'must be an http(s) URL' }).optional(),
  /**
   * Failed handlings (the store away, a bug) of one request before it is given up: ToolFailed
   * INTERNAL, recorded and answered. Retries wait 2 s, 4 s, 8 s, ... up to 60 s.
   */
  DISPATCHER_MAX_FAILURES: intVar(6, 1, 1_000),
  /**
   * Answer lookups (`toolbus.answers.<user>`) this instance serves at once; beyond them a lookup is
   * refused at once with OVERLOADED and a retry hint, before any store work. Each holds one of the
   * event store's 10 connections while it reads: kept below them, appends always find one.
   */
  DISPATCHER_MAX_LOOKUPS: intVar(4, 1, 10_000),
  /**
   * Answer lookups that wait for one of those slots, in order, when all are taken; beyond, a
   * lookup is refused at once. Each is still answered within DISPATCHER_LOOKUP_DEADLINE_MS.
   */
  DISPATCHER_LOOKUP_QUEUE: intVar(256, 0, 100_000),
  /** How long one lookup may take before it is answered OVERLOADED (its store work still counts against the bound until it ends). */
  DISPATCHER_LOOKUP_DEADLINE_MS: intVar(2_000, 50, 60_000),
  /**
   * How committed events reach `events.user.<id>` (docs/decisions/0017-event-relay.md): `commit`
   * (published right after the commit; lost if the dispatcher dies in between), `relay` (one
   * dispatcher follows the store and publishes every committed event), `both` (the default: the
   * fast publish, and the relay as the safety net).
   */
  DISPATCHER_EVENT_PUBLISH: z.enum(EVENT_PUBLISH_MODES, 'must be commit, relay or both').default('both'),
  /** How often a dispatcher whose relay stands by tries to take over (the relay lock). */
  DISPATCHER_RELAY_LOCK_POLL_MS: intVar(1_000, 50, 600_000),
  /** How long close() lets running tools finish before leaving them to redelivery. */
  SHUTDOWN_GRACE_MS: intVar(5_000, 0, 600_000),
  /**
   * Register the test tools (noop, echo, sleep, fail, hang, ...) besides the example tools. Refused
   * when NODE_ENV=production.
   */
  TOOLBUS_TEST_TOOLS: flag,
  // ---- Approval (docs/approval.md) ----
  /**
   * Tools annotated `destructiveHint: true` that declare no approval policy: `require` (the
   * default) makes every call wait for an approver, `off` runs them unasked.
   */
  APPROVAL_DESTRUCTIVE: z.enum(['require', 'off'], 'must be require or off').default('require'),
  /** Who approves those calls (comma-separated roles; admins always may). */
  APPROVAL_DESTRUCTIVE_ROLES: z
    .string()
    .default('approver')
    .transform((v) =>
      v
        .split(',')
        .map((r) => r.trim())
        .filter((r) => r.length > 0),
    )
    .pipe(z.array(Role).min(1, 'needs at least one role').max(15)),
  /** How long those calls wait before they end APPROVAL_EXPIRED. */
  APPROVAL_DESTRUCTIVE_TIMEOUT_MS: intVar(DEFAULT_APPROVAL_TIMEOUT_MS, 1_000, MAX_APPROVAL_TIMEOUT_MS),
  /** Whether the requester may approve their own destructive call. */
  APPROVAL_DESTRUCTIVE_ALLOW_SELF: flag,
  /**
   * How soon a request waiting for approval first comes back to see whether it was decided (and
   * starts); each later recheck waits twice as long, up to APPROVAL_RECHECK_MAX_MS.
   */
  APPROVAL_RECHECK_MS: intVar(1_000, 50, 60_000),
  /** The longest wait between two rechecks of a waiting request (at least APPROVAL_RECHECK_MS). */
  APPROVAL_RECHECK_MAX_MS: intVar(5_000, 50, 600_000),
  /**
   * Calls of one user that may wait for an approver at once; beyond, a call that needs approval is
   * refused RATE_LIMITED (details.limit "approvals"). Each waiting call costs rechecks and holds
   * one of the consumer's MAX_ACK_PENDING slots, shared by every user.
   */
  APPROVAL_MAX_WAITS_PER_USER: intVar(20, 1, 10_000),
  /** How often the store's waits are searched for passed deadlines (also once at start). */
  APPROVAL_SWEEP_MS: intVar(5_000, 100, 3_600_000),
  /** This instance's name, recorded as the `runner` of what it runs. Default hostname-pid. */
  DISPATCHER_ID: z
    .string()
    .regex(/^[A-Za-z0-9_-]{1,100}$/, 'must match [A-Za-z0-9_-]{1,100} (it is a NATS subject token)')
    .default(defaultDispatcherId),
});
export const DispatcherEnv = refuseTestHooksInProduction(requireTokenKey(DispatcherVariables), {
  TOOLBUS_TEST_TOOLS: (v) => v === true,
});
export type DispatcherConfig = z.infer<typeof DispatcherEnv>;

/** The operator's approval policy for destructive tools that declare none. */
export const destructiveDefaultOf = (c: DispatcherConfig): DestructiveDefault =>
  c.APPROVAL_DESTRUCTIVE === 'off'
    ? null
    : {
        approverRoles: c.APPROVAL_DESTRUCTIVE_ROLES,
        timeoutMs: c.APPROVAL_DESTRUCTIVE_TIMEOUT_MS,
        allowSelfApproval: c.APPROVAL_DESTRUCTIVE_ALLOW_SELF,
      };
