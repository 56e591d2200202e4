import { hash } from 'node:crypto';
import { canonicalJson, type JsonValue } from '../../contracts/index.ts';
import type { ChainableCommander } from 'ioredis';
import type { Redis } from '../../lib/redis.ts';
import type { TerminalAnswer } from './answers.ts';
import type { RecordedAsk } from './ask.ts';
import { DUPLICATE_WINDOW_MS } from './intake.ts';

/**
 * Redis as an accelerator: the terminal answer per (user, request id), per-user rate and
 * concurrency limits, and the result cache of cacheable tools. Admission is one round trip (a Lua
 * script), the bookkeeping after an execution another (a pipeline). Every key is scoped to its
 * user (`{userId}` is also the cluster hash tag, so one script touches one slot).
 *
 * Redis is never the record: when a call fails (Redis down, slow), admission fails open (no
 * limits, no cache, no answer) and the event store decides; see docs/dispatcher.md.
 */

const ADMIT = `
local answer = redis.call('GET', KEYS[1])
if answer then
  if string.sub(answer, 1, 1) == '{' then return {'answer', answer, redis.call('GET', KEYS[5]) or ''} end
  return {'seen', ''}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local bucket = redis.call('HMGET', KEYS[2], 'tokens', 'at')
local tokens = tonumber(bucket[1])
local at = tonumber(bucket[2])
-- The request is judged at the time it was sent (ARGV[8], when given and not in the future): a
-- backlog admitted late after an outage is not turned into refusals its senders did not cause.
local sent = tonumber(ARGV[8])
local judged = now
if sent ~= nil and sent < now then judged = sent end
if tokens == nil or at == nil then
  tokens = burst
  at = judged
end
if judged > at then
  tokens = math.min(burst, tokens + (judged - at) * rate / 1000)
  at = judged
end
local idle = math.ceil(burst * 1000 / rate) + 1000 + math.max(0, now - at)
if tokens < 1 then
  redis.call('HSET', KEYS[2], 'tokens', string.format('%.6f', tokens), 'at', string.format('%d', at))
  redis.call('PEXPIRE', KEYS[2], idle)
  return {'rate', string.format('%d', math.ceil((1 - tokens) * 1000 / rate))}
end
redis.call('SET', KEYS[1], 'pending', 'EX', ARGV[7])
local ttl = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
-- A request refused for the user's concurrency does not run: it spends no token of the rate (were
-- it to, a backlog started at once after an outage would turn its refusals for concurrency into
-- refusals for the rate of the requests behind it).
local busy = redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[3])
if not busy then tokens = tokens - 1 end
redis.call('HSET', KEYS[2], 'tokens', string.format('%.6f', tokens), 'at', string.format('%d', at))
redis.call('PEXPIRE', KEYS[2], idle)
if busy then return {'busy', ''} end
redis.call('ZADD', KEYS[3], now + ttl, ARGV[4])
-- Only ever lengthened: the set holds other calls' slots, leased longer.
if redis.call('PTTL', KEYS[3]) < ttl + 1000 then redis.call('PEXPIRE', KEYS[3], ttl + 1000) end
if ARGV[6] == '1' then
  local cached = redis.call('GET', KEYS[4])
  if cached then return {'cached', cached} end
end
return {'go', ''}
`;

/** One of the user's concurrency slots alone, for a run admitted earlier (an approved call). */
const TAKE_SLOT = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then return 'go' end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 'busy' end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
if redis.call('PTTL', KEYS[1]) < ttl + 1000 then redis.call('PEXPIRE', KEYS[1], ttl + 1000) end
return 'go'
`;

/**
 * Counts a shedding of a request id, unless Redis knows the request (an answer, or admitted and
 * running somewhere): then -1. KEYS: the answer key, the shed count's. ARGV: how long the count
 * lives (ms).
 */
const MARK_SHED = `
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local n = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return n
`;

type MarkShedFn = (answerKey: string, shedKey: string, ttlMs: string) => Promise<number>;

/**
 * Extends the leases of this instance's slots in one user's set: each now expires a lease from now,
 * and the set lives at least as long. A slot the set lost while its call still runs (a renewal
 * missed for longer than a lease: Redis away, restarted empty, a stalled process) is taken again
 * if the user is under the limit, else counted as lost (returned). A slot freed by its call is
 * never renewed: the instance stops listing it before it removes it, on the same connection.
 * KEYS: the set. ARGV: the lease (ms), the limit, then the members.
 */
const RENEW_SLOTS = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local lost = 0
for i = 3, #ARGV do
  if redis.call('ZSCORE', KEYS[1], ARGV[i]) or redis.call('ZCARD', KEYS[1]) < limit then
    redis.call('ZADD', KEYS[1], now + lease, ARGV[i])
  else
    lost = lost + 1
  end
end
if redis.call('PTTL', KEYS[1]) < lease + 1000 then redis.call('PEXPIRE', KEYS[1], lease + 1000) end
return lost
`;

