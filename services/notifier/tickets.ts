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

/** 32 random bytes, base64url: 43 characters. */
export const TICKET_PATTERN = /^[A-Za-z0-9_-]{43}$/;
const KEY_PREFIX = 'toolbus:notifier:ticket:';

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
  ) {}

  async issue(grant: Grant): Promise<string> {
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
