export interface ProgressUpdate {
  fraction: number;
  message?: string;
}

export interface ProgressReporter {
  report(p: ProgressUpdate): void;
  /**
   * Later reports are ignored (the execution has ended). The update held back by the rate limit
   * is sent first when `flush` is true (the tool completed: its last progress, often 1.0, goes out
   * before the answer), dropped otherwise.
   */
  stop(flush?: boolean): void;
}

/**
 * What a tool's `ctx.progress` does: fractions must increase (others are dropped), at most one
 * update per `minIntervalMs` is sent, and the newest one held back is sent when the interval ends
 * (or at `stop(true)` when the tool completed first), so a final 1.0 is not lost to the limit.
 * Messages are clipped to 500 characters.
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

  const sendPending = () => {
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
        sendPending();
      } else if (!timer) {
        timer = setTimeout(sendPending, wait);
        timer.unref();
      }
    },
    stop(flush = false) {
      if (stopped) return;
      if (timer) clearTimeout(timer);
      timer = null;
      if (flush) sendPending();
      stopped = true;
      pending = null;
    },
  };
}