type RenewSlotsFn = (slotsKey: string, leaseMs: string, limit: string, ...slots: string[]) => Promise<number>;

/**
 * How long a concurrency slot is held without being renewed (ms): its holder renews it every third
 * of this while the call runs, so a dispatcher that dies (SIGKILL, a lost machine) holds its users'
 * slots at most this long, not for its tools' whole timeouts.
 */
export const SLOT_LEASE_MS = 15_000;

export interface GuardLimits {
  ratePerSec: number;
  burst: number;
  userConcurrency: number;
  cacheTtlSec: number;
  answerTtlSec: number;
  /** `SLOT_LEASE_MS` unless given (tests). */
  slotLeaseMs?: number;
}

export interface AdmitRequest {
  userId: string;
  requestId: string;
  /** Unique per handling of a request: the member of the user's concurrency set. */
  slot: string;
  /**
   * How long the slot may be held at most (the tool's timeout and a margin): it is renewed until
   * then while its holder lives, and a holder that dies holds it a lease at most.
   */
  slotTtlMs: number;
  /** Present for cacheable tools. */
  cacheKey?: string;
  /**
   * When the agent sent the request (epoch ms, JetStream's timestamp): the rate limit judges it
   * by that time, not by when it is admitted.
   */
  sentAt?: number;
}

/**
 * A remembered answer, and what the request that got it asked (absent on answers remembered before
 * it was kept, and when the dispatcher did not know it).
 */
export interface Remembered {
  kind: 'answer';
  answer: TerminalAnswer;
  ask?: RecordedAsk;
}

/**
 * A remembered answer as stored: the answer's JSON under its key (as dispatchers before the ask
 * was kept read it, so that they still can during a rolling upgrade), the ask's under another key
 * of the same user, with the same expiry.
 */
function rememberedOf(value: string, ask: string | null | undefined): Remembered {
  const answer = JSON.parse(value) as TerminalAnswer;
  return ask ? { kind: 'answer', answer, ask: JSON.parse(ask) as RecordedAsk } : { kind: 'answer', answer };
}

export type Admission =
  | Remembered
  /** Admitted before, with no answer yet: running elsewhere, or left by a crash. Ask the store. */
  | { kind: 'seen' }
  | { kind: 'rate_limited'; retryAfterMs: number }
  | { kind: 'busy' }
  | { kind: 'cached'; result: JsonValue }
  | { kind: 'go' }
  /** Redis did not answer: limits are off for this request, the event store is the guard. */
  | { kind: 'unavailable' };

export interface FinishRequest {
  userId: string;
  requestId: string;
  slot?: string;
  answer: TerminalAnswer;
  /** What the request asked, remembered with its answer (see `Remembered`). */
  ask?: RecordedAsk | undefined;
  /** Stores `answer.result` under this key when the execution completed (not from the cache). */
  cacheKey?: string;
}

type AdmitFn = (
  answerKey: string,
  bucketKey: string,
  slotsKey: string,
  cacheKey: string,
  askKey: string,
  ...args: string[]
) => Promise<[string, string, string?]>;

type TakeSlotFn = (slotsKey: string, ...args: string[]) => Promise<string>;

/** How long Redis counts a request id's sheddings: the intake's duplicate window, and a margin. */
const SHED_MEMORY_MS = DUPLICATE_WINDOW_MS + 30_000;

/** While Redis stays down, at most one log line per this (see `RedisOutageLog`). */
export const REDIS_OUTAGE_LOG_INTERVAL_MS = 10_000;

/** Told of every Redis call the guard makes: each one that failed, and each one that answered. */
export interface RedisHealth {
  failed(op: string, error: Error): void;
  succeeded(): void;
  /**
   * A renewal found `count` slots gone (Redis restarted empty, or a renewal came past the lease)
   * with their user at the limit: those calls run uncounted until they end.
   */
  lostSlots?(count: number): void;
}

type OutageLogger = {
  warn(fields: Record<string, unknown>, message: string): void;
  info(fields: Record<string, unknown>, message: string): void;
};

/**
 * Logs an outage of Redis, not every call it fails: the first failure with its error, then at most
 * one line per `intervalMs` with the number of failed calls not logged since the line before, and
 * one line once Redis answers again (with the outage's count). Under load a dispatcher makes
 * several Redis calls per request, and each fails while Redis is down; every failure is still
 * counted in `toolbus_redis_errors_total`. A new outage within `intervalMs` of the last line waits
 * for the next line, so a flapping Redis cannot flood the log either.
 */
