import { setTimeout as sleep } from 'node:timers/promises';
import { encodeHistogram, newHistogram, recordMs } from './histogram.ts';

/**
 * Open-loop load at a constant arrival rate. Request i is due at start + i / rate (wall clock) and
 * is sent then, whether or not earlier ones have been answered; its latency is measured from when
 * it was due, not from when the generator got round to sending it, so a stall on either side
 * shows up in the latency instead of silently lowering the load (no coordinated omission).
 */
export interface OpenLoopOptions {
  /** Requests per second. */
  rate: number;
  /** How long requests are sent, warm-up included. */
  durationMs: number;
  /** Requests due in the first `warmupMs` are sent but not recorded. */
  warmupMs: number;
  /** After the last send, how long unanswered requests are waited for. */
  drainMs: number;
  /** Sending stops (the run "fell behind") when this many requests are unanswered at once. */
  maxOutstanding: number;
  /** Sends request `i`; resolves when it is answered, rejects when it failed. */
  fire: (i: number) => Promise<void>;
}

export interface OpenLoopResult {
  rate: number;
  /** Requests sent, warm-up included. */
  sent: number;
  completed: number;
  errors: number;
  /** Still unanswered after the drain: recorded with the latency they had reached. */
  unanswered: number;
  /** Recorded (post warm-up) requests. */
  recorded: number;
  /** Answered recorded requests per second over the recorded window (first due to last answer). */
  achievedRate: number;
  /** True when sending stopped at `maxOutstanding`. */
  fellBehind: boolean;
  /** How late the generator sent, at worst (ms): a busy generator shows here. */
  maxSendLagMs: number;
  /** The latency histogram (µs, HDR compressed base64) of the recorded requests. */
  histogram: string;
  firstErrors: string[];
}

const now = (): number => performance.now();

export async function runOpenLoop(o: OpenLoopOptions): Promise<OpenLoopResult> {
  const h = newHistogram();
  const interval = 1000 / o.rate;
  const total = Math.max(1, Math.floor((o.durationMs / 1000) * o.rate));
  const firstRecorded = Math.ceil((o.warmupMs / 1000) * o.rate);
  const outstanding = new Map<number, number>();
  let completed = 0;
  let errors = 0;
  let recordedDone = 0;
  let lastRecordedAnswer = 0;
  let maxSendLagMs = 0;
  let fellBehind = false;
  const firstErrors: string[] = [];
  const start = now() + 20;

  let sent = 0;
  for (let i = 0; i < total; i++) {
    const due = start + i * interval;
    const wait = due - now();
    if (wait > 1) await sleep(wait);
    if (outstanding.size >= o.maxOutstanding) {
      fellBehind = true;
      break;
    }
    const sentAt = now();
    maxSendLagMs = Math.max(maxSendLagMs, sentAt - due);
    // Latency runs from when the request was due, or from when it left if the timer let it leave
    // a little early (a sub-millisecond wait is not slept): never less than the real latency.
    const from = Math.min(due, sentAt);
    outstanding.set(i, from);
    sent++;
    const record = i >= firstRecorded;
    o.fire(i).then(
      () => {
        if (!outstanding.delete(i)) return;
        completed++;
        if (record) {
          const t = now();
          recordMs(h, t - from);
          recordedDone++;
          lastRecordedAnswer = Math.max(lastRecordedAnswer, t);
        }
      },
      (e: unknown) => {
        if (!outstanding.delete(i)) return;
        errors++;
        if (firstErrors.length < 5) firstErrors.push(e instanceof Error ? e.message : String(e));
      },
    );
  }

  const drainUntil = now() + o.drainMs;
  while (outstanding.size > 0 && now() < drainUntil) await sleep(10);
  const unanswered = outstanding.size;
  const end = now();
  for (const [i, from] of outstanding) if (i >= firstRecorded) recordMs(h, end - from);
  outstanding.clear();

  const recorded = Math.max(0, sent - firstRecorded);
  const windowStart = start + firstRecorded * interval;
  const windowMs = Math.max(1, (lastRecordedAnswer || end) - windowStart);
  return {
    rate: o.rate,
    sent,
    completed,
    errors,
    unanswered,
    recorded,
    achievedRate: (recordedDone / windowMs) * 1000,
    fellBehind,
    maxSendLagMs,
    histogram: encodeHistogram(h),
    firstErrors,
  };
}
