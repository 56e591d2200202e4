import { createHash, randomBytes } from 'node:crypto';
import type { Principal } from '../../contracts/index.ts';
import type { Redis } from '../../lib/redis.ts';

/** What a ticket stands for: the user of the token it was exchanged for, until the token expires. */
export interface Grant {
  principal: Principal;
  /** The token's expiry, in milliseconds since the epoch. */
  expiresAt: number;
}

export class TicketsUnavailableError extends Error {
  constructor(cause: unknown) {
    super('ticket store (Redis) is unavailable', { cause });
    this.name = 'TicketsUnavailableError';
  }
}

/** The user asked for more tickets than NOTIFIER_TICKETS_PER_MINUTE allows. */
export class TicketRateExceededError extends Error {
  constructor(readonly retryAfterSeconds: number) {
    super(`too many tickets; retry in ${retryAfterSeconds} s`);
    this.name = 'TicketRateExceededError';
  }
}

/** 32 random bytes, base64url: 43 characters. */
export const TICKET_PATTERN = /^[A-Za-z0-9_-]{43}$/;
const KEY_PREFIX = 'toolbus:notifier:ticket:';
const RATE_PREFIX = 'toolbus:notifier:ticket-rate:';
const RATE_WINDOW_SECONDS = 60;

/**
 * One-time tickets in Redis, so any notifier instance can redeem a ticket another one issued.
 * The key is the ticket's SHA-256, so a Redis dump holds nothing that opens a socket; GETDEL makes
 * a ticket good for exactly one connection. With Redis down, tickets are refused (the caller says
 * 503) rather than kept in one instance's memory, where another instance could not redeem them.
 */
export class TicketStore {
  constructor(
    private readonly redis: Redis,
    private readonly ttlSeconds: number,
    private readonly perMinute: number,
  ) {}

  /** A new ticket for the grant's user, within the user's rate (TicketRateExceededError above it). */
  async issue(grant: Grant): Promise<string> {
    await this.countIssue(grant.principal.userId);
    const ticket = randomBytes(32).toString('base64url');
    const value = JSON.stringify({
      userId: grant.principal.userId,
      roles: grant.principal.roles,
      expiresAt: grant.expiresAt,
    });
    try {
      await this.redis.set(keyOf(ticket), value, 'EX', this.ttlSeconds, 'NX');
    } catch (e) {
      throw new TicketsUnavailableError(e);
    }
    return ticket;
  }

  /**
   * Counts one ticket in the user's current minute, a window kept in Redis so that every instance
   * shares it (the window starts with the user's first ticket in it).
   */
  private async countIssue(userId: string): Promise<void> {
    const key = `${RATE_PREFIX}${userId}`;
    let replies;
    try {
      replies = await this.redis
        .multi()
        .set(key, 0, 'EX', RATE_WINDOW_SECONDS, 'NX')
        .incr(key)
        .ttl(key)
        .exec();
    } catch (e) {
      throw new TicketsUnavailableError(e);
    }
    const failed = replies?.find(([err]) => err !== null)?.[0];
    if (!replies || failed) throw new TicketsUnavailableError(failed ?? new Error('transaction aborted'));
    const count = Number(replies[1]![1]);
    const ttl = Number(replies[2]![1]);
    if (count > this.perMinute) throw new TicketRateExceededError(Math.max(1, ttl));
  }

  /** The grant of a ticket seen for the first time; null for an unknown, used or expired one. */
  async redeem(ticket: string): Promise<Grant | null> {
    if (!TICKET_PATTERN.test(ticket)) return null;
    let value: string | null;
    try {
      value = await this.redis.getdel(keyOf(ticket));
    } catch (e) {
      throw new TicketsUnavailableError(e);
    }
    if (value === null) return null;
    const parsed = JSON.parse(value) as { userId: string; roles: string[]; expiresAt: number };
    return { principal: { userId: parsed.userId, roles: parsed.roles }, expiresAt: parsed.expiresAt };
  }
}

const keyOf = (ticket: string) => `${KEY_PREFIX}${createHash('sha256').update(ticket).digest('hex')}`;