export class RedisOutageLog implements RedisHealth {
  private down = false;
  /** Whether this outage has had a line yet (else its end is not worth one). */
  private told = false;
  private since = 0;
  private failures = 0;
  /** Failed calls no line has counted yet. */
  private unlogged = 0;
  private lastLineAt = Number.NEGATIVE_INFINITY;

  constructor(
    private readonly log: OutageLogger,
    private readonly intervalMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  failed(op: string, error: Error): void {
    const now = this.now();
    if (!this.down) {
      this.down = true;
      this.told = false;
      this.since = now;
      this.failures = 0;
    }
    this.failures += 1;
    if (now - this.lastLineAt < this.intervalMs) {
      this.unlogged += 1;
      return;
    }
    const every = `${Math.round(this.intervalMs / 1000)} s`;
    if (!this.told) {
      this.log.warn(
        { op, err: error, unlogged: this.unlogged },
        `redis unavailable; continuing without it (further failures: one line per ${every})`,
      );
    } else {
      this.log.warn(
        {
          op,
          error: error.message,
          unlogged: this.unlogged,
          failures: this.failures,
          downMs: now - this.since,
        },
        `redis still unavailable; ${this.unlogged} failed calls not logged since the last line`,
      );
    }
    this.told = true;
    this.lastLineAt = now;
    this.unlogged = 0;
  }

  succeeded(): void {
    if (!this.down) return;
    this.down = false;
    // A blip too short to have had a line: its failures are counted in the next line.
    if (!this.told) return;
    this.log.info(
      { failures: this.failures, unlogged: this.unlogged, downMs: this.now() - this.since },
      'redis answers again',
    );
    this.unlogged = 0;
  }
}

export class Guard {
  private readonly admitScript: AdmitFn;
  private readonly takeSlotScript: TakeSlotFn;
  private readonly markShedScript: MarkShedFn;
  private readonly renewScript: RenewSlotsFn;
  private readonly leaseMs: number;
  /** The slots this instance holds, by set: each with the time (ms) past which it is not renewed. */
  private readonly held = new Map<string, Map<string, number>>();
  private readonly renewer: NodeJS.Timeout;

  constructor(
    private readonly redis: Redis,
    private readonly limits: GuardLimits,
    private readonly health: RedisHealth,
    private readonly prefix = 'tb',
  ) {
    const name = 'toolbusAdmit2';
    if (!(name in redis)) redis.defineCommand(name, { numberOfKeys: 5, lua: ADMIT });
    const fn = (redis as unknown as Record<string, AdmitFn>)[name]!;
    this.admitScript = fn.bind(redis);
    const take = 'toolbusTakeSlot';
    if (!(take in redis)) redis.defineCommand(take, { numberOfKeys: 1, lua: TAKE_SLOT });
    this.takeSlotScript = (redis as unknown as Record<string, TakeSlotFn>)[take]!.bind(redis);
    const shed = 'toolbusMarkShed';
    if (!(shed in redis)) redis.defineCommand(shed, { numberOfKeys: 2, lua: MARK_SHED });
    this.markShedScript = (redis as unknown as Record<string, MarkShedFn>)[shed]!.bind(redis);
    const renew = 'toolbusRenewSlots';
    if (!(renew in redis)) redis.defineCommand(renew, { numberOfKeys: 1, lua: RENEW_SLOTS });
    this.renewScript = (redis as unknown as Record<string, RenewSlotsFn>)[renew]!.bind(redis);
    this.leaseMs = limits.slotLeaseMs ?? SLOT_LEASE_MS;
    this.renewer = setInterval(() => void this.renewSlots(), Math.max(1, Math.floor(this.leaseMs / 3)));
    this.renewer.unref();
  }

  /** Stops renewing: the slots still held lapse within a lease (their calls have ended by then). */
  close(): void {
    clearInterval(this.renewer);
  }

  /** How many slots this instance holds (and renews). */
  get slotsHeld(): number {
    let n = 0;
    for (const slots of this.held.values()) n += slots.size;
    return n;
  }

  /** The first lease of a slot: a lease, or less when the slot may be held for less in all. */
  private firstLeaseMs(ttlMs: number): number {
    return Math.min(ttlMs, this.leaseMs);
  }

  private hold(slotsKey: string, slot: string, ttlMs: number): void {
    let slots = this.held.get(slotsKey);
    if (!slots) this.held.set(slotsKey, (slots = new Map<string, number>()));
    slots.set(slot, Date.now() + ttlMs);
  }

