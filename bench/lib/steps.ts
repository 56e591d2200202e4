import type { Channel } from 'node:diagnostics_channel';
import type { StepMark } from '../../lib/diagnostics.ts';

/** Each request's marks (step → performance.now() of the process that recorded them), by request key. */
export type Marks = Record<string, Record<string, number>>;

/** The key of a request in every process's marks: its user and its request id. */
export const stepKey = (userId: string, requestId: string): string => `${userId}/${requestId}`;

/**
 * Records the marks of the requests one process handles (benchmark 1b): from the diagnostics
 * channels of lib/diagnostics.ts, and from the bench's own code (`mark`). Off until `start`, so the
 * latency figures are measured with nobody listening; `take` ends a recording and hands it over.
 */
export class StepRecorder {
  private marks: Marks | null = null;
  private readonly subscribed: Array<() => void> = [];
  private readonly onMark = (message: unknown) => {
    const m = message as StepMark<string>;
    this.mark(stepKey(m.userId, m.requestId), m.step, m.at);
  };

  constructor(private readonly channels: Channel[] = []) {}

  get recording(): boolean {
    return this.marks !== null;
  }

  start(): void {
    this.marks = {};
    for (const channel of this.channels) {
      channel.subscribe(this.onMark);
      this.subscribed.push(() => channel.unsubscribe(this.onMark));
    }
  }

  /** The first time `step` happened to `key` (a retried publish keeps its first mark). */
  mark(key: string, step: string, at = performance.now()): void {
    if (!this.marks) return;
    const m = (this.marks[key] ??= {});
    m[step] ??= at;
  }

  take(): Marks {
    for (const unsubscribe of this.subscribed.splice(0)) unsubscribe();
    const marks = this.marks ?? {};
    this.marks = null;
    return marks;
  }
}

/**
 * The p50 (ms) of `to − from` over the requests that have both marks, or null when none has.
 * Spans of two processes' marks are not compared: each process has its own clock origin.
 */
export function spanP50(marks: Marks[], from: string, to: string): number | null {
  const spans: number[] = [];
  for (const m of marks.flatMap((x) => Object.values(x))) {
    const a = m[from];
    const b = m[to];
    if (a !== undefined && b !== undefined) spans.push(b - a);
  }
  if (spans.length === 0) return null;
  spans.sort((x, y) => x - y);
  return Math.round(spans[Math.floor((spans.length - 1) / 2)]! * 1000) / 1000;
}

/**
 * Per request, `total` (`totalFrom → totalTo` of one process) minus `inner` (`innerFrom → innerTo`
 * of another): what the requests spent outside the inner process. The p50 (ms), or null.
 */
export function outsideP50(
  outer: Marks,
  inner: Marks,
  [totalFrom, totalTo]: [string, string],
  [innerFrom, innerTo]: [string, string],
): number | null {
  const spans: number[] = [];
  for (const [key, o] of Object.entries(outer)) {
    const i = inner[key];
    const t0 = o[totalFrom];
    const t1 = o[totalTo];
    const i0 = i?.[innerFrom];
    const i1 = i?.[innerTo];
    if (t0 !== undefined && t1 !== undefined && i0 !== undefined && i1 !== undefined)
      spans.push(t1 - t0 - (i1 - i0));
  }
  if (spans.length === 0) return null;
  spans.sort((x, y) => x - y);
  return Math.round(spans[Math.floor((spans.length - 1) / 2)]! * 1000) / 1000;
}

/** Keeps the requests first marked `step` at least `afterMs` after the earliest such mark (the warm-up out). */
export function afterWarmup(marks: Marks, step: string, afterMs: number): Marks {
  const starts = Object.values(marks)
    .map((m) => m[step])
    .filter((x): x is number => x !== undefined);
  if (starts.length === 0) return {};
  const from = Math.min(...starts) + afterMs;
  return Object.fromEntries(Object.entries(marks).filter(([, m]) => (m[step] ?? -Infinity) >= from));
}
