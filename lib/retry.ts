/**
 * One retry helper: exponential backoff with full jitter ("Exponential Backoff And Jitter", AWS
 * architecture blog): attempt n waits a random time in [0, min(maxMs, minMs × factor^n)), so
 * many clients that failed together do not retry together.
 */

export interface BackoffOptions {
  /** The ceiling of the first wait (attempt 0). */
  minMs: number;
  /** The largest ceiling. */
  maxMs: number;
  /** How much the ceiling grows per attempt (default 2). */
  factor?: number;
  /**
   * `full`: a random wait in [0, ceiling) (default); `none`: the ceiling itself (for tests, and
   * loops where one process alone retries, such as a store subscription).
   */
  jitter?: 'full' | 'none';
  /** The random source in [0, 1) (tests). */
  random?: () => number;
}

export interface RetryOptions extends BackoffOptions {
  /** Retries after the first attempt (Infinity: until it succeeds, is not retryable or aborted). */
  retries: number;
  signal?: AbortSignal;
  /** Whether an error is worth another attempt (default: every error). */
  retryable?: (e: unknown) => boolean;
  /** Told of each failure that will be retried, and how long until the retry. */
  onRetry?: (e: unknown, attempt: number, waitMs: number) => void;
  /** An error's own wait (such as an OVERLOADED retry hint), when it asks for longer. */
  waitHintMs?: (e: unknown) => number | undefined;
}

/** The wait before retry `attempt` (0 for the first retry). */
export function backoffMs(attempt: number, o: BackoffOptions): number {
  const factor = o.factor ?? 2;
  // Past some attempt the ceiling is maxMs anyway; the cap keeps factor^attempt finite.
  const ceiling = Math.min(o.maxMs, o.minMs * factor ** Math.min(attempt, 64));
  if (o.jitter === 'none') return ceiling;
  return Math.floor((o.random ?? Math.random)() * ceiling);
}

/** Resolves after `ms`, or rejects with the signal's reason when it aborts first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason as Error);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason as Error);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Calls `fn` until it resolves, waiting `backoffMs` between attempts. Rethrows the last error when
 * the retries are spent or the error is not retryable, and the signal's reason when it aborts.
 */
export async function retry<T>(fn: (attempt: number) => Promise<T>, o: RetryOptions): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    o.signal?.throwIfAborted();
    try {
      return await fn(attempt);
    } catch (e) {
      if (attempt >= o.retries || (o.retryable && !o.retryable(e))) throw e;
      const hint = o.waitHintMs?.(e);
      const wait = Math.max(backoffMs(attempt, o), hint ?? 0);
      o.onRetry?.(e, attempt, wait);
      await sleep(wait, o.signal);
    }
  }
}