  private letGo(slotsKey: string, slot: string): void {
    const slots = this.held.get(slotsKey);
    if (!slots?.delete(slot)) return;
    if (slots.size === 0) this.held.delete(slotsKey);
  }

  /**
   * Renews every slot held, one script per user (each user's set is one Redis Cluster slot), all
   * sent at once; a slot past its whole ttl (a call that should have ended) is left to lapse. A
   * renewal Redis misses is made at the next, and a slot lost meanwhile is taken again if there is
   * room (`RENEW_SLOTS`).
   */
  private async renewSlots(): Promise<void> {
    if (this.held.size === 0) return;
    const now = Date.now();
    const renewals: Promise<number>[] = [];
    for (const [key, slots] of this.held) {
      for (const [slot, until] of slots) if (until <= now) slots.delete(slot);
      if (slots.size === 0) {
        this.held.delete(key);
        continue;
      }
      renewals.push(
        this.renewScript(key, String(this.leaseMs), String(this.limits.userConcurrency), ...slots.keys()),
      );
    }
    const results = await Promise.allSettled(renewals);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) this.health.failed('renew_slots', failed.reason as Error);
    else if (results.length > 0) this.health.succeeded();
    let lost = 0;
    for (const r of results) if (r.status === 'fulfilled') lost += r.value;
    if (lost > 0) {
      this.lostSlots += lost;
      this.health.lostSlots?.(lost);
    }
  }

  /**
   * Slots found gone at a renewal with the user at the limit, counted at each renewal that finds
   * them so: their calls run uncounted until they end.
   */
  lostSlots = 0;

  /**
   * Takes one of the user's concurrency slots for a run that was admitted before it could start
   * (an approved call): `busy` when the user is at the limit; `unavailable` (limits off) when Redis
   * does not answer.
   */
  async takeSlot(userId: string, slot: string, ttlMs: number): Promise<'go' | 'busy' | 'unavailable'> {
    try {
      const key = this.key(userId, 'c');
      const r = await this.takeSlotScript(
        key,
        String(this.limits.userConcurrency),
        slot,
        String(this.firstLeaseMs(ttlMs)),
      );
      this.health.succeeded();
      if (r === 'busy') return 'busy';
      this.hold(key, slot, ttlMs);
      return 'go';
    } catch (e) {
      this.health.failed('take_slot', e as Error);
      return 'unavailable';
    }
  }

  private key(userId: string, rest: string): string {
    return `${this.prefix}:{${userId}}:${rest}`;
  }

  answerKey = (userId: string, requestId: string): string => this.key(userId, `a:${requestId}`);

  /** What the request that got the remembered answer asked (`RecordedAsk`, JSON). */
  private askKey = (userId: string, requestId: string): string => this.key(userId, `q:${requestId}`);

  /** How many times the intake shed the request id unrun (`markShed`). */
  private shedKey = (userId: string, requestId: string): string => this.key(userId, `s:${requestId}`);

  /** Result cache key: per user, tool and version, and the SHA-256 of the canonical arguments. */
  cacheKey(userId: string, tool: string, version: string, args: JsonValue): string {
    const digest = hash('sha256', canonicalJson(args), 'hex');
    return this.key(userId, `r:${tool}@${version}:${digest}`);
  }

  async admit(req: AdmitRequest): Promise<Admission> {
    try {
      const [kind, value, ask] = await this.admitScript(
        this.answerKey(req.userId, req.requestId),
        this.key(req.userId, 'rl'),
        this.key(req.userId, 'c'),
        req.cacheKey ?? this.key(req.userId, 'r:none'),
        this.askKey(req.userId, req.requestId),
        String(this.limits.ratePerSec),
        String(this.limits.burst),
        String(this.limits.userConcurrency),
        req.slot,
        String(this.firstLeaseMs(req.slotTtlMs)),
        req.cacheKey ? '1' : '0',
        String(this.limits.answerTtlSec),
        req.sentAt === undefined ? '' : String(Math.floor(req.sentAt)),
      );
      this.health.succeeded();
      switch (kind) {
        case 'answer':
          return rememberedOf(value, ask);
        case 'seen':
          return { kind: 'seen' };
        case 'rate':
          return { kind: 'rate_limited', retryAfterMs: Number(value) };
        case 'busy':
          return { kind: 'busy' };
        case 'cached':
          // The slot was taken before the cache was read: held until `finish` frees it.
          this.hold(this.key(req.userId, 'c'), req.slot, req.slotTtlMs);
          return { kind: 'cached', result: JSON.parse(value) as JsonValue };
        default:
          this.hold(this.key(req.userId, 'c'), req.slot, req.slotTtlMs);
          return { kind: 'go' };
      }
    } catch (e) {
      this.health.failed('admit', e as Error);
      return { kind: 'unavailable' };
    }
  }

