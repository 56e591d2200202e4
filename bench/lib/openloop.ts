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

/**
 * An open loop whose rate changes in phases, back to back (the overload benchmark: twice the
 * capacity, then half of it at once). As in `runOpenLoop`, request i is due at its phase's start +
 * its index in the phase / the phase's rate, and its latency runs from when it was due. Instead of
 * a histogram it returns every request's due time, answer time and outcome, so that the caller can
 * cut the run into windows by due time or by answer time.
 */
export interface PhasedOpenLoopOptions {
  phases: Array<{ rate: number; durationMs: number }>;
  /** After the last send, how long unanswered requests are waited for. */
  drainMs: number;
  /** Sending stops (the run "fell behind") when this many requests are unanswered at once. */
  maxOutstanding: number;
  /** Sends request `i`; resolves with its outcome ("completed", "failed:OVERLOADED", …), rejects when it failed without an answer. */
  fire: (i: number) => Promise<string>;
}

export interface PhasedOpenLoopResult {
  /** The run's start by the wall clock (ms since the epoch), to place an outside event in it. */
  startWallMs: number;
  /** Each phase's start, ms from the run's start. */
  phaseStartMs: number[];
  /** Per request, in send order: its phase, when it was due and when it settled (ms from the run's start; -1: never). */
  phase: number[];
  dueMs: number[];
  settledMs: number[];
  /** Per request: an index into `outcomes` ("unanswered" for one still open after the drain). */
  outcome: number[];
  outcomes: string[];
  /** When the drain ended (ms from the run's start). */
  endMs: number;
  /** True when sending stopped at `maxOutstanding`. */
  fellBehind: boolean;
  maxSendLagMs: number;
}

const tenth = (ms: number): number => Math.round(ms * 10) / 10;

export async function runPhasedOpenLoop(o: PhasedOpenLoopOptions): Promise<PhasedOpenLoopResult> {
  const start = now() + 20;
  const outcomes: string[] = [];
  const outcomeIndex = (label: string): number => {
    const k = outcomes.indexOf(label);
    return k >= 0 ? k : outcomes.push(label) - 1;
  };
  const unanswered = outcomeIndex('unanswered');
  const r: PhasedOpenLoopResult = {
    startWallMs: performance.timeOrigin + start,
    phaseStartMs: [],
    phase: [],
    dueMs: [],
    settledMs: [],
    outcome: [],
    outcomes,
    endMs: 0,
    fellBehind: false,
    maxSendLagMs: 0,
  };
  let open = 0;
  let phaseStart = 0;
  let i = 0;
  sending: for (const [p, { rate, durationMs }] of o.phases.entries()) {
    r.phaseStartMs.push(phaseStart);
    const total = Math.floor((durationMs / 1000) * rate);
    for (let k = 0; k < total; k++, i++) {
      const due = start + phaseStart + (k * 1000) / rate;
      const wait = due - now();
      if (wait > 1) await sleep(wait);
      if (open >= o.maxOutstanding) {
        r.fellBehind = true;
        break sending;
      }
      const sentAt = now();
      r.maxSendLagMs = Math.max(r.maxSendLagMs, sentAt - due);
      const from = Math.min(due, sentAt);
      const n = i;
      r.phase.push(p);
      r.dueMs.push(tenth(from - start));
      r.settledMs.push(-1);
      r.outcome.push(unanswered);
      open++;
      const settle = (label: string) => {
        if (r.settledMs[n] !== -1) return;
        open--;
        r.settledMs[n] = tenth(now() - start);
        r.outcome[n] = outcomeIndex(label);
      };
      o.fire(n).then(settle, (e: unknown) => settle(`error:${e instanceof Error ? e.name : 'unknown'}`));
    }
    phaseStart += durationMs;
  }
  const drainUntil = now() + o.drainMs;
  while (open > 0 && now() < drainUntil) await sleep(10);
  r.endMs = tenth(now() - start);
  // What settles after this is not counted: the arrays are handed back as they are now.
  return { ...r, settledMs: [...r.settledMs], outcome: [...r.outcome], outcomes: [...outcomes] };
}
