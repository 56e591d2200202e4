import { Redis } from 'ioredis';

export type { Redis };

/**
 * Redis is an accelerator, never the record: commands fail fast while it is down (no offline
 * queue), so callers fall back to the event store instead of waiting.
 */
export function createRedis(url: string): Redis {
  const redis = new Redis(url, {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    connectTimeout: 1_000,
    commandTimeout: 500,
    lazyConnect: false,
    retryStrategy: (times) => Math.min(times * 100, 2_000),
  });
  redis.on('error', () => undefined);
  return redis;
}