  /** Records the answer, caches the result, frees the concurrency slot: one pipeline. */
  async finish(req: FinishRequest): Promise<void> {
    try {
      const p = this.redis.pipeline();
      this.rememberIn(p, req.userId, req.requestId, req.answer, req.ask);
      if (req.cacheKey && req.answer.status === 'completed' && !req.answer.cached) {
        p.set(req.cacheKey, JSON.stringify(req.answer.result), 'EX', this.limits.cacheTtlSec);
      }
      if (req.slot) {
        this.letGo(this.key(req.userId, 'c'), req.slot);
        p.zrem(this.key(req.userId, 'c'), req.slot);
      }
      const results = (await p.exec()) ?? [];
      const failed = results.find(([err]) => err);
      if (failed?.[0]) throw failed[0];
      this.health.succeeded();
    } catch (e) {
      this.health.failed('finish', e as Error);
    }
  }

  /** Adds the commands that remember an answer (and what its request asked) to `p`. */
  private rememberIn(
    p: ChainableCommander,
    userId: string,
    requestId: string,
    answer: TerminalAnswer,
    ask: RecordedAsk | undefined,
  ): void {
    const ttl = this.limits.answerTtlSec;
    // The ask first: a reader between the two commands finds no answer yet, never an answer
    // without its ask.
    if (ask) p.set(this.askKey(userId, requestId), JSON.stringify(ask), 'EX', ttl);
    else p.del(this.askKey(userId, requestId));
    p.set(this.answerKey(userId, requestId), JSON.stringify(answer), 'EX', ttl);
  }

  /** Frees a concurrency slot without an answer (a request that ended without a terminal event). */
  async release(userId: string, slot: string): Promise<void> {
    this.letGo(this.key(userId, 'c'), slot);
    try {
      await this.redis.zrem(this.key(userId, 'c'), slot);
      this.health.succeeded();
    } catch (e) {
      this.health.failed('release', e as Error);
    }
  }

  /**
   * Counts a shedding of (user, request id): a message of it that waited too long in the intake
   * is to be answered OVERLOADED unrun (decision 0035). The count lives as long as JetStream's
   * duplicate window and a margin, while a retry under the same message id would be dropped as a
   * repeat: a lookup then says so (`peek`), and the agent publishes again under `<message id>~<n>`
   * (which is never shed). Resolves to the count; or null, and nothing is counted, when Redis knows the request (it was
   * answered, or admitted and runs elsewhere: this message is a late copy, handled as any repeat)
   * or is away (a shed request's retry would then have no way to run within the window).
   */
  async markShed(userId: string, requestId: string): Promise<number | null> {
    try {
      const n = await this.markShedScript(
        this.answerKey(userId, requestId),
        this.shedKey(userId, requestId),
        String(SHED_MEMORY_MS),
      );
      this.health.succeeded();
      return n > 0 ? n : null;
    } catch (e) {
      this.health.failed('markShed', e as Error);
      return null;
    }
  }

  /**
   * What Redis knows of (user, request id): its answer, that it was admitted, nothing (and how
   * many times the intake shed it, if it did), or Redis is away.
   */
  async peek(
    userId: string,
    requestId: string,
  ): Promise<Remembered | { kind: 'seen' | 'unavailable' } | { kind: 'none'; shed: number }> {
    try {
      const [value, ask, shed] = await this.redis.mget(
        this.answerKey(userId, requestId),
        this.askKey(userId, requestId),
        this.shedKey(userId, requestId),
      );
      this.health.succeeded();
      if (value === null || value === undefined) return { kind: 'none', shed: Number(shed ?? 0) || 0 };
      if (value.startsWith('{')) return rememberedOf(value, ask);
      return { kind: 'seen' };
    } catch (e) {
      this.health.failed('peek', e as Error);
      return { kind: 'unavailable' };
    }
  }

  /** Remembers a terminal answer found in the event store (after Redis lost it). */
  async remember(
    userId: string,
    requestId: string,
    answer: TerminalAnswer,
    ask: RecordedAsk | undefined,
  ): Promise<void> {
    try {
      const p = this.redis.multi();
      this.rememberIn(p, userId, requestId, answer, ask);
      const results = (await p.exec()) ?? [];
      const failed = results.find(([err]) => err);
      if (failed?.[0]) throw failed[0];
      this.health.succeeded();
    } catch (e) {
      this.health.failed('remember', e as Error);
    }
  }
}
