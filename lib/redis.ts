import { Redis } from 'ioredis';

export type { Redis };

/**
 * Redis is an accelerator, never the record: commands fail fast while it is down (no offline
 * queue), so callers fall back to the event store instead of waiting.
 */
export function createRedis(url: string): Redis {
  const options = {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 1,
    connectTimeout: 1_000,
    commandTimeout: 500,
    lazyConnect: false,
    retryStrategy: (times: number) => Math.min(times * 100, 2_000),
  };
  const socket = unixSocketOf(url);
  const redis = socket ? new Redis({ ...options, ...socket }) : new Redis(url, options);
  redis.on('error', () => undefined);
  return redis;
}

/**
 * A `unix:///path/to/redis.sock?password=…` REDIS_URL as ioredis's socket options (ioredis reads
 * only redis:// and rediss:// URLs); null for any other URL.
 */
export function unixSocketOf(url: string): { path: string; password?: string } | null {
  if (!url.startsWith('unix://')) return null;
  const u = new URL(url);
  const password = u.searchParams.get('password') ?? (u.password ? decodeURIComponent(u.password) : null);
  return { path: decodeURIComponent(u.pathname), ...(password ? { password } : {}) };
}
