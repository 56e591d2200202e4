export interface ProgressUpdate {
  fraction: number;
  message?: string;
}

export interface ProgressReporter {
  report(p: ProgressUpdate): void;
  /** Drops anything pending; later reports are ignored (the execution has ended). */
  stop(): void;
}

/**
 * What a tool's `ctx.progress` does: fractions must increase (others are dropped), at most one
 * update per `minIntervalMs` is sent, and the newest one held back is sent when the interval ends,
 * so a final 1.0 is not lost to the limit. Messages are clipped to 500 characters.
 */
export function createProgressReporter(
  send: (p: ProgressUpdate) => void,
  minIntervalMs = 100,
  now: () => number = () => performance.now(),
): ProgressReporter {
  let last = -1;
  let lastSentAt = -Infinity;
  let pending: ProgressUpdate | null = null;
  let timer: NodeJS.Timeout | null = null;
  let stopped = false;

  const flush = () => {
    timer = null;
    if (stopped || !pending) return;
    const p = pending;
    pending = null;
    lastSentAt = now();
    try {
      send(p);
    } catch {
      // progress is best effort
    }
  };

  return {
    report(p) {
      if (stopped || typeof p !== 'object' || p === null) return;
      const fraction = Number(p.fraction);
      if (!Number.isFinite(fraction)) return;
      const clamped = Math.min(1, Math.max(0, fraction));
      if (clamped <= last) return;
      last = clamped;
      const message = typeof p.message === 'string' ? p.message.slice(0, 500) : undefined;
      pending = message === undefined ? { fraction: clamped } : { fraction: clamped, message };
      const wait = lastSentAt + minIntervalMs - now();
      if (wait <= 0) {
        if (timer) clearTimeout(timer);
        flush();
      } else if (!timer) {
        timer = setTimeout(flush, wait);
        timer.unref();
      }
    },
    stop() {
      stopped = true;
      pending = null;
      if (timer) clearTimeout(timer);
      timer = null;
    },
  };
}
